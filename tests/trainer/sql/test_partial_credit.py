"""Partial credit for SQL that runs but differs: schema-linking Jaccard on Spider's real concert_singer database, and
the execution reward with ``sql_partial_credit`` (off: today's rewards exactly)."""

from __future__ import annotations

import json

import pytest

from deepretrieval_trainer.cli import build_parser
from deepretrieval_trainer.commands.train import load_config
from deepretrieval_trainer.common.errors import ConfigError
from deepretrieval_trainer.rewriting.tasks import get_task
from deepretrieval_trainer.sql.linking import SchemaLinking, schema_items
from deepretrieval_trainer.sql.rewards import ExecutionReward, build_sql_rewards
from deepretrieval_trainer.sql.spider import load_sql_examples
from deepretrieval_trainer.training.config import TrainConfig

DB = "concert_singer"
JOIN = "SELECT T2.name FROM singer_in_concert AS T1 JOIN singer AS T2 ON T1.singer_id = T2.singer_id"
GOLD = "SELECT name ,  country ,  age FROM singer ORDER BY age DESC"  # a dev example's gold SQL
FLOOR = get_task("sql").tiers.floor


@pytest.fixture(scope="module")
def dev(spider_dir):
    return load_sql_examples(spider_dir, "dev")


@pytest.fixture(scope="module")
def linking(dev):
    return SchemaLinking(dev.databases)


def _completion(sql: str) -> str:
    return f"the schema has it</think>\n<answer>{sql}</answer>"


def _score(reward, sqls, gold=GOLD, **columns):
    n = len(sqls)
    return reward([_completion(s) if s is not None else "no answer" for s in sqls], db_id=[DB] * n,
                  gold_sql=[gold] * n, ordered=[True] * n, **columns)


def test_items_are_tables_and_columns_resolved_through_aliases(linking):
    assert linking.items(DB, JOIN) == {"t:singer", "t:singer_in_concert", "c:singer.name", "c:singer.singer_id",
                                       "c:singer_in_concert.singer_id"}
    assert linking.items(DB, "SELECT T1.Name FROM Singer AS T1") == linking.items(DB, "select name from singer")
    # SQLite reads "France" as a string (no such column): not a schema item; a star names no column
    assert linking.items(DB, 'SELECT name FROM singer WHERE country = "France"') == {
        "t:singer", "c:singer.name", "c:singer.country"}
    assert linking.items(DB, "SELECT count(*) FROM stadium") == {"t:stadium"}
    assert schema_items("SELEC name FRM", linking.schema(DB)) == frozenset()


@pytest.mark.parametrize(("predicted", "gold", "expected"), [
    ("SELECT name FROM singer", "SELECT age FROM singer", 1 / 3),  # same table, different column
    ("SELECT T1.name FROM singer AS T1", "SELECT name FROM singer", 1.0),  # an alias
    ("SELECT name FROM singer", JOIN, 2 / 5),  # one table of a join
    ("SELECT name FROM singer WHERE singer_id NOT IN (SELECT singer_id FROM singer_in_concert)", JOIN, 1.0),
    ("SELECT name FROM stadium", "SELECT name FROM singer", 0.0),  # same column name, other table
    ("SELECT count(*) FROM stadium", "SELECT name FROM singer WHERE age > 30", 0.0),  # wrong table
    ("SELECT name FROM singer WHERE age < 30", "SELECT name FROM singer WHERE age > 30", 1.0),  # wrong WHERE
])
def test_jaccard_of_concrete_pairs(linking, predicted, gold, expected):
    assert linking.similarity(DB, predicted, gold) == pytest.approx(expected)


def test_no_gold_sql_no_credit(linking):
    assert linking.similarity(DB, "SELECT name FROM singer", None) == 0.0
    assert linking.similarity(DB, "SELECT name FROM singer", "") == 0.0


def test_right_items_wrong_where_scores_strictly_between_mismatch_and_match(dev):
    logged = {}
    reward = ExecutionReward(databases=dev.databases, partial_credit=0.5)
    wrong_where = "SELECT name, country, age FROM singer WHERE age > 30 ORDER BY age DESC"
    [score] = _score(reward, [wrong_where], log_metric=logged.__setitem__)
    assert 0.0 < score < 1.0 and score == pytest.approx(0.5)
    assert logged["execution/partial_mean"] == 1.0 and logged["execution/accuracy"] == 0.0


def test_count_of_a_wrong_table_scores_below_queries_on_the_right_table(dev):
    reward = ExecutionReward(databases=dev.databases, partial_credit=0.5)
    hack, count_right, right_column = _score(reward, ["SELECT count(*) FROM stadium", "SELECT count(*) FROM singer",
                                                      "SELECT name FROM singer"])
    # gold items: singer, name, country, age; 1/4 and 2/4 of them
    assert (hack, count_right, right_column) == pytest.approx((0.0, 0.125, 0.25))
    assert hack < count_right < right_column


def test_failures_and_matches_are_unchanged(dev):
    logged = {}
    reward = ExecutionReward(databases=dev.databases, partial_credit=0.9)
    assert _score(reward, [GOLD, "SELECT nope FROM singer", "DROP TABLE singer", None],
                  log_metric=logged.__setitem__) == [1.0, FLOOR, FLOOR, FLOOR]
    assert "execution/partial_mean" not in logged  # no query ran and differed


def test_off_gives_todays_rewards_exactly(dev):
    sqls = [GOLD, "SELECT name FROM singer", "SELECT count(*) FROM stadium", "SELECT nope FROM singer", None]
    today, off = {}, {}
    before = _score(ExecutionReward(databases=dev.databases), sqls, log_metric=today.__setitem__)
    after = _score(build_sql_rewards(dev.databases, partial_credit=0.0)[1], sqls, log_metric=off.__setitem__)
    assert before == after == [1.0, 0.0, 0.0, FLOOR, FLOOR]
    assert set(today) == set(off) and "execution/partial_mean" not in off


def test_runs_but_wrong_paid_like_failure_gets_its_credit_above_the_floor(dev):
    config = TrainConfig(task="sql", reward_tiers=[[1.0, 1.0]], reward_floor=-0.5, sql_partial_credit=0.5)
    reward = build_sql_rewards(dev.databases, config.build_task(), partial_credit=config.sql_partial_credit)[1]
    scores = _score(reward, ["SELECT name FROM singer", "SELECT count(*) FROM stadium", "SELECT nope FROM singer"])
    assert scores == pytest.approx([-0.5 + 0.5 * 1.5 * 0.5, -0.5, -0.5])


def test_gold_rows_only_get_no_credit(dev):
    reward = ExecutionReward(databases=dev.databases, partial_credit=0.5)
    assert _score(reward, ["SELECT name FROM singer"], gold="", gold_rows=[json.dumps([["nobody"]])]) == [0.0]


def test_gold_items_are_cached_per_database_and_gold_sql(dev):
    reward = ExecutionReward(databases=dev.databases, partial_credit=0.5)
    for _ in range(3):
        _score(reward, ["SELECT name FROM singer", "SELECT age FROM singer"])
    assert list(reward.linking._gold) == [(DB, GOLD)] and list(reward.linking._schemas) == [DB]


@pytest.mark.parametrize(("values", "message"), [
    ({"task": "sql", "sql_partial_credit": 1.0}, "must be below 1"),
    ({"task": "sql", "sql_partial_credit": -0.1}, ">= 0"),
    ({"task": "sql", "sql_partial_credit": "lots"}, "sql_partial_credit"),
    ({"task": "retrieval", "sql_partial_credit": 0.5}, "applies to task 'sql'"),
])
def test_config_refuses_bad_weights(values, message):
    with pytest.raises(ConfigError, match=message):
        TrainConfig.from_dict(values)


def test_the_cli_flag_reaches_the_config():
    args = build_parser().parse_args(["train", "--task", "sql", "--sql-partial-credit", "0.5"])
    config = load_config(args)
    assert config.sql_partial_credit == 0.5 and config.to_dict()["sql_partial_credit"] == 0.5  # into config.yaml
    assert TrainConfig(task="sql").sql_partial_credit == 0.0


def test_the_reward_refuses_a_weight_of_one(dev):
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        ExecutionReward(databases=dev.databases, partial_credit=1.0)
