"""Query results and their comparison, as Spider's execution evaluation does it (the test-suite ``result_eq``).

Two results match when they have the same number of rows and columns and some permutation of the predicted
columns makes the rows equal: as multisets, or as sequences when the gold query orders its result (ORDER BY).
Values are normalized first (Decimal -> float, floats rounded to 6 places, bytes decoded), so SQLite and
PostgreSQL answers compare alike.
"""

from __future__ import annotations

import itertools
import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

Row = tuple[Any, ...]
MAX_PERMUTED_COLUMNS = 6  # above this, only the identity and column-set-compatible orders are tried
MAX_RESULT_BYTES = 8 * 2**20  # what one statement may return (8 MiB); the largest Spider gold answer is 16 kB


@dataclass(frozen=True)
class QueryResult:
    """What running one statement gave: ``rows`` and ``columns``, or ``error`` (the reason it scored nothing).

    ``kind`` names the failure: ``refused`` (not one read statement, or one whose cost cannot be bounded),
    ``error`` (the database rejected it), ``timeout``, ``too_many_rows``, ``too_large`` (a value or the result over
    its byte limit); None when the query ran. ``nbytes``: the result's size as :func:`row_bytes` counts it.
    """

    columns: tuple[str, ...] = ()
    rows: tuple[Row, ...] = ()
    error: str | None = None
    kind: str | None = None
    seconds: float = 0.0
    meta: dict[str, Any] = field(default_factory=dict)
    nbytes: int = 0

    @property
    def ok(self) -> bool:
        return self.error is None

    @classmethod
    def failed(cls, kind: str, error: str, seconds: float = 0.0) -> QueryResult:
        return cls(error=error, kind=kind, seconds=seconds)


class ResultTooLarge(Exception):
    """Fetching stopped at a cap: ``kind`` is ``too_many_rows`` or ``too_large``, ``reason`` the message."""

    def __init__(self, kind: str, reason: str) -> None:
        super().__init__(reason)
        self.kind, self.reason = kind, reason


def row_bytes(row: Sequence[Any]) -> int:
    """A row's size: the length of each text or binary value, 8 for anything else (numbers, NULL, dates)."""
    return sum(len(v) if isinstance(v, (str, bytes, bytearray, memoryview)) else 8 for v in row)


def collect_rows(rows: Iterable[Sequence[Any]], *, max_rows: int, max_bytes: int) -> tuple[list[Row], int]:
    """Take rows one at a time from a cursor (or any iterator) until it ends: ``(rows, bytes)``. Stops as soon as a
    row would be the ``max_rows + 1``-th or bring the total past ``max_bytes``, raising :class:`ResultTooLarge`;
    what the cursor has not handed over yet is never fetched."""
    kept: list[Row] = []
    total = 0
    for row in rows:
        if len(kept) >= max_rows:
            raise ResultTooLarge("too_many_rows", f"the query returns more than {max_rows} rows")
        total += row_bytes(row)
        if total > max_bytes:
            raise ResultTooLarge("too_large", f"result too large: at least {total:,} bytes in {len(kept) + 1} rows "
                                              f"(limit {max_bytes:,} bytes)")
        kept.append(tuple(row))
    return kept, total


def check_limits(max_rows: Any, max_bytes: Any) -> None:
    """The engines' and plugins' shared validation of the two caps."""
    for name, value in (("max_rows", max_rows), ("max_bytes", max_bytes)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}={value!r} must be a positive integer")


def normalize_value(value: Any) -> Any:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, Decimal):
        value = float(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        rounded = round(value, 6)
        return int(rounded) if rounded.is_integer() else rounded
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).decode("utf-8", "replace")
    if value is None or isinstance(value, (int, str)):
        return value
    return str(value)


def normalize_rows(rows: Sequence[Sequence[Any]]) -> list[Row]:
    return [tuple(normalize_value(v) for v in row) for row in rows]


def _column_orders(predicted: list[Row], gold: list[Row], width: int):
    """Permutations of the predicted columns worth trying: each gold column maps to a predicted column whose
    value set is the same (the test-suite's quick rejection), identity first."""
    gold_sets = [{row[i] for row in gold} for i in range(width)]
    pred_sets = [{row[i] for row in predicted} for i in range(width)]
    candidates = [[j for j in range(width) if pred_sets[j] == gold_sets[i]] for i in range(width)]
    if any(not c for c in candidates):
        return
    if width > MAX_PERMUTED_COLUMNS:
        identity = tuple(range(width))
        if all(i in candidates[i] for i in range(width)):
            yield identity
        return
    for order in itertools.product(*candidates):
        if len(set(order)) == width:
            yield order


def results_match(predicted: Sequence[Sequence[Any]], gold: Sequence[Sequence[Any]], *, ordered: bool) -> bool:
    """Whether the predicted rows answer like the gold rows (see the module docstring)."""
    pred, ref = normalize_rows(predicted), normalize_rows(gold)
    if not pred and not ref:
        return True
    if len(pred) != len(ref):
        return False
    width = len(ref[0])
    if any(len(r) != width for r in pred) or any(len(r) != width for r in ref):
        return False
    reference = ref if ordered else Counter(ref)
    for order in _column_orders(pred, ref, width):
        permuted = [tuple(row[j] for j in order) for row in pred]
        if (permuted == reference) if ordered else (Counter(permuted) == reference):
            return True
    return False
