"""A short real GRPO run of the embedded model on Spider's training databases (slow): the run folder, the adapter,
the execution reward's figures in metrics.jsonl, and the trained adapter evaluated on held-out databases."""

from __future__ import annotations

import json

import pytest

from deepretrieval_trainer.common.errors import ConfigError
from deepretrieval_trainer.sql.evaluate import evaluate_sql, parse_sql_source
from deepretrieval_trainer.sql.spider import load_sql_examples
from deepretrieval_trainer.sql.train import train_sql
from deepretrieval_trainer.training.config import TrainConfig


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
    assert report.accuracy("gold") == 1.0 and len(report.sources["trained"]) == 3
    assert all(o.status in ("match", "mismatch", "failed", "no_answer") for o in report.sources["trained"])
