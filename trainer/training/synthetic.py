"""Training labels without judgments: pseudo-queries made from the index's own documents, kept where they teach.

``synthesize(search, documents, config)`` reads a uniform sample of the documents in one streaming pass
(:func:`~deepretrieval_trainer.retrieval.documents.sample_documents`), writes a pseudo-query from each
(:mod:`deepretrieval_trainer.rewriting.doc2query`: ``crop`` or ``doc2query``), searches every raw pseudo-query
through ``search`` (the SearchBackend the training reward searches), keeps the pairs whose source document ranks
inside ``[min_rank, max_rank]`` (see :class:`~.config.SynthesisConfig` for why), with ``headroom="prf"`` only
those where RM3 feedback through ``search`` ranks the source document higher still, drops near-duplicate queries
(Jaccard over word sets), and returns :class:`SyntheticLabels`: the rows ``train()`` takes, and a report of how they
were made. With ``out`` it also writes them as a BEIR-layout folder (:mod:`.label_folder`).

Failures come early: the store, the output folder and one probe search are checked before a query is written. An
unusable document is skipped and counted, an unusable model answer too; Ctrl-C while queries are being written keeps
the ones written so far (status ``interrupted``); a retriever failing, or Ctrl-C, after that leaves the written
queries in ``out``.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..common.errors import ConfigError, DataError
from ..retrieval.documents import Documents, DocumentSample, SourceDocument, open_documents, sample_documents
from ..retrieval.search import SearchBackend
from .synthesis_config import SynthesisConfig
from .label_folder import prepare_out, write_folder

logger = logging.getLogger(__name__)

SEARCH_BATCH = 64
_WORDS = re.compile(r"\w+")


@dataclass(frozen=True)
class Pair:
    """A kept pseudo-query and its source document (``rank``: where the raw query ranked it; ``prf_rank``: where
    its RM3 expansion ranked it, when the headroom check ran)."""

    query_id: str
    query: str
    doc_id: str
    rank: int
    snippet: str = ""
    prf_rank: int | None = None


@dataclass
class SyntheticLabels:
    """The kept pairs, the qrels split they are written as, and the report (what ``synthesis.json`` holds)."""

    pairs: list[Pair]
    split: str
    report: dict[str, Any] = field(default_factory=dict)

    @property
    def rows(self) -> list[dict[str, Any]]:
        """The training rows ``train(search, rows, config)`` takes: ``{"query", "qrels", "query_id"}``."""
        return [{"query": p.query, "qrels": {p.doc_id: 1.0}, "query_id": p.query_id} for p in self.pairs]

    def examples(self, count: int = 5) -> list[str]:
        """A few kept pairs as lines of text: rank, query, source document."""
        return [f"[rank {p.rank:>3}] {p.query!r} -> {p.doc_id}: {p.snippet}" for p in self.pairs[:count]]

    def summary(self) -> str:
        r = self.report
        window = r.get("rank_window", ["?", "?"])
        distribution = ", ".join(f"{label}: {count}" for label, count in r.get("rank_distribution", {}).items())
        headroom = (f"; {r.get('dropped', {}).get(NO_HEADROOM, 0)} in the window dropped where RM3 ranks the document "
                    "no higher" if "headroom" in r else "")
        return (f"{r.get('kept', len(self.pairs))} of {r.get('written', '?')} pseudo-queries kept "
                f"({r.get('method', {}).get('method', '?')}, {r.get('documents', {}).get('sampled', '?')} documents "
                f"sampled of {r.get('documents', {}).get('usable', '?')} usable); source document rank under the raw "
                f"query (window {window[0]}..{window[1]}): {distribution}{headroom}")


def synthesize(search: SearchBackend, documents: Documents | None = None, config: SynthesisConfig | None = None, *,
               out: str | Path | None = None, dtype: str = "auto", writer=None, progress: bool = True,
               **settings: Any) -> SyntheticLabels:
    """Labels made from ``documents`` (a source, ``"SCHEME:PATH"``, or an iterable of ``(doc_id, title, text)``;
    None: ``config.documents``), filtered through ``search``. ``settings``: :class:`SynthesisConfig` fields,
    overriding ``config``'s. ``out``: also write the label folder there. ``dtype``: the doc2query model's precision.
    ``writer``: a query writer to use instead of the one ``config.method`` builds."""
    config = _config(config, settings)
    source = open_documents(documents if documents is not None else _documents_spec(config))
    target = prepare_out(out, getattr(source, "root", None)) if out is not None else None
    if not callable(getattr(search, "search", None)):
        raise ConfigError(f"search is a {type(search).__name__} without search(queries, k): pass a SearchBackend "
                          "(LlamaIndexSearch, HaystackSearch, BM25Search)")
    started = time.perf_counter()
    sample = sample_documents(source, config.sample, seed=config.seed, min_words=config.min_words,
                              max_chars=config.max_chars, progress=progress)
    _probe(search, sample.documents[0], config.max_rank)
    feedback = _feedback(search) if config.headroom == "prf" else None
    writer = writer or build_writer(config, dtype)
    written, not_written, interrupted, write_s = _write(writer, sample.documents, progress)
    report = _report(config, sample, writer, search, written, not_written, interrupted, write_s)
    try:
        ranks, search_s = _ranks(search, written, sample.documents, config, progress)
        prf_ranks, prf_s = _prf_ranks(feedback, written, ranks, sample.documents, config, progress)
    except (Exception, KeyboardInterrupt) as exc:  # the written queries are kept either way
        if target is not None:
            report["status"] = ("interrupted while searching" if isinstance(exc, KeyboardInterrupt) else
                                f"stopped: the retriever failed ({type(exc).__name__}: {str(exc)[:300]})")
            write_folder(target, queries=[], qrels=[], candidates=_candidates(written, sample.documents, None, {}),
                         report=report, split=None)
            logger.error("stopped while searching after %d queries were written: they are in %s", len(written),
                         target)
        raise
    pairs, verdicts, dropped = _keep(written, ranks, sample.documents, config, prf_ranks)
    report.update(rank_distribution=rank_distribution(ranks, config.max_rank), kept=len(pairs),
                  kept_share=round(len(pairs) / len(written), 4) if written else 0.0, dropped=dict(dropped))
    if feedback is not None:
        report["headroom"] = {"method": "prf", "rm3": dataclasses.asdict(feedback.settings),
                              "checked": sum(rank is not None for rank in prf_ranks),
                              "kept_rank_distribution": rank_distribution([p.prf_rank for p in pairs],
                                                                           config.max_rank)}
        report["timings"]["prf_s"] = round(prf_s, 2)
    report["timings"].update(search_s=round(search_s, 2), total_s=round(time.perf_counter() - started, 2))
    if not pairs:
        report["status"] = "no pairs kept"
    labels = SyntheticLabels(pairs, config.split, report)
    if target is not None:
        write_folder(target, queries=[{"_id": p.query_id, "text": p.query,
                                       "metadata": {"doc_id": p.doc_id, "rank": p.rank,
                                                    **({"prf_rank": p.prf_rank} if p.prf_rank else {})}}
                                      for p in pairs],
                     qrels=[(p.query_id, p.doc_id) for p in pairs],
                     candidates=_candidates(written, sample.documents, ranks, verdicts, prf_ranks), report=report,
                     split=config.split if pairs else None)
    if not written:
        raise DataError(f"{source.name}: no pseudo-query could be written from the {len(sample.documents)} documents "
                        f"sampled ({dict(not_written)}); see {target or 'the report'}, or try the other method")
    if not pairs and dropped.get(NO_HEADROOM):
        raise DataError(f"{source.name}: none of the {len(written)} pseudo-queries is kept: {dropped[NO_HEADROOM]} "
                        f"rank their document within [{config.min_rank}, {config.max_rank}] through "
                        f"{type(search).__name__}, but on none of them does RM3 feedback rank it higher (ranks: "
                        f"{report['rank_distribution']}); sample more documents, or set headroom none")
    if not pairs:
        raise DataError(f"{source.name}: none of the {len(written)} pseudo-queries ranks its document within "
                        f"[{config.min_rank}, {config.max_rank}] through {type(search).__name__} (ranks: "
                        f"{report['rank_distribution']}); widen the window (min_rank 1 keeps queries that already "
                        "find their document first), sample more documents, or try the other method")
    return labels


def _config(config: SynthesisConfig | None, settings: dict[str, Any]) -> SynthesisConfig:
    config = config or SynthesisConfig()
    if not settings:
        return config
    known = {f.name for f in dataclasses.fields(SynthesisConfig)}
    unknown = sorted(set(settings) - known)
    if unknown:
        raise ConfigError(f"unknown synthesis settings {unknown}; known: {sorted(known)}")
    return dataclasses.replace(config, **settings)


def _documents_spec(config: SynthesisConfig) -> str:
    if not config.documents:
        raise ConfigError("no documents: pass documents (a source, 'beir:PATH', 'llamaindex:PATH', 'haystack:PATH') "
                          "or set synthesis.documents")
    return config.documents


def build_writer(config: SynthesisConfig, dtype: str = "auto"):
    """The query writer ``config.method`` names."""
    from ..rewriting.doc2query import CropWriter, Doc2QueryWriter

    if config.method == "crop":
        return CropWriter(per_document=config.queries_per_document, seed=config.seed)
    return Doc2QueryWriter(config.model, per_document=config.queries_per_document, temperature=config.temperature,
                           batch_size=config.batch_size, max_new_tokens=config.max_new_tokens, dtype=dtype)


def _probe(search: SearchBackend, document: SourceDocument, k: int) -> None:
    """One search now, so a retriever that cannot search fails before any query is written."""
    query = " ".join(_WORDS.findall(document.content)[:8]) or document.doc_id
    found = search.search([query], k)
    if not isinstance(found, list) or len(found) != 1 or not isinstance(found[0], list):
        raise ConfigError(f"{type(search).__name__}.search() returned {type(found).__name__}: it must return one list "
                          "of document ids per query")


def _write(writer, documents: Sequence[SourceDocument], progress: bool):
    from tqdm.auto import tqdm

    written: list[tuple[int, str]] = []
    not_written: Counter = Counter()
    interrupted = False
    total = len(documents) * int(getattr(writer, "per_document", 1))
    start = time.perf_counter()
    with tqdm(total=total, desc=f"writing pseudo-queries ({writer.method})", unit=" queries",
              disable=not progress) as bar:
        try:
            for index, query, reason in writer.stream(documents):
                bar.update(1)
                if query is None:
                    not_written[reason or "no query"] += 1
                else:
                    written.append((index, query))
        except KeyboardInterrupt:
            interrupted = True
            logger.warning("interrupted: keeping the %d pseudo-queries written so far", len(written))
    return written, not_written, interrupted, time.perf_counter() - start


def _ranks(search: SearchBackend, written: list[tuple[int, str]], documents: Sequence[SourceDocument],
           config: SynthesisConfig, progress: bool):
    """The rank (1-based) of each query's source document in the raw query's ranking, None beyond ``max_rank``."""
    from tqdm.auto import tqdm

    queries = [query for _, query in written]
    ranks: list[int | None] = []
    start = time.perf_counter()
    for begin in tqdm(range(0, len(queries), SEARCH_BATCH), desc="searching the raw pseudo-queries", unit=" batches",
                      disable=not progress or not queries):
        found = search.search(queries[begin:begin + SEARCH_BATCH], config.max_rank)
        for (index, _), ranking in zip(written[begin:begin + SEARCH_BATCH], found, strict=True):
            ranks.append(_rank_of(documents[index].doc_id, ranking, config.max_rank))
    return ranks, time.perf_counter() - start


def _rank_of(doc_id: str, ranking: Sequence[str], max_rank: int) -> int | None:
    """The 1-based rank of ``doc_id`` in ``ranking``, None beyond ``max_rank``."""
    return next((r for r, d in enumerate(ranking[:max_rank], start=1) if d == doc_id), None)


def _feedback(search: SearchBackend):
    """RM3 through ``search`` for the headroom check; a retriever that cannot return document text fails now."""
    from ..retrieval.prf import PseudoRelevanceFeedback

    try:
        return PseudoRelevanceFeedback(search)
    except TypeError as exc:
        raise ConfigError(f"synthesis.headroom=prf: {exc}; or set headroom none") from None


def _prf_ranks(feedback, written: list[tuple[int, str]], ranks: list[int | None],
               documents: Sequence[SourceDocument], config: SynthesisConfig, progress: bool):
    """For each pseudo-query inside the rank window, the rank of its source document under the RM3-expanded query
    (0 beyond ``max_rank``; None: not checked). Without ``feedback``, all None."""
    from tqdm.auto import tqdm

    checked: list[int | None] = [None] * len(written)
    if feedback is None:
        return checked, 0.0
    start = time.perf_counter()
    inside = [i for i, rank in enumerate(ranks) if rank is not None and config.min_rank <= rank <= config.max_rank]
    for begin in tqdm(range(0, len(inside), SEARCH_BATCH), desc="RM3 on the kept pseudo-queries", unit=" batches",
                      disable=not progress or not inside):
        batch = inside[begin:begin + SEARCH_BATCH]
        queries = [written[i][1] for i in batch]
        hits = feedback.search.search_documents(queries, feedback.settings.docs)
        expanded = [feedback.expand(query, found) for query, found in zip(queries, hits, strict=True)]
        for i, ranking in zip(batch, feedback.search.search(expanded, config.max_rank), strict=True):
            checked[i] = _rank_of(documents[written[i][0]].doc_id, ranking, config.max_rank) or 0
    return checked, time.perf_counter() - start


NO_HEADROOM = "no headroom (RM3 does not rank the document higher)"


def _keep(written: list[tuple[int, str]], ranks: list[int | None], documents: Sequence[SourceDocument],
          config: SynthesisConfig, prf_ranks: Sequence[int | None] | None = None):
    """The pairs inside the rank window (and, with ``prf_ranks``, where RM3 ranks the document higher),
    near-duplicates dropped (the first kept), and each candidate's verdict."""
    seen = NearDuplicates(config.dedup_jaccard)
    pairs: list[Pair] = []
    verdicts: dict[int, str] = {}
    dropped: Counter = Counter()
    for position, ((index, query), rank) in enumerate(zip(written, ranks, strict=True)):
        prf_rank = prf_ranks[position] if prf_ranks is not None else None
        if rank is None or rank > config.max_rank:
            verdict = f"rank > {config.max_rank} (or not found)"
        elif rank < config.min_rank:
            verdict = f"rank < {config.min_rank}"
        elif prf_rank is not None and not 0 < prf_rank < rank:
            verdict = NO_HEADROOM
        elif not seen.add(query):
            verdict = "near-duplicate of a kept query"
        else:
            document = documents[index]
            pairs.append(Pair(f"q{position}", query, document.doc_id, rank, _snippet(document), prf_rank or None))
            verdict = "kept"
        verdicts[position] = verdict
        if verdict != "kept":
            dropped[verdict] += 1
    return pairs, verdicts, dropped


def _snippet(document: SourceDocument, chars: int = 80) -> str:
    text = " ".join(document.content.split())
    return text if len(text) <= chars else text[:chars - 3] + "..."


class NearDuplicates:
    """Keeps queries whose word set (lower case) has a Jaccard similarity below ``threshold`` with every query kept
    before. Candidates are found by prefix filtering (two sets with Jaccard >= t share a word among the first
    ``|s| - ceil(t |s|) + 1`` of each in one fixed order), so adding n queries costs about n lookups, not n^2/2."""

    def __init__(self, threshold: float = 0.8) -> None:
        self.threshold = threshold
        self.kept: list[frozenset[str]] = []
        self._index: dict[str, list[int]] = {}

    def add(self, query: str) -> bool:
        """Whether ``query`` is kept (and remembered)."""
        import math

        words = frozenset(w.lower() for w in _WORDS.findall(query))
        if not words:
            return False
        ordered = sorted(words)
        prefix = ordered[:len(ordered) - math.ceil(self.threshold * len(ordered)) + 1]
        candidates = {i for word in prefix for i in self._index.get(word, ())}
        for i in candidates:
            other = self.kept[i]
            if len(words & other) >= self.threshold * len(words | other):
                return False
        self.kept.append(words)
        for word in prefix:
            self._index.setdefault(word, []).append(len(self.kept) - 1)
        return True


def rank_bins(max_rank: int) -> list[tuple[str, int, int]]:
    """``(label, lowest, highest)`` rank bins up to ``max_rank``: 1, 2-3, 4-10, 11-20, 21-50, 51-100, 101-200, ..."""
    edges = [e for e in (1, 2, 4, 11, 21, 51, 101, 201, 501, 1001, 2001, 5001) if e <= max_rank] + [max_rank + 1]
    return [(str(lo) if hi - lo == 1 else f"{lo}-{hi - 1}", lo, hi - 1) for lo, hi in zip(edges, edges[1:])]


def rank_distribution(ranks: Sequence[int | None], max_rank: int) -> dict[str, int]:
    """How many source documents ranked in each bin of :func:`rank_bins`, and beyond ``max_rank``."""
    bins = rank_bins(max_rank)
    counts = {label: 0 for label, _, _ in bins}
    beyond = f"not in top {max_rank}"
    counts[beyond] = 0
    for rank in ranks:
        label = next((label for label, lo, hi in bins if rank is not None and lo <= rank <= hi), beyond)
        counts[label] += 1
    return counts


def _candidates(written, documents, ranks, verdicts, prf_ranks=None):
    for position, (index, query) in enumerate(written):
        row = {"query_id": f"q{position}", "query": query, "doc_id": documents[index].doc_id}
        if ranks is not None:
            row.update(rank=ranks[position], verdict=verdicts.get(position))
        if prf_ranks is not None and prf_ranks[position] is not None:
            row["prf_rank"] = prf_ranks[position] or None
        yield row


def _report(config, sample: DocumentSample, writer, search, written, not_written, interrupted, write_s) -> dict:
    minutes = write_s / 60
    return {
        "version": 1, "status": "interrupted" if interrupted else "completed",
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "split": config.split,
        "documents": sample.report(), "method": writer.describe(), "retriever": type(search).__name__,
        "rank_window": [config.min_rank, config.max_rank], "dedup_jaccard": config.dedup_jaccard,
        "seeds": {"sample": config.seed, "method": config.seed},
        "written": len(written), "not_written": dict(not_written),
        "timings": {"read_s": round(sample.seconds, 2), "write_s": round(write_s, 2),
                    "queries_per_minute": round(len(written) / minutes, 1) if minutes > 0 else None},
        "config": dataclasses.asdict(config),
    }
