"""A SQLite database that model-written SQL cannot change, and whose single statement is bounded.

Every connection is opened read-only through a URI (``mode=ro``), sets ``PRAGMA query_only``, and installs an
authorizer that allows only reading tables and calling harmless functions: writes, DDL, ATTACH/DETACH, PRAGMA,
transactions and file-touching functions are refused by SQLite itself. A progress handler interrupts a statement
after ``timeout_s`` of wall-clock time, and at most ``max_rows`` rows and ``max_bytes`` bytes are fetched (more is
an error).

The progress handler runs between loop iterations of SQLite's virtual machine, never inside a function call or a
row's expressions, so SQLite's own limits bound what one step may do: no string or blob longer than
:data:`MAX_VALUE_BYTES` (``randomblob``, ``zeroblob``, ``replace``, ``||``, ``group_concat`` and a recursive CTE
fail with "string or blob too big" instead of allocating; ``printf`` returns NULL), at most
:data:`MAX_RESULT_COLUMNS` result columns, LIKE/GLOB patterns of at most :data:`MAX_LIKE_PATTERN_BYTES`. With
the guard's cost rules (:mod:`.cost`: no search over a built value, no inlining blowup) one call's work is at most
linear in 100 kB, and one row's a few thousand such calls.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
import urllib.parse
from pathlib import Path

from .guard import DENIED_FUNCTIONS, UnsafeSQL, check_sql
from .results import MAX_RESULT_BYTES, QueryResult, ResultTooLarge, check_limits, collect_rows

logger = logging.getLogger(__name__)

_ALLOWED_ACTIONS = {sqlite3.SQLITE_SELECT, sqlite3.SQLITE_READ, sqlite3.SQLITE_RECURSIVE}
PROGRESS_EVERY = 1000  # SQLite virtual-machine instructions between two clock checks

# SQLite's per-connection limits (sqlite3_limit), set on every guarded connection. A stored value longer than
# MAX_VALUE_BYTES cannot be read either (Spider's longest is 60 bytes, its widest row 270, its widest table 26
# columns); 100 kB keeps the worst single call (printf of 100 kB) under 1 ms and one row of a few thousand such calls
# near a second.
MAX_VALUE_BYTES = 100_000  # SQLITE_LIMIT_LENGTH: any string, blob or row a statement builds or reads
MAX_RESULT_COLUMNS = 256  # SQLITE_LIMIT_COLUMN (set once the schema is read, so wider tables still load)
MAX_LIKE_PATTERN_BYTES = 1000  # SQLITE_LIMIT_LIKE_PATTERN_LENGTH: LIKE/GLOB cost text length x pattern length
MAX_SQL_BYTES = 100_000  # SQLITE_LIMIT_SQL_LENGTH (the guard allows MAX_SQL_CHARS = 8,000 characters)
_LIMITS = {"SQLITE_LIMIT_LENGTH": MAX_VALUE_BYTES, "SQLITE_LIMIT_LIKE_PATTERN_LENGTH": MAX_LIKE_PATTERN_BYTES,
           "SQLITE_LIMIT_SQL_LENGTH": MAX_SQL_BYTES, "SQLITE_LIMIT_ATTACHED": 0, "SQLITE_LIMIT_WORKER_THREADS": 0}
_warned: set[str] = set()


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

    def __init__(self, path: str | Path, *, timeout_s: float = 2.0, max_rows: int = 10_000,
                 max_bytes: int = MAX_RESULT_BYTES, name: str | None = None):
        file = Path(path).expanduser()
        if not file.is_file():
            raise FileNotFoundError(f"{file}: no such SQLite file; give the path of a .sqlite/.db file")
        if not timeout_s > 0:
            raise ValueError(f"timeout_s={timeout_s!r} must be > 0 seconds")
        check_limits(max_rows, max_bytes)
        self.path = file.resolve()
        self.name = name or file.stem
        self.timeout_s = float(timeout_s)
        self.max_rows = max_rows
        self.max_bytes = max_bytes
        self._connection: sqlite3.Connection | None = None
        self._deadline = 0.0
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return (f"SQLiteDatabase({str(self.path)!r}, timeout_s={self.timeout_s}, max_rows={self.max_rows}, "
                f"max_bytes={self.max_bytes})")

    def connect(self) -> sqlite3.Connection:
        """A new guarded connection (read-only URI, query_only, SQLite's size limits, authorizer, progress handler)."""
        connection = sqlite3.connect(read_only_uri(self.path), uri=True, check_same_thread=False, isolation_level=None)
        connection.execute("PRAGMA query_only = ON")
        _set_limits(connection)
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
                columns = tuple(d[0] for d in cursor.description or ())
                rows, size = collect_rows(cursor, max_rows=self.max_rows, max_bytes=self.max_bytes)
            except ResultTooLarge as exc:
                return QueryResult.failed(exc.kind, exc.reason, time.monotonic() - start)
            except (sqlite3.Error, sqlite3.Warning, ValueError, OverflowError, MemoryError) as exc:
                return self._failure(exc, time.monotonic() - start)
            finally:
                if cursor is not None:
                    cursor.close()
        return QueryResult(columns, tuple(rows), seconds=time.monotonic() - start, nbytes=size)

    def _failure(self, exc: BaseException, elapsed: float) -> QueryResult:
        text = str(exc)
        if isinstance(exc, sqlite3.OperationalError) and "interrupted" in text and elapsed >= self.timeout_s:
            return QueryResult.failed("timeout", f"the query ran longer than {self.timeout_s:g} s", elapsed)
        if "string or blob too big" in text:
            return QueryResult.failed("too_large", f"a value is too large: over the limit of {MAX_VALUE_BYTES:,} "
                                                   "bytes for one string, blob or row (SQLite: string or blob too "
                                                   "big)", elapsed)
        if "pattern too complex" in text:
            text += f" (limit {MAX_LIKE_PATTERN_BYTES:,} bytes)"
        elif "too many columns" in text:
            text += f" (limit {MAX_RESULT_COLUMNS})"
        elif "malformed database schema" in text:
            self._drop_connection()  # the schema changed under us: read it again before the column limit applies
        return QueryResult.failed("error", f"{type(exc).__name__}: {text}", elapsed)

    def _drop_connection(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None

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
            self._drop_connection()


def _set_limits(connection: sqlite3.Connection) -> None:
    """Set SQLite's size limits on ``connection``; the column limit only after the schema is read, so a table wider
    than MAX_RESULT_COLUMNS still loads (only a result that wide is refused)."""
    if not hasattr(connection, "setlimit"):  # Python 3.10
        if "setlimit" not in _warned:
            _warned.add("setlimit")
            logger.warning("this Python's sqlite3 cannot set SQLite's size limits (Connection.setlimit needs Python "
                           ">= 3.11): one value of model-written SQL may grow to SQLite's 1 GB default")
        return
    for name, value in _LIMITS.items():
        connection.setlimit(getattr(sqlite3, name), value)
    connection.execute("SELECT count(*) FROM sqlite_master").fetchone()
    connection.setlimit(sqlite3.SQLITE_LIMIT_COLUMN, MAX_RESULT_COLUMNS)
