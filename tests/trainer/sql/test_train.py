"""A short real GRPO run of the embedded model on Spider's training databases (slow): the run folder, the adapter,
the execution reward's figures in metrics.jsonl, and the trained adapter evaluated on held-out databases, each answer
with the status that running it with plain sqlite3 gives."""

from __future__ import annotations

import json
import sqlite3
from collections import Counter
from contextlib import closing
from pathlib import Path

import pytest

from deepretrieval_trainer.common.errors import ConfigError
from deepretrieval_trainer.sql.evaluate import evaluate_sql, parse_sql_source
from deepretrieval_trainer.sql.spider import load_sql_examples
from deepretrieval_trainer.sql.train import train_sql
from deepretrieval_trainer.training.config import TrainConfig

from .conftest import spider_db


def test_the_task_must_be_sql(spider_dir, tmp_path):
    with pytest.raises(ConfigError, match="needs task='sql'"):
        train_sql(load_sql_examples(spider_dir, "train"), TrainConfig(run_dir=str(tmp_path / "run")))


@pytest.mark.slow
def test_short_training_run_and_its_adapter_on_held_out_databases(spider_dir, tmp_path):
    config = TrainConfig(task="sql", run_dir=str(tmp_path / "run"), max_steps=2, save_steps=2, prompts_per_step=1,
                         num_generations=2, max_completion_length=32, max_queries=4, torch_threads=1)
    adapter = train_sql(load_sql_examples(spider_dir, "train"), config)
    assert (adapter / "adapter_config.json").is_file()
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    assert info["task"] == "sql" and info["status"] == "completed" and info["steps"] == 2
    assert set(info["dataset"]["databases"]).isdisjoint(load_sql_examples(spider_dir, "dev").databases)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2
    for row in rows:
        assert {"rewards/format/mean", "rewards/execution/mean", "execution/time_s", "time/rewards_s"} <= set(row)
        assert row["time/rewards_s"] < row["step_s"]
    dev = load_sql_examples(spider_dir, "dev", limit=3)
    report = evaluate_sql(dev, [parse_sql_source("gold"), parse_sql_source(f"trained=adapter:{tmp_path / 'run'}",
                                                                            max_new_tokens=32)], progress=False)
    assert [o.status for o in report.sources["gold"]] == ["match"] * 3  # the reference SQL against itself
    trained = report.sources["trained"]
    assert [o.id for o in trained] == [e.id for e in dev.examples]
    assert any(o.sql is not None for o in trained)  # the adapter writes SQL within 32 tokens (1-2 of 3 observed)
    for outcome, example in zip(trained, dev.examples, strict=True):
        expected = expected_status(spider_db(example.db_id), outcome.sql, example.gold_sql)
        assert outcome.status == (expected or ("match" if outcome.correct else "mismatch")), outcome
        assert outcome.correct is (outcome.status == "match")
        assert (outcome.reason is None) is (outcome.status in ("match", "mismatch")), outcome  # a failure says why


def _value(value):
    return round(value, 6) if isinstance(value, float) else value


def expected_status(database: Path, sql: str | None, gold_sql: str) -> str | None:
    """The status an answer must get, found with plain sqlite3 on a read-only connection: ``no_answer`` without SQL,
    ``failed`` where SQLite rejects it, ``match`` for the gold rows in the gold order, ``mismatch`` where no column
    order can make the rows equal (another row or column count, other values); None where only the evaluation's
    column permutations can tell."""
    if sql is None:
        return "no_answer"
    with closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True)) as db:
        try:
            cursor = db.execute(sql)
            rows = cursor.fetchall()
        except sqlite3.Error:
            return "failed"
        width = len(cursor.description or ())
        gold_cursor = db.execute(gold_sql)
        gold, gold_width = gold_cursor.fetchall(), len(gold_cursor.description)
    if rows == gold:
        return "match"
    values = Counter(_value(v) for row in rows for v in row)
    if len(rows) != len(gold) or width != gold_width or values != Counter(_value(v) for row in gold for v in row):
        return "mismatch"
    return None
