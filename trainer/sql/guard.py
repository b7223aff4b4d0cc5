"""Admit exactly one read statement, parsed with sqlglot (never regexes); refuse everything else with the reason.

This is the first of two walls: the engines (:mod:`.sqlite`, :mod:`.engines`) run what passes on read-only
connections or transactions anyway, so a statement the parser misreads still cannot write.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

MAX_SQL_CHARS = 8000

# Functions that read or write files, load code, change settings or signal other sessions (SQLite and PostgreSQL).
# Lower-case names; the engines refuse most of them again (SQLite's authorizer, PostgreSQL's privileges).
DENIED_FUNCTIONS = frozenset({
    "load_extension", "readfile", "writefile", "edit", "fts3_tokenizer", "zipfile", "sqlar_compress",
    "sqlar_uncompress", "pg_read_file", "pg_read_binary_file", "pg_ls_dir", "pg_stat_file", "lo_import",
    "lo_export", "lo_unlink", "lo_from_bytea", "lo_put", "set_config", "pg_terminate_backend", "pg_cancel_backend",
    "pg_reload_conf", "pg_rotate_logfile", "pg_sleep", "pg_sleep_for", "pg_sleep_until", "dblink", "dblink_exec",
    "nextval", "setval", "pg_advisory_lock", "pg_advisory_xact_lock", "pg_try_advisory_lock", "query_to_xml",
    "pg_logical_emit_message", "pg_switch_wal", "pg_create_restore_point", "txid_current", "pg_current_xact_id",
})


class UnsafeSQL(ValueError):
    """The text is not exactly one read-only SQL statement; ``reason`` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class CheckedSQL:
    """A statement that passed :func:`check_sql`: the text as given (what runs) and whether it orders its result."""

    sql: str
    ordered: bool


def _function_names(tree) -> set[str]:
    from sqlglot import exp

    names = set()
    for node in tree.find_all(exp.Func):
        names.add((node.name if isinstance(node, exp.Anonymous) else node.sql_name()).lower())
    return names


@contextmanager
def quiet_sqlglot() -> Iterator[None]:
    """sqlglot's warnings off for the block (it warns when it falls back to a Command, which is refused anyway, and
    about what it cannot qualify); the logger's level is restored after."""
    quiet = logging.getLogger("sqlglot")
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        yield
    finally:
        quiet.setLevel(level)


def _parse(sql: str, dialect: str):
    import sqlglot
    from sqlglot.errors import ParseError, TokenError

    try:
        with quiet_sqlglot():
            return [tree for tree in sqlglot.parse(sql, read=dialect) if tree is not None]
    except (ParseError, TokenError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UnsafeSQL(f"not valid {dialect} SQL: {first[:200]}") from None
    except RecursionError:  # sqlglot's parser recurses per nesting level: 300 parentheses exhaust Python's stack
        raise UnsafeSQL("the SQL is nested too deeply to parse; write it with fewer nested parentheses") from None


def check_sql(sql: object, *, dialect: str = "sqlite") -> CheckedSQL:
    """The statement when it is exactly one read query (SELECT, WITH ... SELECT, UNION/INTERSECT/EXCEPT).

    Refused, with :class:`UnsafeSQL` naming why: empty or overlong text, several statements, anything but a query
    (INSERT, UPDATE, DELETE, DDL, PRAGMA, ATTACH, COPY, SET, EXPLAIN, transaction control, unknown commands),
    a query containing a write (``WITH d AS (DELETE ... RETURNING *)``), ``SELECT ... INTO``, row locks
    (``FOR UPDATE``), the functions in :data:`DENIED_FUNCTIONS`, and a query whose cost inside one step cannot be
    bounded (:func:`~.cost.check_cost`: a blowup when subqueries are inlined, a search over a value it builds).
    """
    from sqlglot import exp

    if not isinstance(sql, str) or not sql.strip():
        raise UnsafeSQL("the SQL is empty")
    if len(sql) > MAX_SQL_CHARS:
        raise UnsafeSQL(f"the SQL has {len(sql)} characters (limit {MAX_SQL_CHARS})")
    text = sql.strip().rstrip(";").strip()
    trees = _parse(text, dialect)
    if len(trees) != 1:
        raise UnsafeSQL(f"expected exactly one statement, found {len(trees)}")
    tree = trees[0]
    root = tree.this if isinstance(tree, exp.Subquery) else tree
    if not isinstance(root, (exp.Select, exp.SetOperation)):
        raise UnsafeSQL(f"only read queries (SELECT) may run, not {type(root).__name__.upper()}")
    for node in tree.walk():
        if isinstance(node, (exp.Insert, exp.Update, exp.Delete, exp.Merge, exp.Create, exp.Drop, exp.Alter,
                             exp.Command, exp.Pragma, exp.Attach, exp.Detach, exp.Copy, exp.Set, exp.Transaction,
                             exp.Commit, exp.Rollback)):
            raise UnsafeSQL(f"the query contains a {type(node).__name__.upper()} statement; only reads may run")
        if isinstance(node, exp.Into):
            raise UnsafeSQL("SELECT ... INTO creates a table; only reads may run")
        if isinstance(node, exp.Lock):
            raise UnsafeSQL("row locks (FOR UPDATE/SHARE) are not allowed in a read query")
    denied = sorted(_function_names(tree) & DENIED_FUNCTIONS)
    if denied:
        raise UnsafeSQL(f"the function(s) {denied} touch files, settings or other sessions and are not allowed")
    from .cost import CostRefused, check_cost

    try:
        check_cost(tree, dialect)
    except CostRefused as exc:
        raise UnsafeSQL(str(exc)) from None
    return CheckedSQL(text, ordered=tree.args.get("order") is not None)


def is_ordered(sql: str, *, dialect: str = "sqlite") -> bool:
    """Whether the query's outermost level has ORDER BY (then the result's row order is part of the answer)."""
    try:
        return check_sql(sql, dialect=dialect).ordered
    except UnsafeSQL:
        return "order by" in " ".join(sql.lower().split())
