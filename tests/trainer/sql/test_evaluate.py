import json

import pytest

from deepretrieval_trainer.cli import main
from deepretrieval_trainer.sql.evaluate import (
    SQLReport, SQLSource, evaluate_sql, exact_mcnemar, paired_test, parse_sql_source,
)
from deepretrieval_trainer.sql.spider import load_sql_examples
from deepretrieval_trainer.sql.writer import SQLWriter
from tests.conftest import ScriptedRewriter


def test_exact_mcnemar_matches_the_binomial_test():
    from scipy.stats import binomtest

    for first, second in [(10, 2), (3, 3), (0, 5), (17, 9), (1, 0)]:
        expected = binomtest(first, first + second, 0.5).pvalue
        assert exact_mcnemar(first, second) == pytest.approx(expected)
    assert exact_mcnemar(0, 0) == 1.0


def test_gold_scores_100_percent_on_every_dev_database_and_a_scripted_writer_is_compared(spider_dir, tmp_path):
    dev = load_sql_examples(spider_dir, "dev")
    count = SQLWriter(backend=ScriptedRewriter("x</think><answer>SELECT count(*) FROM singer</answer>"))
    report = evaluate_sql(dev, [parse_sql_source("gold"), SQLSource("count", count, "scripted")], out_dir=tmp_path,
                          progress=False)
    assert all(report.accuracy("gold", db) == 1.0 for db in dev.databases)
    right = [o for o in report.sources["count"] if o.correct]
    assert right and {o.db_id for o in right} <= {"concert_singer", "singer"}  # the two with a singer table
    test = report.tests[0]
    assert (test.first, test.second, test.second_only) == ("gold", "count", 0)
    assert test.first_only == len(dev.examples) - len(right) and test.p_value < 1e-6
    assert (tmp_path / "generations" / "count.jsonl").is_file()  # answers are cached under the source identity


def test_paired_test_refuses_different_examples():
    report = SQLReport("c", "dev", [], {"a": [], "b": []})
    assert paired_test(report, "a", "b").p_value == 1.0


def test_cli_eval_task_sql_gold(spider_dir, tmp_path, capsys):
    code = main(["eval", "--task", "sql", "--data", str(spider_dir), "--split", "dev", "--source", "gold",
                 "--out", str(tmp_path), "--no-progress"])
    assert code == 0
    out = capsys.readouterr().out
    assert "224 examples on 8 databases" in out and "gold    100.0%" in out
    summary = json.loads((tmp_path / "results.json").read_text())["summary"]["gold"]
    assert summary["accuracy"] == 1.0 and set(summary["per_database"]) == set(load_sql_examples(spider_dir, "dev").databases)


def test_sources_that_mean_nothing_for_sql_are_refused():
    with pytest.raises(ValueError, match="no meaning for text-to-SQL"):
        parse_sql_source("raw")


def test_best_step_takes_the_highest_accuracy_and_the_earliest_on_ties():
    from deepretrieval_trainer.sql.evaluate import best_step

    assert best_step({0: 0.02, 5: 0.04, 10: 0.08, 15: 0.08, 20: 0.0}) == 10
    assert best_step({0: 0.04, 5: 0.04, 10: 0.02}) == 0  # a checkpoint must beat the base model to be chosen
    assert best_step({30: 0.1, 10: 0.1}) == 10
    with pytest.raises(ValueError, match="no steps"):
        best_step({})


def test_choose_checkpoint_needs_checkpoints(spider_dir):
    from deepretrieval_trainer.sql.evaluate import choose_checkpoint

    with pytest.raises(ValueError, match="save_total_limit"):
        choose_checkpoint(load_sql_examples(spider_dir, "train", limit=2), [], out_dir=None)
