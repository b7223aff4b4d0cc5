"""Spider's hardness levels of a SQL query (easy, medium, hard, extra), from a sqlglot parse.

Spider's evaluation script (Yu et al. 2018, ``evaluation.py``: ``eval_hardness``) sorts a gold query by three counts
and this module applies the same rules to sqlglot's tree of the query:

- component 1: WHERE, GROUP BY, ORDER BY, LIMIT, each table joined beyond the first, each OR, each LIKE;
- component 2: nested queries, i.e. a subquery in a condition, or a UNION / INTERSECT / EXCEPT;
- others: more than one aggregate, more than one selected column, more than one WHERE condition, more than one
  GROUP BY column.

``easy``: component 1 <= 1, no others, nothing nested. ``medium``: (others <= 2, component 1 <= 1) or (component 1 <= 2,
others < 2), nothing nested. ``hard``: (others > 2, component 1 <= 2) or (2 < component 1 <= 3, others <= 2), nothing
nested; or component 1 <= 1, no others, one nested query. Everything else is ``extra``.

As in Spider's script, the counts look at the outermost query (the first one of a set operation) and not inside its
nested queries. Used to train on the easier part of a split first (``data.max_hardness``, ``load_sql_examples``):
a group of samples can only be pushed towards a right answer when one of them has it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import get_args

import sqlglot
from sqlglot import exp

from ..training.config import Hardness

HARDNESS: tuple[str, ...] = get_args(Hardness)
_SET_OPERATION = getattr(exp, "SetOperation", exp.Union)  # sqlglot < 25.9: Intersect and Except subclass Union


@dataclass(frozen=True)
class Components:
    """Spider's three counts for one query."""

    component1: int
    component2: int
    others: int


def _own(node: exp.Expression):
    """``node`` and its descendants; a query nested below ``node`` is yielded but not entered."""
    return node.walk(prune=lambda n: n is not node and isinstance(n, (exp.Select, _SET_OPERATION)))


def _predicates(condition: exp.Expression | None) -> list[exp.Expression]:
    if condition is None:
        return []
    if isinstance(condition, exp.Paren):
        return _predicates(condition.this)
    if isinstance(condition, exp.Connector):  # AND / OR
        return _predicates(condition.left) + _predicates(condition.right)
    return [condition]


def components(sql: str, dialect: str = "sqlite") -> Components:
    """Spider's counts for ``sql`` (a ``sqlglot`` parse error propagates as :class:`sqlglot.errors.ParseError`)."""
    tree = sqlglot.parse_one(sql, read=dialect)
    nested = 0
    select = tree
    if isinstance(select, _SET_OPERATION):
        nested += 1
        while isinstance(select, _SET_OPERATION):
            select = select.left
    if isinstance(select, exp.Subquery):
        select = select.unnest()
    if not isinstance(select, exp.Select):
        raise ValueError(f"not a SELECT query: {sql[:200]!r}")

    where = select.args.get("where")
    having = select.args.get("having")
    group = select.args.get("group")
    joins = select.args.get("joins") or []
    join_conditions = [j.args.get("on") for j in joins if j.args.get("on") is not None]
    condition_roots = [c.this for c in (where, having) if c is not None] + join_conditions

    component1 = sum(1 for part in (where, group, select.args.get("order"), select.args.get("limit")) if part)
    component1 += len(joins)
    for root in condition_roots:
        component1 += sum(isinstance(n, (exp.Or, exp.Like)) for n in _own(root))
        nested += sum(isinstance(n, (exp.Select, _SET_OPERATION)) for n in _own(root))

    aggregates = 0
    parts = [*select.expressions, *(p for p in (where, group, select.args.get("order"), having) if p)]
    for part in parts:
        aggregates += sum(isinstance(n, exp.AggFunc) for n in _own(part))
    others = sum((aggregates > 1, len(select.expressions) > 1, len(_predicates(where.this if where else None)) > 1,
                  len(group.expressions) > 1 if group else False))
    return Components(component1, nested, others)


def hardness(sql: str, dialect: str = "sqlite") -> str:
    """``easy``, ``medium``, ``hard`` or ``extra``, by Spider's rules (module docstring)."""
    c = components(sql, dialect)
    one, two, others = c.component1, c.component2, c.others
    if one <= 1 and others == 0 and two == 0:
        return "easy"
    if two == 0 and ((others <= 2 and one <= 1) or (one <= 2 and others < 2)):
        return "medium"
    if (two == 0 and ((others > 2 and one <= 2) or (2 < one <= 3 and others <= 2))) or \
            (one <= 1 and others == 0 and two <= 1):
        return "hard"
    return "extra"
