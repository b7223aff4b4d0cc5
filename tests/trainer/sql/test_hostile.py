"""Hostile SQL, as a model might write it, against both engines: every statement is refused (by the parser, and
again by the engine when the parser is bypassed with ``run_unchecked``), and the database is unchanged afterwards:
byte for byte for SQLite (and no journal or new file beside it), row counts and catalog for PostgreSQL. The
PostgreSQL connection is a superuser's, so only our read-only transaction stands between the SQL and the data."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from deepretrieval_trainer.sql.engines import SQLAlchemyDatabase
from deepretrieval_trainer.sql.sqlite import SQLiteDatabase
from tests.postgres_fixtures import copy_sqlite

from .conftest import spider_db

HOSTILE = [
    "DROP TABLE singer",
    "DROP TABLE IF EXISTS singer_in_concert",
    "DELETE FROM singer",
    "UPDATE singer SET Name = 'pwned'",
    "INSERT INTO singer (Singer_ID, Name) VALUES (99, 'evil')",
    "REPLACE INTO singer (Singer_ID, Name) VALUES (1, 'evil')",
    "CREATE TABLE evil (a int)",
    "CREATE TEMP TABLE evil AS SELECT * FROM singer",
    "CREATE INDEX evil ON singer (Name)",
    "CREATE VIEW evil AS SELECT 1",
    "ALTER TABLE singer ADD COLUMN evil int",
    "ALTER TABLE singer RENAME TO evil",
    "TRUNCATE singer",
    "SELECT 1; DROP TABLE singer",
    "SELECT * FROM singer; DELETE FROM singer",
    "COMMIT; DROP TABLE singer",
    "BEGIN; DELETE FROM singer; COMMIT",
    "WITH d AS (DELETE FROM singer RETURNING *) SELECT * FROM d",
    "SELECT * INTO evil FROM singer",
    "SELECT * FROM singer FOR UPDATE",
    "PRAGMA writable_schema = ON",
    "PRAGMA journal_mode = DELETE",
    "PRAGMA query_only = OFF",
    "ATTACH DATABASE '/tmp/deepretrieval-evil.db' AS evil",
    "DETACH DATABASE main",
    "VACUUM",
    "VACUUM INTO '/tmp/deepretrieval-evil.db'",
    "REINDEX",
    "ANALYZE",
    "SELECT load_extension('/tmp/evil.so')",
    "SELECT writefile('/tmp/deepretrieval-evil.txt', 'x')",
    "SELECT readfile('/etc/passwd')",
    "SELECT pg_read_file('/etc/passwd')",
    "SELECT lo_import('/etc/passwd')",
    "COPY singer TO '/tmp/deepretrieval-evil.csv'",
    "SET default_transaction_read_only = off",
    "SELECT set_config('default_transaction_read_only', 'off', false)",
    "GRANT ALL ON singer TO PUBLIC",
    "LOCK TABLE singer",
    "DO $$ BEGIN DELETE FROM singer; END $$",
    "PREPARE evil AS DELETE FROM singer",
    "EXPLAIN ANALYZE DELETE FROM singer",
    "CREATE TRIGGER evil AFTER INSERT ON singer BEGIN DELETE FROM singer; END",
    "NOTIFY evil",
    "SELECT pg_terminate_backend(1)",
]


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_sqlite_refuses_everything_and_stays_byte_identical(writable_copy):
    path = writable_copy("concert_singer")
    before, files = _sha256(path), sorted(p.name for p in path.parent.iterdir())
    database = SQLiteDatabase(path, timeout_s=1.0)
    for sql in HOSTILE:
        checked = database.execute(sql)
        assert not checked.ok and checked.kind == "refused", (sql, checked)
        unchecked = database.run_unchecked(sql)  # the parser bypassed: SQLite's own guards refuse it
        assert not unchecked.ok and unchecked.kind == "error", (sql, unchecked)
    assert database.execute("SELECT count(*) FROM singer").rows == ((6,),)
    database.close()
    assert _sha256(path) == before
    assert sorted(p.name for p in path.parent.iterdir()) == files  # no journal, WAL or attached file
    assert not Path("/tmp/deepretrieval-evil.db").exists() and not Path("/tmp/deepretrieval-evil.txt").exists()


def test_sqlite_time_limit_and_row_cap(writable_copy):
    database = SQLiteDatabase(writable_copy("world_1"), timeout_s=0.5, max_rows=100)
    slow = database.execute("WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n) SELECT count(*) FROM n")
    assert slow.kind == "timeout" and "0.5 s" in slow.error
    big = database.execute("SELECT * FROM city")
    assert big.kind == "too_many_rows" and "100 rows" in big.error
    assert database.execute("SELECT count(*) FROM city").rows == ((4079,),)  # the connection still works


def _catalog(server, name: str) -> tuple:
    with server.admin(name) as connection:
        tables = connection.execute("SELECT relname, relkind FROM pg_class WHERE relnamespace = "
                                    "'public'::regnamespace ORDER BY relname").fetchall()
        counts = [connection.execute(f'SELECT count(*) FROM "{t}"').fetchone()[0] for t, kind in tables if kind == "r"]
        digest = connection.execute("SELECT md5(string_agg(s::text, ',' ORDER BY s::text)) FROM singer s").fetchone()
        roles = connection.execute("SELECT rolname FROM pg_roles ORDER BY 1").fetchall()
        setting = connection.execute("SELECT setting FROM pg_settings WHERE name = 'default_transaction_read_only'")
        return tables, counts, digest, roles, setting.fetchall()


@pytest.fixture(scope="module")
def concert_pg(postgres_server):
    copy_sqlite(postgres_server, spider_db("concert_singer"), "hostile_concert")
    return postgres_server


def test_postgres_refuses_everything_and_rows_and_catalog_are_unchanged(concert_pg):
    before = _catalog(concert_pg, "hostile_concert")
    database = SQLAlchemyDatabase(concert_pg.url("hostile_concert"), timeout_s=1.0)  # a superuser's connection
    for sql in HOSTILE:
        checked = database.execute(sql)
        assert not checked.ok and checked.kind == "refused", (sql, checked)
        database.run_unchecked(sql)  # the parser bypassed: the read-only transaction must hold on its own
    assert _catalog(concert_pg, "hostile_concert") == before
    assert database.execute("SELECT count(*) FROM singer").rows == ((6,),)
    sleep = database.run_unchecked("SELECT pg_sleep(5)")
    assert sleep.kind == "timeout"
    database.close()
