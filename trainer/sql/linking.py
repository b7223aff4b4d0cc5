"""Schema linking: the tables and columns a query references, and the Jaccard similarity of two such sets.

Reasoning-SQL (Pourreza et al., 2025) rewards a query by the Jaccard similarity between the schema items of the
predicted and the gold SQL; :class:`~.rewards.ExecutionReward` pays it as partial credit to a query that runs but
returns the wrong result (``sql_partial_credit``), so a query on the right tables and columns beats one on the wrong
ones.

Items are lower-cased: ``"t:singer"`` for a table, ``"c:singer.name"`` for a column, qualified by its table. The
table of a column is resolved by sqlglot's optimizer (``qualify``) against the database's live schema, not by the
column's name alone, because Spider's queries mostly name columns through aliases (``T1.name``) or not at all
(``SELECT name FROM singer JOIN ...``) and many columns (``name``, ``id``) exist in several tables: plain names would
count ``singer.name`` and ``stadium.name`` as the same item. On all 734 gold queries of ../shared/data/spider it
qualifies without an error, about 2 ms each. A column that resolves to no table of the schema is not a schema item
and is left out: a reference to a SELECT alias, a column of a derived table or CTE (its own scope counts the base
columns it reads) and SQLite's double-quoted string literals (``WHERE name = "Kyle"``, which sqlglot reads as a
column). ``*`` names no column (``count(*)`` and ``SELECT *`` count the table only). SQL that sqlglot cannot parse
has no items; where ``qualify`` fails, only the tables are counted.
"""

from __future__ import annotations

import logging
from typing import Any

from .guard import quiet_sqlglot

logger = logging.getLogger(__name__)

Schema = dict[str, dict[str, str]]


def database_schema(database: Any) -> Schema:
    """``{table: {column: type}}``, lower-cased, read from a database with ``table_names()`` and ``columns()``."""
    return {table.lower(): {name.lower(): kind or "TEXT" for name, kind, _ in database.columns(table)}
            for table in database.table_names()}


def schema_items(sql: str, schema: Schema, *, dialect: str = "sqlite") -> frozenset[str]:
    """The schema items ``sql`` references (see the module docstring); an empty set when it does not parse."""
    import sqlglot
    from sqlglot import exp
    from sqlglot.errors import SqlglotError
    from sqlglot.optimizer.qualify import qualify
    from sqlglot.optimizer.scope import traverse_scope

    try:
        with quiet_sqlglot():
            tree = sqlglot.parse_one(sql, read=dialect)
            tables = {"t:" + t.name.lower() for t in tree.find_all(exp.Table) if t.name.lower() in schema}
            try:
                tree = qualify(tree, schema=schema, dialect=dialect, validate_qualify_columns=False,
                               quote_identifiers=False, expand_stars=False)
                scopes = traverse_scope(tree)
            except (SqlglotError, KeyError, ValueError, TypeError, AttributeError) as exc:
                logger.debug("schema linking counts only the tables of %r: sqlglot cannot qualify it (%s)", sql, exc)
                return frozenset(tables)
    except (SqlglotError, ValueError, RecursionError) as exc:
        logger.debug("schema linking finds no items in %r: sqlglot cannot parse it (%s)", sql, exc)
        return frozenset()
    items = set(tables)
    for scope in scopes:
        for column in scope.columns:
            source = scope.sources.get(column.table)
            table = source.name.lower() if isinstance(source, exp.Table) else None
            if table in schema and column.name.lower() in schema[table]:
                items.add(f"c:{table}.{column.name.lower()}")
    return frozenset(items)


def jaccard(a: frozenset[str], b: frozenset[str]) -> float:
    """``|a & b| / |a | b|``; 0.0 when both are empty (nothing to agree on)."""
    union = a | b
    return len(a & b) / len(union) if union else 0.0


class SchemaLinking:
    """Jaccard of a predicted query's schema items with its gold query's, per database; the schemas and the gold
    items are cached by ``db_id`` and ``(db_id, gold SQL)``."""

    def __init__(self, databases: dict[str, Any]) -> None:
        self.databases = databases
        self._schemas: dict[str, Schema] = {}
        self._gold: dict[tuple[str, str], frozenset[str]] = {}

    def schema(self, db_id: str) -> Schema:
        if db_id not in self._schemas:
            self._schemas[db_id] = database_schema(self.databases[db_id])
        return self._schemas[db_id]

    def items(self, db_id: str, sql: str) -> frozenset[str]:
        return schema_items(sql, self.schema(db_id), dialect=getattr(self.databases[db_id], "dialect", "sqlite"))

    def gold_items(self, db_id: str, gold_sql: str) -> frozenset[str]:
        key = (db_id, gold_sql)
        if key not in self._gold:
            self._gold[key] = self.items(db_id, gold_sql)
        return self._gold[key]

    def similarity(self, db_id: str, sql: str, gold_sql: str | None) -> float:
        """The Jaccard of ``sql``'s items with ``gold_sql``'s; 0.0 without gold SQL (an example with gold rows only
        has no reference items to compare with)."""
        if not gold_sql:
            return 0.0
        return jaccard(self.items(db_id, sql), self.gold_items(db_id, gold_sql))
