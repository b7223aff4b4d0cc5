"""TRL reward callables for text-to-SQL: a format reward and the execution reward.

Both take TRL's ``(completions, **kwargs) -> list[float]``; the dataset columns ``db_id``, ``gold_sql`` (text, may be
empty), ``gold_rows`` (JSON rows, or empty) and ``ordered`` arrive as keyword lists, one per completion. The
execution reward runs the predicted SQL read-only on the example's database and compares its result with the
gold result (:func:`~.results.results_match`): match -> the task's tier for 1, a result that differs -> the tier
for 0, a refused/failing/slow/oversized query or no SQL at all -> the tier floor. Gold results are computed once and cached.
With ``partial_credit`` w > 0 a query that runs but differs earns part of the step up to a match by its schema
linking with the gold SQL (:mod:`.linking`).
"""

from __future__ import annotations

import json
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ..rewriting.tasks import Task, get_task
from .answer import parse_sql_answer
from .guard import UnsafeSQL, check_sql
from .linking import SchemaLinking
from .results import QueryResult, results_match

logger = logging.getLogger(__name__)

MetricLogger = Callable[[str, float], None]
MATCH, MISMATCH, FAILED = 1.0, 0.0, -1.0


class GoldCache:
    """Gold results by ``(db_id, gold SQL)``: each gold query runs once per process."""

    def __init__(self) -> None:
        self._results: dict[tuple[str, str], QueryResult] = {}
        self.hits = 0
        self.misses = 0

    def result(self, database: Any, db_id: str, sql: str) -> QueryResult:
        key = (db_id, sql)
        if key in self._results:
            self.hits += 1
        else:
            self.misses += 1
            result = database.execute(sql)
            if not result.ok:
                logger.warning("the gold SQL of %s fails (%s): such examples score nothing: %s", db_id, result.error,
                               sql)
            self._results[key] = result
        return self._results[key]


class ExecutionScorer:
    """Runs predicted SQL and compares it with the reference: shared by the reward and the evaluation.

    Predicted results are cached (a policy repeats itself) up to ``cache_size`` statements and ``cache_bytes`` of
    rows, least recently used first out: each result may hold up to the engine's ``max_bytes``."""

    def __init__(self, databases: Mapping[str, Any], *, cache_size: int = 50_000,
                 cache_bytes: int = 256 * 2**20) -> None:
        self.databases = dict(databases)
        self.gold = GoldCache()
        self._predicted: OrderedDict[tuple[str, str], QueryResult] = OrderedDict()
        self.cache_size = cache_size
        self.cache_bytes = cache_bytes
        self._cached_bytes = 0
        self.seconds = 0.0

    def database(self, db_id: str) -> Any:
        try:
            return self.databases[db_id]
        except KeyError:
            raise KeyError(f"no database {db_id!r}; known: {sorted(self.databases)}") from None

    def run(self, db_id: str, sql: str) -> QueryResult:
        key = (db_id, sql)
        if key in self._predicted:
            self._predicted.move_to_end(key)
            return self._predicted[key]
        result = self.database(db_id).execute(sql)
        self._predicted[key] = result
        self._cached_bytes += result.nbytes
        while len(self._predicted) > 1 and (len(self._predicted) > self.cache_size
                                            or self._cached_bytes > self.cache_bytes):
            self._cached_bytes -= self._predicted.popitem(last=False)[1].nbytes
        return result

    def reference(self, db_id: str, gold_sql: str | None, gold_rows: Sequence[Sequence[Any]] | None) -> QueryResult:
        if gold_rows is not None:
            return QueryResult(rows=tuple(tuple(r) for r in gold_rows))
        if not gold_sql:
            raise ValueError(f"an example on {db_id!r} has neither gold SQL nor gold rows")
        return self.gold.result(self.database(db_id), db_id, gold_sql)

    def outcome(self, db_id: str, sql: str | None, gold_sql: str | None, gold_rows=None,
                ordered: bool = False) -> tuple[float, QueryResult | None]:
        """``(MATCH | MISMATCH | FAILED, the predicted result)``; an unparsed answer (``sql`` None) is FAILED."""
        start = time.perf_counter()
        try:
            if sql is None:
                return FAILED, None
            reference = self.reference(db_id, gold_sql, gold_rows)
            predicted = self.run(db_id, sql)
            if not predicted.ok or not reference.ok:
                return FAILED, predicted
            return (MATCH if results_match(predicted.rows, reference.rows, ordered=ordered) else MISMATCH), predicted
        finally:
            self.seconds += time.perf_counter() - start


def _rows(cell: Any) -> list | None:
    if cell is None or cell == "":
        return None
    return json.loads(cell) if isinstance(cell, str) else list(cell)


class SQLFormatReward:
    """``task.format_valid`` for ``<think>`` + an ``<answer>`` holding exactly one read statement the database's
    dialect parses, else ``task.format_invalid``."""

    __name__ = "format"

    def __init__(self, *, databases: Mapping[str, Any], task: str | Task = "sql") -> None:
        self.task = get_task(task)
        self.dialects = {name: getattr(db, "dialect", "sqlite") for name, db in databases.items()}

    def is_valid(self, completion: str, db_id: str) -> bool:
        answer = parse_sql_answer(self.task.completion_text(completion), require_think=True)
        if not answer.well_formed:
            return False
        try:
            check_sql(answer.sql, dialect=self.dialects.get(db_id, "sqlite"))
        except UnsafeSQL:
            return False
        return True

    def __call__(self, completions: Sequence[str], db_id: Sequence[str], log_metric: MetricLogger | None = None,
                 **kwargs: Any) -> list[float]:
        valid = [self.is_valid(c, d) for c, d in zip(completions, db_id, strict=True)]
        if log_metric is not None and valid:
            log_metric("format/valid_rate", sum(valid) / len(valid))
        return [self.task.format_valid if ok else self.task.format_invalid for ok in valid]


class ExecutionReward:
    """The task's tiers of the execution outcome (1 match, 0 differs, -1 fails). A completion without SQL fails too:
    were it to score 0 here, writing no answer would beat writing a query that errors (scored 0, the format-valid rate
    stayed at 0-12% for 22 steps:
    docs/experiments/sql-recipes.md#does-grpo-raise-execution-accuracy-on-held-out-spider-databases).

    ``partial_credit`` w (0 <= w < 1; 0: off): a query that runs but differs scores
    ``differs + w * (match - differs) * jaccard``, the Jaccard of its tables and columns with the gold SQL's
    (:class:`~.linking.SchemaLinking`), so it stays below a match. The embedded model collapsed to
    ``SELECT count(*) FROM <a table>`` when running paid more than failing, and to invented tables when it did not
    (docs/sql.md); this pays for reading the right part of the schema. Examples with gold rows only get no credit.
    """

    __name__ = "execution"

    def __init__(self, *, databases: Mapping[str, Any] | None = None, task: str | Task = "sql",
                 scorer: ExecutionScorer | None = None, partial_credit: float = 0.0) -> None:
        if scorer is None and databases is None:
            raise ValueError("ExecutionReward needs databases={db_id: database} (or a scorer)")
        if not 0 <= partial_credit < 1:
            raise ValueError(f"partial_credit={partial_credit!r} must be in [0, 1): at 1 a wrong result on the gold's "
                             "tables and columns would score as much as a right one")
        self.task = get_task(task)
        self.scorer = scorer or ExecutionScorer(databases)
        self.partial_credit = float(partial_credit)
        self.linking = SchemaLinking(self.scorer.databases) if self.partial_credit else None

    def score(self, outcome: float) -> float:
        return float(self.task.tiers(outcome)) if self.task.tiers is not None else self.task.reward_scale * outcome

    def partial(self, similarity: float) -> float:
        """The reward of a query that runs but differs, with schema-linking Jaccard ``similarity``."""
        differs = self.score(MISMATCH)
        return differs + self.partial_credit * (self.score(MATCH) - differs) * similarity

    def __call__(self, completions: Sequence[str], db_id: Sequence[str], gold_sql: Sequence[str],
                 gold_rows: Sequence[Any] | None = None, ordered: Sequence[bool] | None = None,
                 log_metric: MetricLogger | None = None, **kwargs: Any) -> list[float]:
        count = len(completions)
        gold_rows = list(gold_rows) if gold_rows is not None else [None] * count
        ordered = list(ordered) if ordered is not None else [False] * count
        seconds = self.scorer.seconds
        rewards, outcomes, similarities = [], [], []
        for completion, db, gold, rows, order in zip(completions, db_id, gold_sql, gold_rows, ordered, strict=True):
            answer = parse_sql_answer(self.task.completion_text(completion))
            outcome, _ = self.scorer.outcome(db, answer.sql, gold or None, _rows(rows), bool(order))
            outcomes.append(outcome)
            if outcome == MISMATCH and self.linking is not None:
                start = time.perf_counter()
                similarities.append(self.linking.similarity(db, answer.sql, gold or None))
                self.scorer.seconds += time.perf_counter() - start  # part of the reward's time (execution/time_s)
                rewards.append(self.partial(similarities[-1]))
            else:
                rewards.append(self.score(outcome))
        if log_metric is not None:
            log_metric("execution/time_s", self.scorer.seconds - seconds)
            log_metric("execution/accuracy", sum(o == MATCH for o in outcomes) / max(count, 1))
            log_metric("execution/failed_rate", sum(o == FAILED for o in outcomes) / max(count, 1))
            log_metric("execution/gold_cache_hits", float(self.scorer.gold.hits))
            if similarities:  # the mean Jaccard of the queries that ran but differed (partial credit on)
                log_metric("execution/partial_mean", sum(similarities) / len(similarities))
        return rewards


def build_sql_rewards(databases: Mapping[str, Any], task: str | Task = "sql", *,
                      partial_credit: float = 0.0) -> list[Callable[..., list[float]]]:
    """The reward functions for :class:`~trl.GRPOTrainer`: format first, then execution (with ``partial_credit``,
    TrainConfig's ``sql_partial_credit``)."""
    task = get_task(task)
    return [SQLFormatReward(databases=databases, task=task),
            ExecutionReward(databases=databases, task=task, partial_credit=partial_credit)]
