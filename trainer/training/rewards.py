"""TRL reward callables: a format reward and a retrieval reward that searches the host retriever.

Both follow TRL's reward signature, ``(completions, **kwargs) -> list[float]``, and carry a fixed ``__name__``
so TRL logs them as ``rewards/format/mean`` and ``rewards/retrieval/mean``. ``completions`` are the texts
generated after the task's prefill (``<think>``); they are parsed as ``task.completion_text(completion)``.
The dataset columns ``query`` (the original query), ``qrels`` (a JSON object ``{doc_id: grade}``) and
``pub_date`` (an optional per-row publication-date cutoff, for engines that filter by date) arrive as
keyword lists, one per completion; TRL's ``log_metric`` receives the search time, cache hits and format rate.
"""

from __future__ import annotations

import json
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ..retrieval.framing import FUSION_DEPTH, check_framing, fuse_hits, new_words, search_text
from ..retrieval.prf import Candidates, steered_query
from ..retrieval.metrics import first_hit_rank, ndcg_at_k, recall_at_k
from ..retrieval.search import DocumentHit, SearchBackend, document_search
from ..rewriting.answer import Rewrite
from ..rewriting.tasks import Task, get_task

logger = logging.getLogger(__name__)

MetricLogger = Callable[[str, float], None]
# what RetrievalReward gives a completion without a usable query (TrainConfig.unusable_reward)
UNUSABLE_REWARDS = ("zero", "raw")
QueryCheck = Callable[[str], "str | None"]


def check_echo_penalty(echo_penalty: float, framing: str) -> None:
    """``echo_penalty`` is a number >= 0 and only applies where the user's query is searched beside the rewrite."""
    if isinstance(echo_penalty, bool) or not isinstance(echo_penalty, (int, float)) or not echo_penalty >= 0:
        raise ValueError(f"echo_penalty={echo_penalty!r} must be a number >= 0 (0 = off, e.g. 0.1)")
    if echo_penalty and framing not in ("expand", "fuse"):
        raise ValueError(f"echo_penalty={echo_penalty!r} applies to framing 'expand' or 'fuse', where the user's query "
                         f"is searched beside the rewrite; under {framing!r} a rewrite that drops words is a real "
                         "rewrite: set framing='expand' or 'fuse', or echo_penalty=0")


def normalize_query(query: str) -> str:
    """The cache key of a query: case-folded, whitespace collapsed."""
    return " ".join(query.casefold().split())


def parse_qrels(value: Mapping[str, float] | str) -> dict[str, float]:
    """A qrels cell: a mapping, or its JSON text (how the training dataset stores it)."""
    if isinstance(value, str):
        value = json.loads(value)
    return {str(doc): float(grade) for doc, grade in value.items()}


class FormatReward:
    """``task.format_valid`` for a well-formed completion (think block + JSON answer with a query), else
    ``task.format_invalid``. ``query_check`` (a search engine's ``query_error``) also fails queries the engine
    cannot run, e.g. a malformed Boolean query."""

    __name__ = "format"

    def __init__(self, *, task: str | Task = "retrieval", query_check: QueryCheck | None = None) -> None:
        self.task = get_task(task)
        self.query_check = query_check

    def parse(self, completion: str) -> Rewrite:
        return self.task.parse(completion)

    def is_valid(self, completion: str) -> bool:
        parsed = self.parse(completion)
        return self.task.well_formed(parsed) and (self.query_check is None or self.query_check(parsed.query) is None)

    def __call__(self, completions: Sequence[str], log_metric: MetricLogger | None = None, **kwargs: Any) -> list[float]:
        valid = [self.is_valid(c) for c in completions]
        if log_metric is not None and valid:
            log_metric("format/valid_rate", sum(valid) / len(valid))
        return [self.task.format_valid if ok else self.task.format_invalid for ok in valid]

    def __getstate__(self) -> dict[str, Any]:
        return {"task": self.task, "query_check": self.query_check}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.task = state["task"]
        self.query_check = state.get("query_check")


class SearchCache:
    """Ranked results by normalized query, bounded (least recently used goes first), searched in batches.

    ``scored``: each result is the ranked ``DocumentHit`` list (id and score, no text) from the backend's
    ``search_documents``, for rewards that need the retriever's scores (framing ``fuse``); else the ranked ids."""

    def __init__(self, search: SearchBackend, *, k: int, max_size: int = 200_000, batch_size: int = 64,
                 concurrency: int = 1, timeout: float | None = None, scored: bool = False) -> None:
        if scored:
            document_search(search, purpose="framing 'fuse'")
        self.scored = scored
        self.search_backend = search
        self.timeout = timeout  # seconds one batch may take; None: as long as the backend takes
        self.k = k
        self.max_size = max_size
        self.batch_size = batch_size
        self.concurrency = concurrency
        self._results: OrderedDict[tuple[str, str], list[Any]] = OrderedDict()
        self.hits = 0
        self.misses = 0
        self.search_seconds = 0.0

    def rankings(self, queries: Sequence[str], dates: Sequence[str | None] | None = None) -> list[list[Any]]:
        """One ranking per query; only queries not already cached are sent to the backend, once each.

        ``dates``: a publication-date cutoff per query (``YYYY[/MM[/DD]]`` or None), for backends with
        ``search_dated`` (PubMed, ClinicalTrials.gov); the cutoff is part of the cache key.
        """
        dates = list(dates) if dates is not None else [None] * len(queries)
        keys = [(normalize_query(q), d or "") for q, d in zip(queries, dates, strict=True)]
        # The key only finds repeats; the backend gets the query as written (case matters to Boolean engines).
        missing: dict[tuple[str, str], tuple[str, str | None]] = {}
        for key, query, date in zip(keys, queries, dates, strict=True):
            if key not in self._results:
                missing.setdefault(key, (query, date))
        self.hits += len(keys) - len(missing)
        self.misses += len(missing)
        if missing:
            start = time.perf_counter()
            found = self._search(list(missing.values()))
            self.search_seconds += time.perf_counter() - start
            for key, ranking in zip(missing, found, strict=True):
                self._results[key] = list(ranking)
        out = []
        for key in keys:
            self._results.move_to_end(key)
            out.append(self._results[key])
        while len(self._results) > self.max_size:
            self._results.popitem(last=False)
        return out

    def _search_batch(self, batch: list[tuple[str, str | None]]) -> list[list[Any]]:
        queries = [query for query, _ in batch]
        if self.scored and any(date is not None for _, date in batch):
            raise ValueError("framing 'fuse' needs the retriever's scores, and date-filtered engines (pub_date) give "
                             "none: use framing 'expand' or 'replace' with pub_date")
        if self.scored:
            found = self.search_backend.search_documents(queries, self.k)  # type: ignore[attr-defined]
            return [[DocumentHit(hit.doc_id, score=hit.score) for hit in hits] for hits in found]
        if all(date is None for _, date in batch):
            return self.search_backend.search(queries, self.k)
        from ..retrieval.dates import DateRange

        if not callable(getattr(self.search_backend, "search_dated", None)):
            raise ValueError(f"the rows carry publication-date cutoffs (pub_date) but {type(self.search_backend).__name__}"
                             " cannot filter by date: drop pub_date or search PubMed/ClinicalTrials.gov")
        ranges = [DateRange.before(date) if date else None for _, date in batch]
        return self.search_backend.search_dated(queries, self.k, ranges)

    def _bounded_batch(self, batch: list[tuple[str, str | None]]) -> list[list[Any]]:
        """:meth:`_search_batch` under ``timeout``: a retriever that hangs fails the step instead of stalling it."""
        if self.timeout is None:
            return self._search_batch(batch)
        from ..common.deadline import DeadlineExceeded, call_within

        name = type(self.search_backend).__name__
        try:
            return call_within(lambda: self._search_batch(batch), self.timeout, f"{name}.search of {len(batch)} queries")
        except DeadlineExceeded as exc:
            exc.retriever = self.search_backend  # the training error names the retriever
            raise

    def _search(self, queries: list[tuple[str, str | None]]) -> list[list[Any]]:
        batches = [queries[i : i + self.batch_size] for i in range(0, len(queries), self.batch_size)]
        if self.concurrency == 1 or len(batches) == 1:
            results = [self._bounded_batch(batch) for batch in batches]
        else:
            with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
                results = list(pool.map(self._bounded_batch, batches))
        flat = [ranking for batch in results for ranking in batch]
        if len(flat) != len(queries):
            raise RuntimeError(f"the search backend returned {len(flat)} rankings for {len(queries)} queries; "
                               "a SearchBackend must return one ranking per query")
        return flat


class RetrievalReward:
    """The task metric of the rewrite's ranking against the query's qrels, shaped by the task's tiers.

    ``ndcg``: ``reward_scale * nDCG@k`` (k = the task's train k); ``recall``: tiers of recall@k;
    ``hit_rank``: tiers of the first relevant rank within k (none: the floor). Unparsable completions score 0
    here (the format reward penalizes them), and so do queries the backend's ``query_error`` rejects.
    ``framing="expand"`` searches the original query (``query_weight`` times) and the rewrite instead of the rewrite
    alone (:func:`deepretrieval_trainer.retrieval.framing.search_text`); ``framing="fuse"`` searches the two apart and sums
    their scores, the original's times ``query_weight`` (:func:`deepretrieval_trainer.retrieval.framing.fuse_hits`); deployment
    must then do the same.
    ``unusable="raw"`` scores a completion without a usable query as the raw query's own ranking (what the deployed
    components search when they fall back) instead of 0, so the reward measures the gain over falling back.
    ``echo_penalty`` (``expand``/``fuse`` only) is subtracted from a usable rewrite that adds no word the user's query
    lacks (:func:`~deepretrieval_trainer.retrieval.framing.new_words`): such a rewrite ranks about as the raw query does, and
    without the penalty a group whose expansions score below the raw query teaches the model to stop expanding.
    ``retrieval/no_new_words_rate`` logs the share of usable rewrites that add nothing, with or without the penalty.
    """

    __name__ = "retrieval"

    def __init__(self, *, search: SearchBackend, task: str | Task = "retrieval", framing: str = "replace",
                 query_weight: int = 1, cache_size: int = 200_000, batch_size: int = 64, concurrency: int = 1,
                 search_timeout: float | None = None, unusable: str = "zero", echo_penalty: float = 0.0) -> None:
        check_framing(framing, query_weight)
        if unusable not in UNUSABLE_REWARDS:
            raise ValueError(f"unusable={unusable!r}: choose one of {', '.join(map(repr, UNUSABLE_REWARDS))}")
        check_echo_penalty(echo_penalty, framing)
        self.unusable = unusable
        self.echo_penalty = float(echo_penalty)
        self.task = get_task(task)
        self.framing = framing
        self.query_weight = query_weight
        fuse = framing == "fuse"
        self.cache = SearchCache(search, k=max(self.task.reward_k, FUSION_DEPTH) if fuse else self.task.reward_k,
                                 max_size=cache_size, batch_size=batch_size, concurrency=concurrency,
                                 timeout=search_timeout, scored=fuse)
        # A backend that can tell a malformed query (e.g. Boolean syntax) declares query_error(query) -> reason.
        self.query_check: QueryCheck | None = getattr(search, "query_error", None)

    def score(self, ranking: Sequence[str], qrels: Mapping[str, float]) -> float:
        """The reward of one ranking (no search)."""
        task, k = self.task, self.task.reward_k
        if task.metric == "hit_rank":
            rank = first_hit_rank(ranking[:k], qrels)
            value = float(rank) if rank is not None else float("inf")
        elif task.metric == "recall":
            value = recall_at_k(ranking, qrels, k)
        else:
            value = ndcg_at_k(ranking, qrels, k)
        if task.tiers is not None:
            return float(task.tiers(value))
        return task.reward_scale * value

    def search_text(self, original: str, rewrite: str, candidates: Candidates | None = None) -> str:
        return search_text(original, rewrite, self.framing, self.query_weight, candidates)

    def __call__(self, completions: Sequence[str], query: Sequence[str], qrels: Sequence[Any],
                 log_metric: MetricLogger | None = None, pub_date: Sequence[str | None] | None = None,
                 candidates: Sequence[str] | None = None, **kwargs: Any) -> list[float]:
        """``candidates`` (framing ``steer``): each row's first-pass candidate terms, as ``Candidates.to_json``."""
        parsed = [self.task.parse(c) for c in completions]
        judged = [parse_qrels(q) for q in qrels]
        offered = self._candidates(candidates, len(completions))
        shown = [self.search_text(query[i], p.query, offered[i]) if p.ok else None for i, p in enumerate(parsed)]
        usable = [i for i, text in enumerate(shown)
                  if text is not None and (self.query_check is None or self.query_check(text) is None)]
        hits, misses, seconds = self.cache.hits, self.cache.misses, self.cache.search_seconds
        texts = [shown[i] for i in usable]
        # the free baseline on the same prompts, for the curve a user watches: RM3 keeps every candidate
        rm3 = [steered_query(q, " ".join(c.forms.values()), c, self.query_weight) for q, c in zip(query, offered)
               ] if self.framing == "steer" else []
        dates = list(pub_date) if pub_date is not None else [None] * len(completions)
        found = self.cache.rankings(texts + list(query) + rm3, [dates[i] for i in usable] + dates + dates[: len(rm3)])
        rankings, raw_found = found[: len(texts)], found[len(texts):len(texts) + len(query)]
        rm3_found = found[len(texts) + len(query):]
        if self.cache.scored:  # framing "fuse": each rewrite's hits summed with its own query's
            rankings = [fuse_hits(raw_found[i], hits, self.query_weight) for i, hits in zip(usable, rankings)]
            raw_found = [[hit.doc_id for hit in hits] for hits in raw_found]
        raw = [self.score(r, j) for r, j in zip(raw_found, judged, strict=True)]
        rewards = list(raw) if self.unusable == "raw" else [0.0] * len(completions)
        echoes = [i for i in usable if not new_words(query[i], parsed[i].query)]
        searched = {i: self.score(ranking, judged[i]) for i, ranking in zip(usable, rankings, strict=True)}
        for i, value in searched.items():
            rewards[i] = value
        for i in echoes:
            rewards[i] -= self.echo_penalty
        if log_metric is not None:
            lookups = (self.cache.hits - hits) + (self.cache.misses - misses)
            log_metric("search/time_s", self.cache.search_seconds - seconds)
            log_metric("search/cache_hit_rate", (self.cache.hits - hits) / max(lookups, 1))
            log_metric("search/cache_size", float(len(self.cache._results)))
            log_metric("retrieval/raw_query_reward", sum(raw) / max(len(raw), 1))
            if usable:  # before the penalty: what the search itself scored
                log_metric("retrieval/rewrite_reward", sum(searched.values()) / len(usable))
                log_metric("retrieval/no_new_words_rate", len(echoes) / len(usable))
            # what the model adds on the same prompts: every sample (a fallback searches the raw query) minus raw
            served = [searched.get(i, raw[i]) for i in range(len(completions))]
            log_metric("retrieval/gain_over_raw", sum(s - r for s, r in zip(served, raw)) / max(len(raw), 1))
            if rm3_found:
                baseline = [self.score(r, j) for r, j in zip(rm3_found, judged, strict=True)]
                log_metric("retrieval/rm3_reward", sum(baseline) / len(baseline))
                log_metric("retrieval/gain_over_rm3", sum(s - b for s, b in zip(served, baseline)) / len(baseline))
        return rewards

    def _candidates(self, candidates: Sequence[str] | None, rows: int) -> list[Candidates | None]:
        if self.framing != "steer":
            return [None] * rows
        if candidates is None:
            raise ValueError("framing 'steer' needs each row's first-pass candidate terms (the dataset column "
                             "'candidates', Candidates.to_json); train with a task whose feedback shows terms")
        return [Candidates.from_json(c) for c in candidates]


def build_rewards(search: SearchBackend, task: str | Task, *, framing: str = "replace", query_weight: int = 1,
                  cache_size: int = 200_000, batch_size: int = 64, concurrency: int = 1,
                  search_timeout: float | None = None, unusable: str = "zero",
                  echo_penalty: float = 0.0) -> list[Callable[..., list[float]]]:
    """The reward functions for :class:`~trl.GRPOTrainer`: format first, then retrieval."""
    task = get_task(task)
    return [
        FormatReward(task=task, query_check=getattr(search, "query_error", None)),
        RetrievalReward(search=search, task=task, framing=framing, query_weight=query_weight, cache_size=cache_size,
                        batch_size=batch_size, concurrency=concurrency, search_timeout=search_timeout,
                        unusable=unusable, echo_penalty=echo_penalty),
    ]
