"""SQLAlchemyDatabase on a real PostgreSQL server (the session fixture), with Spider databases copied into it."""

from __future__ import annotations

import pytest
from sqlalchemy import create_engine

from deepretrieval_trainer.sql.engines import SQLAlchemyDatabase, open_database
from deepretrieval_trainer.sql.results import results_match
from deepretrieval_trainer.sql.spider import load_sql_examples
from deepretrieval_trainer.sql.sqlite import SQLiteDatabase
from tests.postgres_fixtures import copy_sqlite

from .conftest import spider_db

DATABASES = ("concert_singer", "pets_1", "poker_player", "singer")


@pytest.fixture(scope="module")
def spider_pg(postgres_server):
    for name in DATABASES:
        copy_sqlite(postgres_server, spider_db(name), f"pg_{name}")
    return postgres_server


def test_gold_sql_answers_on_postgres_as_on_sqlite(spider_pg, spider_dir):
    """Wherever PostgreSQL accepts a Spider gold query (not its SQLite-isms: double-quoted strings, loose GROUP BY,
    text = integer joins), the two engines' results compare equal: the comparison normalizes across engines."""
    ran = same = 0
    for name in DATABASES:
        pg = SQLAlchemyDatabase(spider_pg.url(f"pg_{name}"))
        examples = load_sql_examples(spider_dir, databases=[name])
        for example in examples.examples:
            answer = pg.execute(example.gold_sql)
            if answer.ok:
                ran += 1
                same += results_match(answer.rows, examples.databases[name].execute(example.gold_sql).rows,
                                      ordered=example.ordered)
        pg.close()
    assert ran >= 120 and same == ran


def test_time_limit_row_cap_and_errors(spider_pg):
    pg = SQLAlchemyDatabase(spider_pg.url("pg_pets_1"), timeout_s=0.5, max_rows=10)
    # a join of two small series: slow without temporary files (one series of 1e8 rows spills past temp_file_limit)
    slow = pg.execute("SELECT count(*) FROM generate_series(1, 10000) AS a, generate_series(1, 10000) AS b")
    assert slow.kind == "timeout" and "0.5 s" in slow.error
    assert pg.execute("SELECT * FROM student").kind == "too_many_rows"
    assert "UndefinedColumn" in pg.execute("SELECT nope FROM student").error
    assert pg.execute("SELECT count(*) FROM student").rows == ((34,),)  # the pooled connection still works
    assert pg.execute("SELECT fname FROM student WHERE lname LIKE '%m%' ORDER BY fname").ok  # % stays literal


def test_open_database_dispatch_and_refusals(spider_pg):
    from llama_index.core import SQLDatabase

    assert isinstance(open_database(spider_pg.url("pg_singer")), SQLAlchemyDatabase)
    assert isinstance(open_database(str(spider_db("singer"))), SQLiteDatabase)
    assert isinstance(open_database(f"sqlite:///{spider_db('singer')}"), SQLiteDatabase)
    assert isinstance(open_database(SQLDatabase(create_engine(spider_pg.url("pg_singer")))), SQLAlchemyDatabase)
    with pytest.raises(ValueError, match="in-memory SQLite"):
        open_database("sqlite://")
