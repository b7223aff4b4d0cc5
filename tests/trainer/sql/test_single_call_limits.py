"""One statement is bounded in time, memory and result size, on both engines and through every entry point.

A time limit checked between steps does not stop one long step: SQLite's progress handler runs between loop
iterations of its virtual machine and PostgreSQL's ``statement_timeout`` only where a function looks, so a single
call (``randomblob(1e9)``, ``instr`` over two built strings, ``strpos`` in PostgreSQL) or one row's expressions ran
to their end, and the row cap counted rows, not bytes. Each attack runs at growing sizes in a fresh subprocess
(``single_call_probe``) capped at 2 GiB more address space than it starts with; each must come back as a failed
statement whose reason names the limit, with the resident set growing by less than ``MEMORY_BOUND_MB`` and within
``4 * timeout_s + 1`` seconds (a loose bound: the limits are meant to hold within about twice ``timeout_s``).
"""

from __future__ import annotations

import re

import pytest

from tests.postgres_fixtures import copy_sqlite

from .conftest import spider_db
from .single_call_probe import probe

MEMORY_BOUND_MB = 100
FAST, SLOW = 2.0, 0.5  # timeout_s for the memory attacks (the default) and for the time attacks

TOO_LARGE = r"(?=.*limit)(?=.*too (large|big))"
SEARCH = r"refused: .*a search .* costs the product of its arguments' lengths"
INLINED = r"refused: the query grows to [\d,]+ expression nodes .*\(limit 5000\)"
TIMEOUT = r"the query ran longer than"
FORMAT = r"refused: .*PRINTF.*limit"


def _text(n: int, char: str = "a") -> str:
    """SQL that builds n copies of ``char`` (from zeroblob, so neither the length limit on printf nor the format
    rule is what refuses the search over it)."""
    return f"replace(hex(zeroblob({n // 2})), '0', '{char}')"


def _rows(n: int, value: str) -> str:
    return f"WITH RECURSIVE r(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM r LIMIT {n}) SELECT {value} FROM r"


def _chain(levels: int) -> str:
    ctes = ["t0(v) AS (SELECT 1)"] + [f"t{i}(v) AS (SELECT v + v FROM t{i - 1})" for i in range(1, levels + 1)]
    return f"WITH {', '.join(ctes)} SELECT v FROM t{levels}"


def _doubling(levels: int) -> str:
    return ("WITH RECURSIVE r(s, i) AS (SELECT 'x', 1 UNION ALL SELECT s || s, i + 1 FROM r "
            f"WHERE i < {levels}) SELECT max(length(s)) FROM r")


def _searches_in_one_row(calls: int) -> str:
    return (f"WITH t(a, b) AS (SELECT {_text(99998)}, {_text(49998)} || 'b') SELECT "
            + " + ".join(["instr(a, b)"] * calls) + " FROM t")


# (name, [(size, sql)], timeout_s, the pattern the reason must match)
SQLITE_ATTACKS = [
    ("randomblob", [(n, f"SELECT randomblob({n})") for n in (10**7, 3 * 10**8)], FAST, TOO_LARGE),
    ("zeroblob_rows", [(n, _rows(6, f"zeroblob({n})")) for n in (10**6, 10**8)], FAST, TOO_LARGE),
    ("rows_under_the_row_cap", [(n, _rows(n, "zeroblob(99000)")) for n in (100, 2000)], FAST, TOO_LARGE),
    ("printf_width", [(n, f"SELECT printf('%.*c', {n}, 'x')") for n in (10**7, 2**31 - 1)], FAST, FORMAT),
    ("group_concat", [(n, _rows(n, "length(group_concat(hex(zeroblob(500))))")) for n in (10**4, 3 * 10**5)], FAST,
     TOO_LARGE),
    ("recursive_doubling", [(n, _doubling(n)) for n in (20, 28)], FAST, TOO_LARGE),
    ("instr", [(n, f"SELECT instr({_text(n)}, {_text(n // 2)} || 'b')") for n in (10**5, 10**6)], SLOW, SEARCH),
    ("replace", [(n, f"SELECT length(replace({_text(n)}, {_text(n // 2)} || 'b', 'x'))") for n in (10**5, 10**6)],
     SLOW, SEARCH),
    ("trim", [(n, f"SELECT length(trim({_text(n)}, {_text(n // 2, 'b')} || 'a'))") for n in (10**4, 6 * 10**4)],
     SLOW, SEARCH),
    ("like", [(n, f"SELECT {_text(n)} LIKE '%' || {_text(5000)} || 'b'") for n in (10**5, 10**6)], SLOW, SEARCH),
    ("searches_in_one_row", [(n, _searches_in_one_row(n)) for n in (10, 100)], SLOW, SEARCH),
    ("inlining_blowup", [(n, _chain(n)) for n in (12, 21)], SLOW, INLINED),
]

PG_ATTACKS = [
    ("repeat", [(n, f"SELECT repeat('x', {n})") for n in (10**7, 5 * 10**8)], FAST, rf"{TOO_LARGE}|{TIMEOUT}"),
    ("repeat_chunks", [(n, f"SELECT repeat(repeat('x', 1000), {n // 1000})") for n in (10**7, 4 * 10**8)], FAST,
     rf"{TOO_LARGE}|{TIMEOUT}"),
    ("lpad", [(n, f"SELECT lpad('x', {n}, 'y')") for n in (10**7, 2 * 10**8)], FAST, rf"{TOO_LARGE}|{TIMEOUT}"),
    ("string_agg", [(n, f"SELECT string_agg(repeat('x', 1000), '') FROM generate_series(1, {n})")
                    for n in (10**4, 3 * 10**5)], FAST, TOO_LARGE),
    ("rows_under_the_row_cap", [(n, f"SELECT repeat('x', 1000000) FROM generate_series(1, {n})")
                                for n in (10, 300)], FAST, TOO_LARGE),
    ("generate_series_aggregate", [(n, f"SELECT count(*) FROM generate_series(1, {n})") for n in (10**7, 10**10)],
     SLOW, rf"temp_file_limit|{TIMEOUT}"),
    ("strpos", [(n, f"SELECT strpos(repeat('a', {n}), 'b' || repeat('a', {n // 2}))")
                for n in (5 * 10**4, 3 * 10**5)], SLOW, SEARCH),
    ("like", [(n, f"SELECT repeat('a', {n}) LIKE '%' || repeat('a', {n // 2}) || 'b'")
              for n in (4 * 10**4, 12 * 10**4)], SLOW, SEARCH),
    ("btrim", [(n, f"SELECT length(btrim(repeat('a', {n}), repeat('c', {n // 2}) || 'a'))")
               for n in (2 * 10**4, 8 * 10**4)], SLOW, SEARCH),
    ("pg_sleep", [(5, "SELECT pg_sleep(5)")], SLOW, r"refused: .*pg_sleep"),
]


def assert_bounded(outcomes: list[dict], pattern: str, timeout_s: float) -> None:
    """Every size failed with a reason matching ``pattern``, grew the resident set by less than MEMORY_BOUND_MB and
    took less than 4 * timeout_s + 1 s.
    All sizes run before the verdict, so a failure lists each one's outcome."""
    problems = []
    for o in outcomes:
        if "crashed" in o:
            problems.append(f"the probe died: {o['crashed']}")
            continue
        wrong = []
        if not o["failed"]:
            wrong.append(f"ran to the end (largest value {o['largest']:,} bytes)")
        elif not re.search(pattern, o["reason"]):
            wrong.append(f"failed for another reason: {o['reason']!r}")
        if o["rss_mb"] >= MEMORY_BOUND_MB:
            wrong.append(f"grew the resident set by {o['rss_mb']:,.0f} MB (bound {MEMORY_BOUND_MB})")
        if o["seconds"] >= 4 * timeout_s + 1:
            wrong.append(f"took {o['seconds']:.1f} s (bound {4 * timeout_s + 1:g} s)")
        if wrong:
            problems.append(f"size {o['size']:,}: " + "; ".join(wrong))
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("name, statements, timeout_s, pattern", SQLITE_ATTACKS, ids=[a[0] for a in SQLITE_ATTACKS])
def test_sqlite_single_statement_attacks_are_bounded(name, statements, timeout_s, pattern):
    outcomes = probe("database", str(spider_db("concert_singer")), statements, timeout_s=timeout_s)
    assert_bounded(outcomes, pattern, timeout_s)


@pytest.fixture(scope="module")
def pg_url(postgres_server):
    copy_sqlite(postgres_server, spider_db("concert_singer"), "limits_concert")
    return postgres_server.url("limits_concert")


@pytest.mark.parametrize("name, statements, timeout_s, pattern", PG_ATTACKS, ids=[a[0] for a in PG_ATTACKS])
def test_postgres_single_statement_attacks_are_bounded(pg_url, name, statements, timeout_s, pattern):
    outcomes = probe("database", pg_url, statements, timeout_s=timeout_s)
    assert_bounded(outcomes, pattern, timeout_s)


# one attack on memory and one on time, per engine, through each entry point (the plugins' tests do the same)
ENTRY_ATTACKS = {
    "sqlite": [("randomblob", [(3 * 10**8, "SELECT randomblob(300000000)")], FAST, TOO_LARGE),
               ("instr", [(10**6, f"SELECT instr({_text(10**6)}, {_text(5 * 10**5)} || 'b')")], SLOW, SEARCH)],
    "postgres": [("repeat_chunks", [(4 * 10**8, "SELECT repeat(repeat('x', 1000), 400000)")], FAST,
                  rf"{TOO_LARGE}|{TIMEOUT}"),
                 ("strpos", [(3 * 10**5, "SELECT strpos(repeat('a', 300000), 'b' || repeat('a', 150000))")], SLOW,
                  SEARCH)],
}


def entry_point_attacks(entry: str, target: str, engine: str) -> None:
    for _name, statements, timeout_s, pattern in ENTRY_ATTACKS[engine]:
        assert_bounded(probe(entry, target, statements, timeout_s=timeout_s), pattern, timeout_s)


@pytest.mark.parametrize("entry", ["reward", "eval"])
def test_the_reward_and_the_evaluation_fail_the_statement_and_carry_on(entry):
    entry_point_attacks(entry, str(spider_db("concert_singer")), "sqlite")


@pytest.mark.parametrize("entry", ["reward", "eval"])
def test_the_reward_and_the_evaluation_on_postgres(entry, pg_url):
    entry_point_attacks(entry, pg_url, "postgres")


# --- the rules and walls one at a time -------------------------------------------------------------------------------
def test_every_spider_gold_query_passes_the_guard_and_runs_within_the_limits(spider_dir):
    """The limits are generous for real queries: all 734 gold queries (train and dev, 14 databases) pass the cost
    rules and run on the limited connection (the dev set's 100% is tests/trainer/sql/test_evaluate.py)."""
    from deepretrieval_trainer.sql.guard import check_sql
    from deepretrieval_trainer.sql.spider import load_sql_examples

    everything = load_sql_examples(spider_dir, "all")
    largest = 0
    for example in everything.examples:
        check_sql(example.gold_sql)
        result = everything.databases[example.db_id].execute(example.gold_sql)
        assert result.ok, (example.db_id, example.gold_sql, result.error)
        largest = max(largest, result.nbytes)
    assert len(everything.examples) == 734 and largest < 100_000  # 16 kB (world_1), far below the 8 MiB cap


EVERYDAY = [
    "SELECT name FROM singer WHERE lower(name) LIKE '%' || 'jo' || '%' AND country || ' ' || name LIKE 'x%'",
    "SELECT a.name FROM singer AS a JOIN concert AS b ON a.name LIKE '%' || b.theme || '%'",
    "SELECT replace(replace(name, 'a', ''), ' ', '') FROM singer WHERE instr(upper(name), 'JO') > 0",
    "WITH s AS (SELECT name AS n FROM singer) SELECT n FROM s WHERE n LIKE '%a%' AND trim(n, ' .') <> ''",
    "SELECT name FROM singer WHERE strftime('%Y', song_release_year) LIKE '20%' AND name GLOB 'J*'",
    "SELECT printf('%.2f', avg(age)), printf('%5d%%', count(*)) FROM singer",
    "SELECT * FROM (SELECT name, age FROM singer UNION ALL SELECT name, capacity FROM stadium) AS t ORDER BY age",
    "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 10) SELECT i FROM n",
]
REFUSED = {
    "SELECT name FROM singer WHERE name LIKE (SELECT max(name) FROM singer)": "a value the query builds",
    "SELECT name FROM singer WHERE replace(name, 'a', 'aaaaaaaa') LIKE '%x%'": "a value the query builds",
    "WITH s AS (SELECT group_concat(name) AS n FROM singer) SELECT n FROM s WHERE n LIKE '%a%'": "query builds",
    "WITH RECURSIVE r(s) AS (SELECT 'a' UNION ALL SELECT s || s FROM r LIMIT 20) SELECT s FROM r WHERE s GLOB '*b'":
        "recursive CTE",
    f"SELECT name FROM singer WHERE name LIKE '{'a' * 300}'": "at most 64 terms and 256 characters",
    "SELECT printf(name, 1) FROM singer": "format must be a string literal",
    "SELECT printf('%.*c', age * 1000, 'x') FROM singer": "integer literal within the limit of 100,000",
    ("WITH " + ", ".join(["t0(v) AS (SELECT 1)"] + [f"t{i}(v) AS (SELECT v + v FROM t{i - 1})" for i in range(1, 9)])
     + " SELECT v AS w FROM t8 WHERE " + " AND ".join(["w > 0"] * 40)): "expression nodes",
}


def test_the_cost_rules_admit_everyday_sql_and_name_what_they_refuse():
    from deepretrieval_trainer.sql.guard import UnsafeSQL, check_sql

    for sql in EVERYDAY:
        check_sql(sql)
    for sql, reason in REFUSED.items():
        with pytest.raises(UnsafeSQL, match=re.escape(reason)):
            check_sql(sql)


def test_the_byte_cap_counts_rows_as_they_are_fetched():
    from deepretrieval_trainer.sql.results import ResultTooLarge, collect_rows, row_bytes

    assert row_bytes(("abc", b"de", 7, None, 2.5)) == 3 + 2 + 8 + 8 + 8
    fetched = []

    def rows():
        for i in range(10**9):  # would never end: the cap must stop taking rows
            fetched.append(i)
            yield ("x" * 100,)
    with pytest.raises(ResultTooLarge, match=r"too large: at least 1,100 bytes in 11 rows \(limit 1,000 bytes\)"):
        collect_rows(rows(), max_rows=10**6, max_bytes=1000)
    assert len(fetched) == 11
    with pytest.raises(ResultTooLarge, match="more than 3 rows"):
        collect_rows(iter([(1,)] * 5), max_rows=3, max_bytes=10**6)


def test_without_the_guard_sqlite_own_limits_still_bound_one_call():
    """run_unchecked skips the parser's rules: SQLite's length limit alone caps every value, so the n*m search the
    guard refuses costs at most 100 kB x 50 kB inside one call."""
    import time

    from deepretrieval_trainer.sql.sqlite import MAX_VALUE_BYTES, SQLiteDatabase

    database = SQLiteDatabase(spider_db("concert_singer"), timeout_s=0.5, max_bytes=2**20)
    for sql in ("SELECT randomblob(1000000000)", "SELECT zeroblob(100001)", f"SELECT {_text(200_002)}",
                "WITH RECURSIVE r(s) AS (SELECT 'x' UNION ALL SELECT s || s FROM r) SELECT max(length(s)) FROM r"):
        result = database.run_unchecked(sql)
        assert result.kind == "too_large" and f"limit of {MAX_VALUE_BYTES:,} bytes" in result.error, (sql, result)
    start = time.monotonic()
    result = database.run_unchecked(f"SELECT instr({_text(99_998)}, {_text(49_998)} || 'b')")
    assert result.rows == ((0,),) and time.monotonic() - start < 4 * 0.5 + 1
    assert database.run_unchecked("SELECT printf('%.*c', 200000, 'x')").rows == ((None,),)  # SQLite's printf: NULL
    wide = database.run_unchecked("SELECT " + ", ".join(["1"] * 300))
    assert wide.kind == "error" and "too many columns" in wide.error and "limit 256" in wide.error
    pattern = database.run_unchecked(f"SELECT 'a' LIKE '{'%' * 1001}'")
    assert "pattern too complex" in pattern.error and "limit 1,000 bytes" in pattern.error
    assert database.execute("SELECT count(*) FROM singer").rows == ((6,),)  # the connection still works


def test_a_table_wider_than_the_result_column_limit_still_loads(tmp_path):
    import sqlite3

    from deepretrieval_trainer.sql.sqlite import SQLiteDatabase

    with sqlite3.connect(tmp_path / "wide.db") as db:
        db.execute("CREATE TABLE wide (" + ", ".join(f"c{i} INTEGER" for i in range(300)) + ")")
        db.execute("INSERT INTO wide (c0, c299) VALUES (1, 2)")
    database = SQLiteDatabase(tmp_path / "wide.db")
    assert database.execute("SELECT c0, c299 FROM wide").rows == ((1, 2),)
    assert "too many columns in result set" in database.execute("SELECT * FROM wide").error


def test_postgres_client_gives_up_when_the_server_does_not_stop(pg_url):
    """strpos over long strings never checks statement_timeout; without the guard (run_unchecked) the client closes
    the connection at 2 * timeout_s + 0.5 s, and the pool hands out a fresh one."""
    import time

    from deepretrieval_trainer.sql.engines import SQLAlchemyDatabase

    database = SQLAlchemyDatabase(pg_url, timeout_s=0.5)
    start = time.monotonic()
    result = database.run_unchecked("SELECT strpos(repeat('a', 200000), 'b' || repeat('a', 100000))")
    assert result.kind == "timeout" and "the client closed the connection after 1.5 s" in result.error
    assert time.monotonic() - start < 4 * 0.5 + 1
    assert database.execute("SELECT count(*) FROM singer").rows == ((6,),)
    empty = database.execute("SELECT name, age FROM singer WHERE age > 1000")
    assert empty.ok and empty.rows == () and empty.columns == ("name", "age")  # streamed, yet described
    database.close()


def test_postgres_role_that_may_not_set_temp_file_limit_still_runs(postgres_server, pg_url, caplog):
    from deepretrieval_trainer.sql.engines import SQLAlchemyDatabase

    with postgres_server.admin("limits_concert") as admin:
        admin.execute("CREATE ROLE limits_reader LOGIN")
        admin.execute("GRANT SELECT ON ALL TABLES IN SCHEMA public TO limits_reader")
    database = SQLAlchemyDatabase(postgres_server.url("limits_concert", user="limits_reader"), timeout_s=0.5)
    assert database.execute("SELECT count(*) FROM singer").rows == ((6,),)
    assert database.execute("SELECT count(*) FROM singer").rows == ((6,),)
    assert sum("limits_reader may not set temp_file_limit" in r.getMessage() for r in caplog.records) == 1
    huge = database.execute("SELECT count(*) FROM generate_series(1, 10000000000)")
    assert huge.kind == "timeout"  # no temp_file_limit of its own: the time limit still holds
    database.close()


def test_the_reward_cache_holds_a_bounded_number_of_bytes():
    from deepretrieval_trainer.sql.rewards import ExecutionScorer
    from deepretrieval_trainer.sql.sqlite import SQLiteDatabase

    scorer = ExecutionScorer({"db": SQLiteDatabase(spider_db("concert_singer"))}, cache_bytes=50_000)
    for i in range(40):
        assert scorer.run("db", f"SELECT hex(zeroblob(4000)), {i}").ok
    assert scorer._cached_bytes <= 50_000 and 0 < len(scorer._predicted) < 40
