"""Any SQLAlchemy database, read-only: each statement runs in its own read-only transaction with a server-side
time limit, is rolled back afterwards, and fetches at most ``max_rows`` rows and ``max_bytes`` bytes.

PostgreSQL (tested, psycopg 3 driver): ``SET TRANSACTION READ ONLY`` + ``SET LOCAL statement_timeout``, ``work_mem``
and (when the role may set it) ``temp_file_limit``; the statement runs through the extended protocol, so the server
itself refuses a second statement. Rows are streamed one at a time and counted as they arrive, and
:meth:`SQLAlchemyDatabase.execute` wraps the statement so the server refuses a row larger than ``max_bytes`` before
sending it. PostgreSQL checks ``statement_timeout`` only where a function looks (``strpos`` or LIKE over long
built strings ran for minutes under a 1 s limit; the guard refuses those shapes, :mod:`.cost`): if the server has not
answered by ``2 * timeout_s + 0.5`` s the client closes the connection and reports a timeout.
MySQL/MariaDB: ``START TRANSACTION READ ONLY`` + ``max_execution_time`` (not tested here; its driver buffers the
whole result before the byte cap sees it). A ``sqlite:///FILE`` URL opens :class:`.SQLiteDatabase` (read-only URI,
authorizer). Other dialects only with ``trust_role=True``: you assert the URL's user may only read.
In every case connect as a role that can only read (docs/sql.md shows the PostgreSQL one).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from typing import Any

from .guard import UnsafeSQL, check_sql
from .results import MAX_RESULT_BYTES, QueryResult, ResultTooLarge, check_limits, collect_rows
from .sqlite import SQLiteDatabase

logger = logging.getLogger(__name__)

WORK_MEM = "4MB"  # per sort or hash node (PostgreSQL's default), beyond which it spills to temporary files
TEMP_FILE_LIMIT = "64MB"  # temporary files of one statement (needs a superuser, or a role granted SET on it)
_ROW_TOO_LARGE = "deepretrieval: result row too large"

SQLGLOT_DIALECTS = {"postgresql": "postgres", "mysql": "mysql", "mariadb": "mysql", "sqlite": "sqlite",
                    "mssql": "tsql", "oracle": "oracle", "duckdb": "duckdb"}
VERIFIED = ("postgresql", "mysql", "mariadb")


def open_database(target: Any, *, timeout_s: float = 2.0, max_rows: int = 10_000, max_bytes: int = MAX_RESULT_BYTES,
                  trust_role: bool = False):
    """A read-only database from a SQLite path, a SQLAlchemy URL or Engine, or a LlamaIndex ``SQLDatabase``."""
    if isinstance(target, (SQLiteDatabase, SQLAlchemyDatabase)):
        return target
    limits = {"timeout_s": timeout_s, "max_rows": max_rows, "max_bytes": max_bytes}
    engine = getattr(target, "engine", None) if not _is_engine(target) else target
    url = str(engine.url) if engine is not None else str(target)
    if engine is not None and engine.dialect.name == "sqlite" or url.startswith("sqlite:"):
        from sqlalchemy.engine import make_url

        path = (engine.url if engine is not None else make_url(url)).database
        if not path or path == ":memory:":
            raise ValueError(f"{url}: an in-memory SQLite database cannot be opened read-only; use a file")
        return SQLiteDatabase(path, **limits)
    if "://" not in url:
        return SQLiteDatabase(url, **limits)
    return SQLAlchemyDatabase(engine or url, **limits, trust_role=trust_role)


def _is_engine(value: Any) -> bool:
    try:
        from sqlalchemy.engine import Engine
    except ImportError:
        return False
    return isinstance(value, Engine)


class SQLAlchemyDatabase:
    """Run one read statement at a time through SQLAlchemy, read-only (see the module docstring)."""

    def __init__(self, url_or_engine: Any, *, timeout_s: float = 2.0, max_rows: int = 10_000,
                 max_bytes: int = MAX_RESULT_BYTES, trust_role: bool = False) -> None:
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
        check_limits(max_rows, max_bytes)
        self.engine = engine
        self.backend = backend
        self.dialect = SQLGLOT_DIALECTS.get(backend, backend)
        self.name = engine.url.database or backend
        self.timeout_s = float(timeout_s)
        self.max_rows = max_rows
        self.max_bytes = max_bytes
        self.client_timeout_s = 2 * self.timeout_s + 0.5  # when the client gives up on a server that did not stop
        self._temp_file_limit: bool | None = None  # whether this role may set temp_file_limit (known after use)
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return (f"SQLAlchemyDatabase({self.engine.url!r}, timeout_s={self.timeout_s}, max_rows={self.max_rows}, "
                f"max_bytes={self.max_bytes})")

    def execute(self, sql: str) -> QueryResult:
        """Check and run ``sql``; never raises on the statement's content."""
        try:
            checked = check_sql(sql, dialect=self.dialect)
        except UnsafeSQL as exc:
            return QueryResult.failed("refused", exc.reason)
        return self.run_unchecked(self._bounded(checked.sql))

    def _bounded(self, sql: str) -> str:
        """PostgreSQL: the statement as a subquery whose rows the server refuses, by failing a cast, when one is
        larger than ``max_bytes``, so such a row is never sent (order is kept: a subquery with ORDER BY is not
        flattened, and a filter over it keeps its order)."""
        if self.backend != "postgresql":
            return sql
        size, limit = "pg_column_size(deepretrieval_row.*)", self.max_bytes
        return (f"SELECT deepretrieval_row.* FROM (\n{sql}\n) AS deepretrieval_row WHERE CASE WHEN {size} > {limit} "
                f"THEN ('{_ROW_TOO_LARGE}: ' || {size} || ' bytes (limit {limit} bytes)')::int = 0 ELSE true END")

    def _begin(self, cursor) -> None:
        milliseconds = max(int(self.timeout_s * 1000), 1)
        if self.backend == "postgresql":
            cursor.execute("SET TRANSACTION READ ONLY")
            cursor.execute(f"SET LOCAL statement_timeout = {milliseconds}")
            cursor.execute(f"SET LOCAL lock_timeout = {milliseconds}")
            cursor.execute(f"SET LOCAL work_mem = '{WORK_MEM}'")
            self._limit_temp_files(cursor)
        elif self.backend in ("mysql", "mariadb"):
            cursor.execute(f"SET SESSION max_execution_time = {milliseconds}")
            cursor.execute("START TRANSACTION READ ONLY")

    def _limit_temp_files(self, cursor) -> None:
        if self._temp_file_limit is False:
            return
        if self._temp_file_limit:
            cursor.execute(f"SET LOCAL temp_file_limit = '{TEMP_FILE_LIMIT}'")
            return
        cursor.execute("SAVEPOINT deepretrieval_limits")
        try:
            cursor.execute(f"SET LOCAL temp_file_limit = '{TEMP_FILE_LIMIT}'")
        except Exception as exc:  # noqa: BLE001 - psycopg's InsufficientPrivilege, without importing psycopg
            cursor.execute("ROLLBACK TO SAVEPOINT deepretrieval_limits")
            self._temp_file_limit = False
            logger.warning("%s may not set temp_file_limit (%s): a statement's temporary files are bounded by the "
                           "server's own setting; a superuser can set it for the role: ALTER ROLE ... SET "
                           "temp_file_limit = '%s'", self.engine.url.username, " ".join(str(exc).split())[:120],
                           TEMP_FILE_LIMIT)
        else:
            cursor.execute("RELEASE SAVEPOINT deepretrieval_limits")  # the SET LOCAL lasts to the transaction's end
            self._temp_file_limit = True

    def _fetch(self, cursor, sql: str) -> tuple[tuple[str, ...], list, int]:
        if self.backend == "postgresql":
            # One row at a time through the extended protocol: the server itself refuses a second statement, so a
            # "COMMIT; DROP ..." cannot end the read-only transaction, and rows past a cap are never received
            # (closing the stream cancels the statement). No parameters: % stays literal.
            stream = cursor.stream(sql)
            try:
                rows, size = collect_rows(stream, max_rows=self.max_rows, max_bytes=self.max_bytes)
            finally:
                stream.close()
            if cursor.description is None:  # no row came: psycopg's stream keeps no description, ask the server
                return _describe(cursor.connection, sql), rows, size
            return tuple(d[0] for d in cursor.description), rows, size
        cursor.execute(sql)
        if not cursor.description:
            return (), [], 0
        rows, size = collect_rows(iter(cursor.fetchone, None), max_rows=self.max_rows, max_bytes=self.max_bytes)
        return tuple(d[0] for d in cursor.description), rows, size

    def run_unchecked(self, sql: str) -> QueryResult:
        """Run ``sql`` without the parser's check (nor :meth:`execute`'s row-size wrapper), inside the read-only
        transaction (always rolled back), with the time limit and both caps."""
        start = time.monotonic()
        with self._lock, self.engine.connect() as connection:
            raw = connection.connection.dbapi_connection
            watchdog = cursor = None
            try:
                watchdog = _Watchdog(raw, self.client_timeout_s) if self.backend == "postgresql" else None
                cursor = raw.cursor()
                self._begin(cursor)
                columns, rows, size = self._fetch(cursor, sql)
            except ResultTooLarge as exc:
                return QueryResult.failed(exc.kind, exc.reason, time.monotonic() - start)
            except Exception as exc:  # noqa: BLE001 - every driver error is an answer that scores nothing
                return self._failure(exc, time.monotonic() - start, watchdog)
            finally:
                if watchdog is not None and not watchdog.stop():
                    connection.invalidate()  # the socket was shut down: the pool must not hand it out again
                else:
                    try:
                        if cursor is not None:
                            cursor.close()
                        raw.rollback()
                    except Exception:  # noqa: BLE001 - a broken connection: drop it, keep the answer
                        connection.invalidate()
        return QueryResult(columns, tuple(rows), seconds=time.monotonic() - start, nbytes=size)

    def _failure(self, exc: Exception, elapsed: float, watchdog: _Watchdog | None) -> QueryResult:
        text = " ".join(str(exc).split())
        if watchdog is not None and watchdog.fired:
            return QueryResult.failed("timeout", f"the query ran longer than {self.timeout_s:g} s: the server did not "
                                                 f"stop it, so the client closed the connection after "
                                                 f"{self.client_timeout_s:g} s", elapsed)
        if "statement timeout" in text or "max_execution_time" in text:
            return QueryResult.failed("timeout", f"the query ran longer than {self.timeout_s:g} s", elapsed)
        if _ROW_TOO_LARGE in text:
            detail = text[text.index(_ROW_TOO_LARGE) + len("deepretrieval: "):].split('"')[0]
            return QueryResult.failed("too_large", f"{detail} (refused by the server before sending)", elapsed)
        if "temp_file_limit" in text:
            return QueryResult.failed("too_large", f"{type(exc).__name__}: {text[:300]} (limit {TEMP_FILE_LIMIT})",
                                      elapsed)
        return QueryResult.failed("error", f"{type(exc).__name__}: {text[:500]}", elapsed)

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


def _describe(connection: Any, sql: str) -> tuple[str, ...]:
    """The column names of ``sql`` from PostgreSQL's Describe of the unnamed statement: parsed, not run."""
    from psycopg.pq import ExecStatus

    pgconn = connection.pgconn
    parsed = pgconn.prepare(b"", sql.encode(connection.info.encoding))
    described = pgconn.describe_prepared(b"") if parsed.status == ExecStatus.COMMAND_OK else parsed
    if described.error_message:
        raise RuntimeError(described.error_message.decode(connection.info.encoding, "replace"))
    return tuple(described.fname(i).decode(connection.info.encoding, "replace") for i in range(described.nfields))


class _Watchdog:
    """Shuts a psycopg connection's socket down after ``seconds`` unless stopped first: the statement's wait then
    ends with a connection error. The server's own limits stop almost everything sooner; this holds the client's
    time when a function never looks at ``statement_timeout``."""

    def __init__(self, connection: Any, seconds: float) -> None:
        self.fired = False
        self._done = False
        self._guard = threading.Lock()
        self._timer = threading.Timer(seconds, self._fire, args=(connection.pgconn.socket,))
        self._timer.daemon = True
        self._timer.start()

    def _fire(self, fd: int) -> None:
        with self._guard:
            if self._done:
                return
            self.fired = True
            try:
                with socket.socket(fileno=os.dup(fd)) as duplicate:
                    duplicate.shutdown(socket.SHUT_RDWR)
            except OSError as exc:
                logger.warning("could not close a PostgreSQL connection past its deadline: %s", exc)

    def stop(self) -> bool:
        """Stop the timer; False when it already fired (the connection is then unusable)."""
        with self._guard:
            self._done = True
            self._timer.cancel()
            return not self.fired
