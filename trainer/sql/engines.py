"""Any SQLAlchemy database, read-only: each statement runs in its own read-only transaction with a server-side
time limit, is rolled back afterwards, and fetches at most ``max_rows`` rows.

PostgreSQL (tested, psycopg 3 driver): ``SET TRANSACTION READ ONLY`` + ``SET LOCAL statement_timeout``; the statement
runs as a prepared statement, so the server itself refuses a second statement. MySQL/MariaDB: ``START TRANSACTION
READ ONLY`` + ``max_execution_time`` (not tested here). A ``sqlite:///FILE`` URL opens :class:`.SQLiteDatabase`
(read-only URI, authorizer). Other dialects only with ``trust_role=True``: you assert the URL's user may only read.
In every case connect as a role that can only read (docs/sql.md shows the PostgreSQL one).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from .guard import UnsafeSQL, check_sql
from .results import QueryResult
from .sqlite import SQLiteDatabase

logger = logging.getLogger(__name__)

SQLGLOT_DIALECTS = {"postgresql": "postgres", "mysql": "mysql", "mariadb": "mysql", "sqlite": "sqlite",
                    "mssql": "tsql", "oracle": "oracle", "duckdb": "duckdb"}
VERIFIED = ("postgresql", "mysql", "mariadb")


def open_database(target: Any, *, timeout_s: float = 2.0, max_rows: int = 10_000, trust_role: bool = False):
    """A read-only database from a SQLite path, a SQLAlchemy URL or Engine, or a LlamaIndex ``SQLDatabase``."""
    if isinstance(target, (SQLiteDatabase, SQLAlchemyDatabase)):
        return target
    engine = getattr(target, "engine", None) if not _is_engine(target) else target
    url = str(engine.url) if engine is not None else str(target)
    if engine is not None and engine.dialect.name == "sqlite" or url.startswith("sqlite:"):
        from sqlalchemy.engine import make_url

        path = (engine.url if engine is not None else make_url(url)).database
        if not path or path == ":memory:":
            raise ValueError(f"{url}: an in-memory SQLite database cannot be opened read-only; use a file")
        return SQLiteDatabase(path, timeout_s=timeout_s, max_rows=max_rows)
    if "://" not in url:
        return SQLiteDatabase(url, timeout_s=timeout_s, max_rows=max_rows)
    return SQLAlchemyDatabase(engine or url, timeout_s=timeout_s, max_rows=max_rows, trust_role=trust_role)


def _is_engine(value: Any) -> bool:
    try:
        from sqlalchemy.engine import Engine
    except ImportError:
        return False
    return isinstance(value, Engine)


class SQLAlchemyDatabase:
    """Run one read statement at a time through SQLAlchemy, read-only (see the module docstring)."""

    def __init__(self, url_or_engine: Any, *, timeout_s: float = 2.0, max_rows: int = 10_000,
                 trust_role: bool = False) -> None:
        try:
            import sqlalchemy
        except ImportError as exc:
            raise ImportError("SQL databases other than SQLite need SQLAlchemy and a driver: "
                              "pip install 'deepretrieval[sql]'") from exc
        engine = url_or_engine if _is_engine(url_or_engine) else sqlalchemy.create_engine(url_or_engine)
        backend = engine.dialect.name
        if backend not in VERIFIED and not trust_role:
            raise ValueError(f"{engine.url!r}: read-only transactions are only set up for {list(VERIFIED)}; for "
                             f"{backend!r} connect as a read-only role and pass trust_role=True")
        if backend == "postgresql" and engine.dialect.driver != "psycopg":
            raise ValueError(f"{engine.url!r}: use the psycopg (3) driver, postgresql+psycopg://...; it runs each "
                             "statement as a prepared statement, which the server limits to one statement")
        if not timeout_s > 0:
            raise ValueError(f"timeout_s={timeout_s!r} must be > 0 seconds")
        if not isinstance(max_rows, int) or max_rows < 1:
            raise ValueError(f"max_rows={max_rows!r} must be a positive integer")
        self.engine = engine
        self.backend = backend
        self.dialect = SQLGLOT_DIALECTS.get(backend, backend)
        self.name = engine.url.database or backend
        self.timeout_s = float(timeout_s)
        self.max_rows = max_rows
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"SQLAlchemyDatabase({self.engine.url!r}, timeout_s={self.timeout_s}, max_rows={self.max_rows})"

    def execute(self, sql: str) -> QueryResult:
        """Check and run ``sql``; never raises on the statement's content."""
        try:
            checked = check_sql(sql, dialect=self.dialect)
        except UnsafeSQL as exc:
            return QueryResult.failed("refused", exc.reason)
        return self.run_unchecked(checked.sql)

    def _begin(self, cursor) -> None:
        milliseconds = max(int(self.timeout_s * 1000), 1)
        if self.backend == "postgresql":
            cursor.execute("SET TRANSACTION READ ONLY")
            cursor.execute(f"SET LOCAL statement_timeout = {milliseconds}")
            cursor.execute(f"SET LOCAL lock_timeout = {milliseconds}")
        elif self.backend in ("mysql", "mariadb"):
            cursor.execute(f"SET SESSION max_execution_time = {milliseconds}")
            cursor.execute("START TRANSACTION READ ONLY")

    def _statement(self, cursor, sql: str) -> None:
        if self.backend == "postgresql":
            # A prepared statement (extended protocol): the server itself refuses a second statement, so a
            # "COMMIT; DROP ..." cannot end the read-only transaction. No parameters: % stays literal.
            cursor.execute(sql, prepare=True)
        else:
            cursor.execute(sql)

    def run_unchecked(self, sql: str) -> QueryResult:
        """Run ``sql`` without the parser's check, inside the read-only transaction (always rolled back)."""
        start = time.monotonic()
        with self._lock, self.engine.connect() as connection:
            raw = connection.connection.dbapi_connection
            cursor = raw.cursor()
            try:
                self._begin(cursor)
                self._statement(cursor, sql)
                rows = cursor.fetchmany(self.max_rows + 1) if cursor.description else []
                columns = tuple(d[0] for d in cursor.description or ())
            except Exception as exc:  # noqa: BLE001 - every driver error is an answer that scores nothing
                elapsed = time.monotonic() - start
                text = " ".join(str(exc).split())
                if "statement timeout" in text or "max_execution_time" in text:
                    return QueryResult.failed("timeout", f"the query ran longer than {self.timeout_s:g} s", elapsed)
                return QueryResult.failed("error", f"{type(exc).__name__}: {text[:500]}", elapsed)
            finally:
                cursor.close()
                raw.rollback()
        elapsed = time.monotonic() - start
        if len(rows) > self.max_rows:
            return QueryResult.failed("too_many_rows", f"the query returns more than {self.max_rows} rows", elapsed)
        return QueryResult(columns, tuple(tuple(r) for r in rows), seconds=elapsed)

    def table_names(self) -> list[str]:
        from sqlalchemy import inspect

        return list(inspect(self.engine).get_table_names())

    def columns(self, table: str) -> list[tuple[str, str, bool]]:
        from sqlalchemy import inspect

        inspector = inspect(self.engine)
        primary = set(inspector.get_pk_constraint(table).get("constrained_columns") or [])
        return [(c["name"], str(c["type"]), c["name"] in primary) for c in inspector.get_columns(table)]

    def foreign_keys(self, table: str) -> list[tuple[str, str, str]]:
        from sqlalchemy import inspect

        found = []
        for key in inspect(self.engine).get_foreign_keys(table):
            for column, referred in zip(key["constrained_columns"], key["referred_columns"], strict=False):
                found.append((column, key["referred_table"], referred))
        return found

    def sample_values(self, table: str, column: str, limit: int) -> list[str]:
        preparer = self.engine.dialect.identifier_preparer
        sql = (f"SELECT DISTINCT {preparer.quote(column)} FROM {preparer.quote(table)} "
               f"WHERE {preparer.quote(column)} IS NOT NULL LIMIT {int(limit)}")
        result = self.run_unchecked(sql)
        return [str(r[0]) for r in result.rows] if result.ok else []

    def close(self) -> None:
        self.engine.dispose()
