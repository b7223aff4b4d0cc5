import json

import pytest

from deepretrieval_trainer.rewriting.tasks import get_task
from deepretrieval_trainer.sql.rewards import ExecutionReward, SQLFormatReward, build_sql_rewards
from deepretrieval_trainer.sql.spider import load_sql_examples


@pytest.fixture(scope="module")
def dev(spider_dir):
    return load_sql_examples(spider_dir, "dev")


def _completion(sql: str) -> str:  # what the policy generates after the "<think>" prefill
    return f"the schema has it</think>\n<answer>{sql}</answer>"


def _columns(examples):
    return {"db_id": [e.db_id for e in examples], "gold_sql": [e.gold_sql for e in examples],
            "ordered": [e.ordered for e in examples]}


def test_gold_sql_scores_the_top_tier_on_every_dev_example(dev):
    logged = {}
    reward = ExecutionReward(databases=dev.databases)
    rewards = reward([_completion(e.gold_sql) for e in dev.examples], **_columns(dev.examples),
                     log_metric=lambda key, value: logged.__setitem__(key, value))
    assert rewards == [1.0] * len(dev.examples)
    assert logged["execution/accuracy"] == 1.0 and logged["execution/failed_rate"] == 0.0
    assert reward.scorer.gold.misses == len({(e.db_id, e.gold_sql) for e in dev.examples})


def test_gold_results_are_cached(dev):
    reward = ExecutionReward(databases=dev.databases)
    examples = dev.examples[:4]
    for _ in range(3):
        reward([_completion("SELECT 1")] * 4, **_columns(examples))
    assert reward.scorer.gold.misses == len({e.gold_sql for e in examples}) and reward.scorer.gold.hits >= 8


def test_wrong_failing_and_unparsable_answers(dev):
    example = next(e for e in dev.examples if e.gold_sql == "SELECT count(*) FROM singer")
    reward = ExecutionReward(databases=dev.databases)
    completions = [_completion("SELECT count(*) FROM singer"), _completion("SELECT count(*) FROM stadium"),
                   _completion("SELECT nope FROM singer"), _completion("DELETE FROM singer"), "no answer at all"]
    floor = get_task("sql").tiers.floor
    # no SQL at all fails like SQL that errors: never better than attempting an answer
    assert reward(completions, **_columns([example] * 5)) == [1.0, 0.0, floor, floor, floor]


def test_expected_rows_instead_of_gold_sql(dev):
    reward = ExecutionReward(databases=dev.databases)
    columns = {"db_id": ["concert_singer"] * 2, "gold_sql": ["", ""], "gold_rows": [json.dumps([[6]])] * 2,
               "ordered": [False, False]}
    assert reward([_completion("SELECT count(*) FROM singer"), _completion("SELECT 7")], **columns) == [1.0, 0.0]


def test_format_reward_needs_think_and_one_read_statement(dev):
    fmt = SQLFormatReward(databases=dev.databases)
    completions = [_completion("SELECT 1"), "<answer>SELECT 1</answer>", _completion("DROP TABLE singer"),
                   _completion("SELECT 1; SELECT 2")]
    task = get_task("sql")
    assert fmt(completions, db_id=["pets_1"] * 4) == [task.format_valid] + [task.format_invalid] * 3


def test_build_sql_rewards_order_and_names(dev):
    assert [r.__name__ for r in build_sql_rewards(dev.databases)] == ["format", "execution"]
