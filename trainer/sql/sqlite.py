"""A SQLite database that model-written SQL cannot change.

Every connection is opened read-only through a URI (``mode=ro``), sets ``PRAGMA query_only``, and installs an
authorizer that allows only reading tables and calling harmless functions: writes, DDL, ATTACH/DETACH, PRAGMA,
transactions and file-touching functions are refused by SQLite itself. A progress handler interrupts a statement
after ``timeout_s`` of wall-clock time, and at most ``max_rows`` rows are fetched (more is an error).
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
import urllib.parse
from pathlib import Path

from .guard import DENIED_FUNCTIONS, UnsafeSQL, check_sql
from .results import QueryResult

logger = logging.getLogger(__name__)

_ALLOWED_ACTIONS = {sqlite3.SQLITE_SELECT, sqlite3.SQLITE_READ, sqlite3.SQLITE_RECURSIVE}
PROGRESS_EVERY = 1000  # SQLite virtual-machine instructions between two clock checks


def _authorizer(action: int, arg1: str | None, arg2: str | None, db_name: str | None, trigger: str | None) -> int:
    if action in _ALLOWED_ACTIONS:
        return sqlite3.SQLITE_OK
    if action == sqlite3.SQLITE_FUNCTION:
        return sqlite3.SQLITE_DENY if (arg2 or "").lower() in DENIED_FUNCTIONS else sqlite3.SQLITE_OK
    return sqlite3.SQLITE_DENY


def read_only_uri(path: str | Path) -> str:
    quoted = urllib.parse.quote(str(Path(path).resolve()))
    return f"file:{quoted}?mode=ro"


class SQLiteDatabase:
    """Run one read statement at a time against a SQLite file, read-only, with a time limit and a row cap.

    ``execute(sql)`` checks the text with :func:`~.guard.check_sql` first and never raises on what the SQL does:
    a refusal, an error, a timeout or too many rows come back as a failed :class:`QueryResult` with the reason.
    """

    dialect = "sqlite"

    def __init__(self, path: str | Path, *, timeout_s: float = 2.0, max_rows: int = 10_000, name: str | None = None):
        file = Path(path).expanduser()
        if not file.is_file():
            raise FileNotFoundError(f"{file}: no such SQLite file; give the path of a .sqlite/.db file")
        if not timeout_s > 0:
            raise ValueError(f"timeout_s={timeout_s!r} must be > 0 seconds")
        if not isinstance(max_rows, int) or max_rows < 1:
            raise ValueError(f"max_rows={max_rows!r} must be a positive integer")
        self.path = file.resolve()
        self.name = name or file.stem
        self.timeout_s = float(timeout_s)
        self.max_rows = max_rows
        self._connection: sqlite3.Connection | None = None
        self._deadline = 0.0
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"SQLiteDatabase({str(self.path)!r}, timeout_s={self.timeout_s}, max_rows={self.max_rows})"

    def connect(self) -> sqlite3.Connection:
        """A new guarded connection (read-only URI, query_only, authorizer, progress handler)."""
        connection = sqlite3.connect(read_only_uri(self.path), uri=True, check_same_thread=False, isolation_level=None)
        connection.execute("PRAGMA query_only = ON")
        connection.set_authorizer(_authorizer)
        connection.set_progress_handler(self._interrupt, PROGRESS_EVERY)
        return connection

    def _interrupt(self) -> int:
        return 1 if time.monotonic() > self._deadline else 0

    def _conn(self) -> sqlite3.Connection:
        if self._connection is None:
            self._connection = self.connect()
        return self._connection

    def execute(self, sql: str) -> QueryResult:
        """Check and run ``sql``; never raises on the statement's content."""
        try:
            checked = check_sql(sql, dialect=self.dialect)
        except UnsafeSQL as exc:
            return QueryResult.failed("refused", exc.reason)
        return self.run_unchecked(checked.sql)

    def run_unchecked(self, sql: str) -> QueryResult:
        """Run ``sql`` without the parser's check: the connection's own guards still apply (tests use this to show
        that the engine alone refuses writes)."""
        start = time.monotonic()
        with self._lock:
            self._deadline = start + self.timeout_s
            cursor = None
            try:
                cursor = self._conn().execute(sql)
                rows = cursor.fetchmany(self.max_rows + 1)
                columns = tuple(d[0] for d in cursor.description or ())
            except sqlite3.OperationalError as exc:
                elapsed = time.monotonic() - start
                if "interrupted" in str(exc) and elapsed >= self.timeout_s:
                    return QueryResult.failed("timeout", f"the query ran longer than {self.timeout_s:g} s", elapsed)
                return QueryResult.failed("error", f"{type(exc).__name__}: {exc}", elapsed)
            except (sqlite3.Error, sqlite3.Warning, ValueError, OverflowError, MemoryError) as exc:
                return QueryResult.failed("error", f"{type(exc).__name__}: {exc}", time.monotonic() - start)
            finally:
                if cursor is not None:
                    cursor.close()
        elapsed = time.monotonic() - start
        if len(rows) > self.max_rows:
            return QueryResult.failed("too_many_rows", f"the query returns more than {self.max_rows} rows", elapsed)
        return QueryResult(columns, tuple(tuple(r) for r in rows), seconds=elapsed)

    def table_names(self) -> list[str]:
        return [r[0] for r in self._introspect("SELECT name FROM sqlite_master WHERE type = 'table' "
                                               "AND name NOT LIKE 'sqlite_%' ORDER BY rowid")]

    def columns(self, table: str) -> list[tuple[str, str, bool]]:
        """``(name, declared type, is primary key)`` per column of ``table``."""
        quoted = table.replace('"', '""')
        return [(r[1], r[2] or "", bool(r[5])) for r in self._introspect(f'PRAGMA table_info("{quoted}")')]

    def foreign_keys(self, table: str) -> list[tuple[str, str, str]]:
        """``(column, referenced table, referenced column)`` per foreign key of ``table``."""
        quoted = table.replace('"', '""')
        return [(r[3], r[2], r[4] or "") for r in self._introspect(f'PRAGMA foreign_key_list("{quoted}")')]

    def sample_values(self, table: str, column: str, limit: int) -> list[str]:
        t, c = table.replace('"', '""'), column.replace('"', '""')
        rows = self._introspect(f'SELECT DISTINCT "{c}" FROM "{t}" WHERE "{c}" IS NOT NULL LIMIT {int(limit)}')
        return [str(r[0]) for r in rows]

    def _introspect(self, sql: str) -> list[tuple]:
        """Our own (trusted) schema statements, on a plain read-only connection without the authorizer."""
        with sqlite3.connect(read_only_uri(self.path), uri=True) as connection:
            return connection.execute(sql).fetchall()

    def close(self) -> None:
        with self._lock:
            if self._connection is not None:
                self._connection.close()
                self._connection = None
