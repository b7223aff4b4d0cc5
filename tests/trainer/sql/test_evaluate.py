import json

import pytest

from deepretrieval_trainer.cli import main
from deepretrieval_trainer.sql.evaluate import (
    SQLReport,
    SQLSource,
    evaluate_sql,
    exact_mcnemar,
    paired_test,
    parse_sql_source,
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
    # collapsed steps are not eligible; the base model (step 0) always is
    assert best_step({0: 0.0, 35: 0.14, 40: 0.14, 55: 0.24}, excluded=[55]) == 35
    assert best_step({0: 0.02, 5: 0.3}, excluded=[5, 0]) == 0
    assert best_step({0: 0.5, 5: 0.3}, excluded=[5, 0]) == 0


def test_the_template_cutoff_is_never_below_the_gold_sqls_own_share():
    from deepretrieval_trainer.sql.evaluate import CheckpointChoice

    report = SQLReport("c", "train", [], {})
    shares = {0: 0.9, 5: 0.55, 10: 0.65, 15: 0.45}
    # questions the gold SQL itself answers with one shape 60% of the time: 55% is no sign of a template
    choice = CheckpointChoice(0, None, {}, report, shares, 0.5, gold_template_share=0.6)
    assert choice.cutoff == 0.6 and choice.collapsed == [10]  # the base model (step 0) is never left out
    assert "at most 60%" in choice.to_dict()["rule"]
    assert CheckpointChoice(0, None, {}, report, shares, 0.5, gold_template_share=0.3).collapsed == [5, 10]


def test_query_shape_blanks_names_and_literals():
    from deepretrieval_trainer.sql.evaluate import query_shape

    count = query_shape("SELECT count(*) FROM singer")
    assert count == query_shape("select COUNT(*) from stadium;") == query_shape('SELECT count(*) FROM "Concert"')
    filtered = query_shape("SELECT name FROM teacher WHERE age = 32")
    assert filtered == query_shape("SELECT Hometown FROM people WHERE Name = 'Ann'") != count
    assert query_shape("SELECT name FROM teacher ORDER BY age") != filtered
    assert query_shape("SELEC oops ((") == "selec oops (("  # unparsable SQL is its own shape
    # a double-quoted value (a name to sqlglot, a string to SQLite when no column has it) is the same shape
    assert query_shape('SELECT a FROM t WHERE b = "Kyle"') == query_shape("SELECT a FROM t WHERE b = 'Kyle'")
    deep = "SELECT " + "(" * 46 + "1" + ")" * 46  # as deep as check_sql accepts
    assert query_shape(deep).startswith("select")


def test_choice_leaves_out_checkpoints_collapsed_to_a_template(spider_dir, tmp_path, monkeypatch):
    import deepretrieval_trainer.sql.evaluate as evaluate
    from deepretrieval_trainer.sql.train import choice_reason

    validation = load_sql_examples(spider_dir, "train", databases=["student_transcripts_tracking"],
                                   max_hardness="easy", drop_uninformative=True)

    class Cycle(ScriptedRewriter):  # a varied writer: four query shapes in turn, one right on a count question
        shapes = ["SELECT count(*) FROM Courses", "SELECT course_name FROM Courses",
                  "SELECT course_name FROM Courses ORDER BY course_name",
                  "SELECT course_name FROM Courses WHERE course_id = 1"]

        def _complete(self, conversations):
            self.calls.append(conversations)
            done = sum(len(c) for c in self.calls)
            return [f"</think><answer>{self.shapes[(done - i) % 4]}</answer>" for i in range(len(conversations))]

    count = "</think><answer>SELECT count(*) FROM Courses</answer>"
    writers = {"base": lambda: ScriptedRewriter("</think><answer>no SQL</answer>"), "step-5": Cycle,
               "step-10": lambda: ScriptedRewriter(count)}  # step 10: one template for every question

    def scripted(spec, **_):  # the real parse for the names; a scripted backend instead of the model
        name = spec.split("=", 1)[0]
        return SQLSource(name, SQLWriter(backend=writers[name]()), "")

    monkeypatch.setattr(evaluate, "parse_sql_source", scripted)
    folders = [tmp_path / "checkpoint-10", tmp_path / "checkpoint-5"]
    choice = evaluate.choose_checkpoint(validation, folders, out_dir=None)
    assert choice.template_share[10] == 1.0 and choice.template_share[5] < 0.5 and choice.template_share[0] == 0
    assert choice.accuracy[10] > choice.accuracy[5] > 0  # the count template is right more often on this set...
    assert choice.collapsed == [10] and (choice.step, choice.checkpoint) == (5, tmp_path / "checkpoint-5")  # ...yet
    assert 0 < choice.gold_template_share < 0.5 and choice.cutoff == 0.5
    summary = choice.to_dict()
    assert summary["collapsed"] == [10] and "at most 50%" in summary["rule"]
    assert summary["filters"]["dropped_uninformative"] == 0 and summary["chosen_step"] == 5
    # with every checkpoint collapsed, the base model is chosen, and the reason says so
    writers["step-5"] = lambda: ScriptedRewriter(count)
    choice = evaluate.choose_checkpoint(validation, folders, out_dir=None)
    assert (choice.step, choice.checkpoint, choice.collapsed) == (0, None, [5, 10])
    assert "collapsed to a template" in choice_reason(choice)
    with pytest.raises(ValueError, match="max_template_share=0"):
        evaluate.choose_checkpoint(validation, folders, out_dir=None, max_template_share=0)


def test_choose_checkpoint_needs_checkpoints(spider_dir):
    from deepretrieval_trainer.sql.evaluate import choose_checkpoint

    with pytest.raises(ValueError, match="save_total_limit"):
        choose_checkpoint(load_sql_examples(spider_dir, "train", limit=2), [], out_dir=None)
