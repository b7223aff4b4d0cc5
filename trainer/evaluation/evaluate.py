"""Evaluation: query sources -> rewrites -> the host retriever -> per-query metrics and paired comparisons vs raw.

A :class:`Source` is a named way of producing the search query for each test query: ``raw`` (the query itself),
or a :class:`~deepretrieval_trainer.rewriting.rewriters.Rewriter` (the untrained base model, a trained adapter, a served
model, the HyDE-prompted base model). :func:`evaluate` rewrites every query once per source (cached in the
output folder, so re-runs only search), searches the same :class:`SearchBackend` for all sources, and scores each
ranking with :mod:`deepretrieval_trainer.retrieval.metrics`. :mod:`deepretrieval_trainer.evaluation.report` renders the result.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..retrieval.data import Collection
from ..retrieval.framing import FUSION_DEPTH, fused_search, new_words, search_text
from ..retrieval.metrics import mrr, ndcg_at_k, recall_at_k
from ..retrieval.search import SearchBackend
from ..rewriting.rewriters import RewriteResult
from .sources import RAW, Source

logger = logging.getLogger(__name__)

SEARCH_K = 1000
# metric name -> (function, cutoff); nDCG@10 is the headline metric and the one the paired test compares.
METRICS = {
    "ndcg@10": (ndcg_at_k, 10),
    "recall@10": (recall_at_k, 10),
    "recall@100": (recall_at_k, 100),
    "recall@1000": (recall_at_k, 1000),
    "mrr": (mrr, SEARCH_K),
}
HEADLINE = "ndcg@10"
_TIE = 1e-9


@dataclass
class QueryOutcome:
    qid: str
    query: str
    search_query: str
    fell_back: bool
    reason: str | None
    rewrite_latency_s: float
    search_latency_s: float
    metrics: dict[str, float]
    top10: list[str]


@dataclass
class Comparison:
    """Per-query comparison of a source against ``raw`` on :data:`HEADLINE` (paired t-test, two-sided)."""

    wins: int
    ties: int
    losses: int
    mean_delta: float
    t_statistic: float | None
    p_value: float | None
    test: str  # which test, on which per-query metric


@dataclass
class SourceResult:
    name: str
    outcomes: list[QueryOutcome]
    comparison: Comparison | None = None

    @property
    def means(self) -> dict[str, float]:
        return {m: _mean([o.metrics[m] for o in self.outcomes]) for m in METRICS}

    @property
    def fallback_rate(self) -> float:
        return _mean([float(o.fell_back) for o in self.outcomes])

    @property
    def no_new_words_rate(self) -> float:
        """Share of the queries not fallen back whose searched text adds no word to the user's query (an echo or a
        subset of it; the raw source scores 1.0): how far a rewriter has drifted toward searching the raw query."""
        rewritten = [o for o in self.outcomes if not o.fell_back]
        return _mean([float(not new_words(o.query, o.search_query)) for o in rewritten])

    @property
    def rewrite_latency_s(self) -> float:
        return _mean([o.rewrite_latency_s for o in self.outcomes])

    @property
    def search_latency_s(self) -> float:
        return _mean([o.search_latency_s for o in self.outcomes])

    def summary(self) -> dict:
        return {
            "name": self.name, "queries": len(self.outcomes), "metrics": self.means,
            "fallback_rate": self.fallback_rate, "no_new_words_rate": self.no_new_words_rate,
            "mean_rewrite_latency_s": self.rewrite_latency_s,
            "mean_search_latency_s": self.search_latency_s,
            "vs_raw": asdict(self.comparison) if self.comparison else None,
        }


@dataclass
class EvalReport:
    collection: str
    split: str
    retriever: str
    queries: int
    sources: list[SourceResult]
    settings: dict = field(default_factory=dict)

    def source(self, name: str) -> SourceResult:
        for result in self.sources:
            if result.name == name:
                return result
        raise KeyError(f"no source {name!r}; sources are {[s.name for s in self.sources]}")

    def to_dict(self) -> dict:
        return {
            "collection": self.collection, "split": self.split, "retriever": self.retriever,
            "queries": self.queries, "settings": self.settings,
            "summary": [s.summary() for s in self.sources],
            "per_query": {s.name: [asdict(o) for o in s.outcomes] for s in self.sources},
        }


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def select_queries(collection: Collection, limit: int | None = None) -> dict[str, str]:
    """The judged queries of the split in file order; the first ``limit`` of them when given."""
    queries = collection.judged_queries
    if limit is not None:
        if limit < 1:
            raise ValueError(f"limit={limit}: evaluate at least 1 query (or leave it out for all)")
        queries = dict(list(queries.items())[:limit])
    if not queries:
        raise ValueError(f"{collection.path} split {collection.split!r} has no judged queries to evaluate")
    return queries


def evaluate(
    collection: Collection,
    search: SearchBackend,
    sources: Sequence[Source],
    *,
    limit: int | None = None,
    out_dir: str | Path | None = None,
    retriever: str = "",
    batch_size: int = 8,
    progress: bool = True,
) -> EvalReport:
    """Score every source on the judged queries of ``collection`` through ``search``.

    The first source named ``raw`` (added when missing) is the baseline of the per-query comparisons.
    Rewrites are cached under ``out_dir/rewrites/`` when ``out_dir`` is given.
    """
    if not sources:
        raise ValueError("no query sources: give at least one (e.g. raw, base, adapter:PATH)")
    names = [s.name for s in sources]
    if len(set(names)) != len(names):
        raise ValueError(f"source names {names} repeat; give each source a distinct name (NAME=SPEC)")
    if RAW not in names:
        sources = [Source(RAW), *sources]
    elif next(s for s in sources if s.name == RAW).rewriter is not None:
        raise ValueError(f"the source named {RAW!r} is the unchanged-query baseline; name the rewriting source otherwise")
    queries = select_queries(collection, limit)
    cache = Path(out_dir) / "rewrites" if out_dir is not None else None
    results = []
    for source in sources:
        hits = _first_pass(source, queries, search)
        rewrites = _rewrites(source, queries, cache, batch_size, progress, hits)
        results.append(_score(source, queries, rewrites, collection, search, progress, hits=hits))
    raw = next(r for r in results if r.name == RAW)
    for result in results:
        if result is not raw:
            result.comparison = compare(result, raw)
    return EvalReport(
        str(collection.path), collection.split, retriever or type(search).__name__, len(queries), results,
        {"k": SEARCH_K, "limit": limit, "batch_size": batch_size, "fingerprint": collection.fingerprint},
    )


def _rewrites(source: Source, queries: dict[str, str], cache: Path | None, batch_size: int,
              progress: bool, hits: dict[str, list]) -> dict[str, RewriteResult]:
    """Each query's rewrite by ``source`` (``hits``: each query's first-pass documents, for a prompt that shows
    them), from the cache where it holds them."""
    if source.rewriter is None:
        return {qid: RewriteResult(text, text, False) for qid, text in queries.items()}
    if hits:  # the prompts show these first-pass documents: cached rewrites are valid for the same ones only
        shown = json.dumps([[h.doc_id for h in hits[qid]] for qid in queries]).encode()
        source = dataclasses.replace(source, identity=source.identity and
                                     f"{source.identity}|first_pass={hashlib.sha256(shown).hexdigest()[:16]}")
    cached = _read_cache(cache, source) if cache is not None else {}
    results = {qid: cached[qid] for qid, text in queries.items() if qid in cached and cached[qid].original == text}
    todo = [(qid, text) for qid, text in queries.items() if qid not in results]
    if results:
        logger.info("source %s: %d rewrites from the cache, %d to compute", source.name, len(results), len(todo))
    bar = _progress(len(todo), f"rewriting ({source.name})", progress)
    with _per_query_fallbacks_quiet():
        for start in range(0, len(todo), batch_size):
            batch = todo[start : start + batch_size]
            begun = time.perf_counter()
            texts = [text for _, text in batch]
            rewritten = source.rewriter.rewrite(texts, [hits[qid] for qid, _ in batch]) if hits else \
                source.rewriter.rewrite(texts)
            per_query = (time.perf_counter() - begun) / len(batch)
            for (qid, _), result in zip(batch, rewritten, strict=True):
                results[qid] = RewriteResult(result.original, result.query, result.fell_back, result.reason,
                                             result.completion, per_query)
            if cache is not None:
                _write_cache(cache, source, results)
            bar.update(len(batch))
    bar.close()
    _log_fallbacks(source.name, [results[qid] for qid, _ in todo])
    return results


@contextmanager
def _per_query_fallbacks_quiet() -> Iterator[None]:
    """Hold back the rewriters' one-warning-per-query fallback lines while an evaluation rewrites: they interleave
    with the progress bars, and :func:`_log_fallbacks` says the same in one line (each query's reason is in
    results.json). Backend failures still warn as they happen."""
    rewriters_logger = logging.getLogger("deepretrieval_trainer.rewriting.rewriters")

    def keep(record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("query rewrite fell back to the original query %r")

    rewriters_logger.addFilter(keep)
    try:
        yield
    finally:
        rewriters_logger.removeFilter(keep)


def _log_fallbacks(name: str, rewritten: Sequence[RewriteResult]) -> None:
    reasons = Counter((r.reason or "unknown").split(":")[0] for r in rewritten if r.fell_back)
    if reasons:
        logger.warning("source %s: %d of %d rewrites fell back to the original query (%s); the fallback column "
                       "counts them and results.json gives each query's reason", name, sum(reasons.values()),
                       len(rewritten), ", ".join(f"{reason}: {n}" for reason, n in reasons.most_common()))


def _first_pass(source: Source, queries: dict[str, str], search: SearchBackend | None) -> dict[str, list]:
    """Each query's first-pass documents when the source's task shows them (``task.feedback``), else nothing."""
    from ..rewriting.tasks import first_pass

    task = getattr(source.rewriter, "task", None)
    if getattr(task, "feedback", None) is None:
        return {}
    if search is None:
        raise ValueError(f"source {source.name!r}: its prompt shows first-pass results; pass the search backend")
    return dict(zip(queries, first_pass(search, list(queries.values()), task), strict=True))


def _score(source: Source, queries: dict[str, str], rewrites: dict[str, RewriteResult], collection: Collection,
           search: SearchBackend, progress: bool, batch_size: int = 32, hits: dict[str, list] | None = None
           ) -> SourceResult:
    qids = list(queries)
    feedback = getattr(getattr(source.rewriter, "task", None), "feedback", None)
    offered = {qid: feedback.candidates(hits[qid]) for qid in qids} if source.steer and hits else {}
    texts = [_search_query(source, rewrites[qid], offered.get(qid)) for qid in qids]
    outcomes: list[QueryOutcome] = []
    bar = _progress(len(qids), f"searching ({source.name})", progress)
    for start in range(0, len(qids), batch_size):
        batch = texts[start : start + batch_size]
        begun = time.perf_counter()
        if source.fuse:  # the query and the rewrite searched apart, their scores summed (framing.fuse_hits)
            shown = [rewrites[qid] for qid in qids[start : start + batch_size]]
            rankings = fused_search(search, [r.original for r in shown],
                                    [None if r.fell_back else r.query for r in shown], SEARCH_K, source.query_weight,
                                    depth=FUSION_DEPTH)  # as deployed, though recall@1000 then sees fewer documents
        else:
            rankings = search.search(batch, SEARCH_K)
        per_query = (time.perf_counter() - begun) / len(batch)
        for qid, text, ranking in zip(qids[start : start + batch_size], batch, rankings, strict=True):
            qrels, rewrite = collection.qrels[qid], rewrites[qid]
            outcomes.append(QueryOutcome(
                qid, queries[qid], text, rewrite.fell_back, rewrite.reason, rewrite.latency_s, per_query,
                {name: fn(ranking, qrels, k) for name, (fn, k) in METRICS.items()}, list(ranking[:10]),
            ))
        bar.update(len(batch))
    bar.close()
    return SourceResult(source.name, outcomes)


def _search_query(source: Source, rewrite: RewriteResult, candidates=None) -> str:
    if source.steer and not rewrite.fell_back:
        return search_text(rewrite.original, rewrite.query, "steer", source.query_weight, candidates)
    if source.include_original and not source.fuse and not rewrite.fell_back:
        return search_text(rewrite.original, rewrite.query, "expand", source.query_weight)
    return rewrite.query


def compare(result: SourceResult, baseline: SourceResult, metric: str = HEADLINE) -> Comparison:
    """Wins/ties/losses of ``result`` over ``baseline`` per query on ``metric``, with a paired t-test."""
    ours = {o.qid: o.metrics[metric] for o in result.outcomes}
    theirs = {o.qid: o.metrics[metric] for o in baseline.outcomes}
    if ours.keys() != theirs.keys():
        raise ValueError(f"sources {result.name!r} and {baseline.name!r} were scored on different queries")
    deltas = [ours[qid] - theirs[qid] for qid in ours]
    wins = sum(d > _TIE for d in deltas)
    losses = sum(d < -_TIE for d in deltas)
    t_statistic, p_value = paired_t_test([ours[q] for q in ours], [theirs[q] for q in ours])
    return Comparison(wins, len(deltas) - wins - losses, losses, _mean(deltas), t_statistic, p_value,
                      test=f"paired t-test (scipy.stats.ttest_rel, two-sided) on per-query {metric}")


def paired_t_test(ours: Sequence[float], theirs: Sequence[float]) -> tuple[float | None, float | None]:
    """Two-sided paired t-test. Identical scores give ``(0.0, 1.0)``; fewer than 2 pairs give ``(None, None)``."""
    if len(ours) < 2:
        return None, None
    if all(abs(a - b) <= _TIE for a, b in zip(ours, theirs, strict=True)):
        return 0.0, 1.0
    try:
        from scipy.stats import ttest_rel
    except ImportError as exc:
        raise ImportError("the paired t-test needs scipy: pip install 'deepretrieval[train]'") from exc
    test = ttest_rel(ours, theirs)
    statistic, p_value = float(test.statistic), float(test.pvalue)
    if math.isnan(p_value):  # all differences equal and non-zero: no variance, the shift is certain
        return (math.copysign(math.inf, _mean(ours) - _mean(theirs)), 0.0)
    return statistic, p_value


def _progress(total: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="q", disable=not enabled or total == 0, leave=False)


def _cache_file(cache: Path, source: Source) -> Path:
    return cache / f"{source.name.replace(':', '_')}.jsonl"


def _cache_id(source: Source) -> str:
    return hashlib.sha256(source.identity.encode()).hexdigest()[:16]


def _read_cache(cache: Path, source: Source) -> dict[str, RewriteResult]:
    file = _cache_file(cache, source)
    if not source.identity or not file.is_file():
        return {}
    lines = file.read_text(encoding="utf-8").splitlines()
    try:
        header, rows = json.loads(lines[0]), [json.loads(line) for line in lines[1:]]
    except (ValueError, IndexError):
        logger.warning("%s: unreadable rewrite cache; computing the rewrites again", file)
        return {}
    if header.get("identity") != _cache_id(source):
        logger.info("%s: cached for a different model/adapter/prompt; computing the rewrites again", file)
        return {}
    return {row.pop("qid"): RewriteResult(**row) for row in rows}


def _write_cache(cache: Path, source: Source, results: dict[str, RewriteResult]) -> None:
    if not source.identity:
        return
    cache.mkdir(parents=True, exist_ok=True)
    file = _cache_file(cache, source)
    lines = [json.dumps({"identity": _cache_id(source), "source": source.name, "described": source.identity})]
    lines += [json.dumps({"qid": qid, **asdict(result)}) for qid, result in results.items()]
    staging = file.with_suffix(".tmp")
    staging.write_text("\n".join(lines) + "\n", encoding="utf-8")
    staging.replace(file)

