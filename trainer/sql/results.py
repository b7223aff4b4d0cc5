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
from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

Row = tuple[Any, ...]
MAX_PERMUTED_COLUMNS = 6  # above this, only the identity and column-set-compatible orders are tried


@dataclass(frozen=True)
class QueryResult:
    """What running one statement gave: ``rows`` and ``columns``, or ``error`` (the reason it scored nothing).

    ``kind`` names the failure: ``refused`` (not one read statement), ``error`` (the database rejected it),
    ``timeout``, ``too_many_rows``; None when the query ran.
    """

    columns: tuple[str, ...] = ()
    rows: tuple[Row, ...] = ()
    error: str | None = None
    kind: str | None = None
    seconds: float = 0.0
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.error is None

    @classmethod
    def failed(cls, kind: str, error: str, seconds: float = 0.0) -> QueryResult:
        return cls(error=error, kind=kind, seconds=seconds)


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
