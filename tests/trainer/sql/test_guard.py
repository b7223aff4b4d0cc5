import json

import pytest

from deepretrieval_trainer.sql.guard import UnsafeSQL, check_sql, is_ordered

REFUSED = {
    "DROP TABLE singer": "not DROP",
    "DELETE FROM singer": "not DELETE",
    "UPDATE singer SET Name = 'x'": "not UPDATE",
    "INSERT INTO singer (Singer_ID) VALUES (99)": "not INSERT",
    "CREATE TABLE evil (a int)": "not CREATE",
    "PRAGMA writable_schema = ON": "not PRAGMA",
    "ATTACH DATABASE '/tmp/evil.db' AS evil": "not ATTACH",
    "VACUUM INTO '/tmp/evil.db'": "not COMMAND",
    "SELECT 1; DROP TABLE singer": "exactly one statement, found 2",
    "COMMIT; DROP TABLE singer": "exactly one statement, found 2",
    "WITH d AS (DELETE FROM singer RETURNING *) SELECT * FROM d": "contains a DELETE",
    "SELECT * INTO evil FROM singer": "SELECT ... INTO",
    "SELECT * FROM singer FOR UPDATE": "row locks",
    "SELECT load_extension('/tmp/evil.so')": "load_extension",
    "SELECT writefile('/tmp/evil', 'x')": "writefile",
    "SELECT pg_read_file('/etc/passwd')": "pg_read_file",
    "SELECT set_config('default_transaction_read_only', 'off', false)": "set_config",
    "": "empty",
    "SELEC name FROM singer": "not",
    "x" * 9000: "limit 8000",
    # a model can write this; sqlglot's parser then exhausts Python's stack, which once escaped into the training step
    "SELECT " + "(" * 300 + "1" + ")" * 300: "nested too deeply",
}


@pytest.mark.parametrize("sql", list(REFUSED))
def test_refused_with_the_reason(sql):
    with pytest.raises(UnsafeSQL) as caught:
        check_sql(sql)
    assert REFUSED[sql] in caught.value.reason


def test_every_spider_gold_query_is_admitted_as_it_is_written(spider_dir):
    rows = [json.loads(line) for line in (spider_dir / "dev_exec.jsonl").read_text().splitlines()]
    for row in rows:
        checked = check_sql(row["query"])
        assert checked.sql == row["query"].strip().rstrip(";").strip()  # the text runs unchanged
    assert len(rows) == 734


def test_ordered_is_the_outermost_order_by_only():
    assert is_ordered("SELECT name FROM singer ORDER BY age DESC")
    assert is_ordered("SELECT a FROM t UNION SELECT b FROM u ORDER BY 1")
    assert not is_ordered("SELECT name FROM singer WHERE age > (SELECT avg(age) FROM singer ORDER BY 1 LIMIT 1)")
    assert not is_ordered("SELECT count(*) FROM singer")


def test_postgres_dialect_admits_its_own_syntax():
    assert check_sql("SELECT name::text FROM singer WHERE name ILIKE '%a%'", dialect="postgres").sql
