import dataclasses

import pytest

from deepretrieval_trainer.rewriting.answer import parse_answer
from deepretrieval_trainer.rewriting.tasks import (
    HIT_RANK_TIERS,
    RECALL_TIERS,
    TASKS,
    Task,
    Tiers,
    format_pico,
    get_task,
)
from deepretrieval_trainer.sql.answer import parse_sql_answer


def test_every_task_asks_for_the_answer_format_and_its_example_parses():
    assert set(TASKS) == {"retrieval", "dense", "qa", "literature", "sql", "steer"}
    for task in TASKS.values():
        query = {"P": "adults", "I": "statins"} if task.name == "literature" else "some query"
        messages = task.messages(query, [] if task.feedback is not None else None)
        assert messages[0]["role"] == "system" and "<answer>" in messages[0]["content"]
        assert messages[-1]["role"] == "user"
        for _, example_answer in task.examples:
            if task.name == "sql":  # the sql task answers SQL, not JSON
                assert parse_sql_answer(example_answer).well_formed
            else:  # the worked example has the trained format: what the format reward pays
                parsed = parse_answer(example_answer, key=task.answer_key)
                assert task.well_formed(parsed), (task.name, parsed)


def test_paper_recall_tiers():
    expected = {0.7: 5, 0.69: 4, 0.5: 4, 0.4: 3, 0.3: 1, 0.1: 0.5, 0.05: 0.1, 0.049: -3.5, 0.0: -3.5, 1.0: 5}
    for recall, reward in expected.items():
        assert RECALL_TIERS(recall) == reward, recall


def test_paper_hit_rank_tiers():
    expected = {1: 5, 5: 5, 6: 4, 20: 4, 50: 2, 100: 1, 1000: 0.5, 1001: -3.5}
    for rank, reward in expected.items():
        assert HIT_RANK_TIERS(rank) == reward, rank


def test_tiers_must_be_ordered():
    with pytest.raises(ValueError, match="descending"):
        Tiers(((0.1, 1.0), (0.5, 2.0)), floor=0)


def test_custom_template_and_errors():
    task = dataclasses.replace(get_task("retrieval"), user="Search for: {query}", examples=())
    assert task.messages("x")[-1]["content"] == "Search for: x"
    with pytest.raises(ValueError, match=r"must contain '\{query\}'"):
        Task("t", "system", user="no placeholder")
    with pytest.raises(ValueError, match="unknown task 'nope'"):
        get_task("nope")
    with pytest.raises(ValueError, match="non-empty"):
        task.messages("   ")


def test_pico_formatting():
    assert format_pico({"P": "older women", "I": "vitamin D", "C": "", "O": "fractures"}) == (
        "Population: older women\nIntervention: vitamin D\nOutcome: fractures"
    )
    assert format_pico({"topic": "statins"}) == "Topic: statins"
    with pytest.raises(ValueError, match="at least one"):
        format_pico({"P": " "})
    with pytest.raises(ValueError, match="unknown PICO keys"):
        format_pico({"X": "a"})


def _schema_tables(prompt: str) -> dict[str, str]:
    """CREATE TABLE statements from a worked example's schema lines (``table(col TYPE [primary key], ...)``)."""
    tables = {}
    for line in prompt.splitlines()[1:]:
        if "(" in line and not line.startswith(("Foreign keys", "Question")):
            name, columns = line.split("(", 1)
            tables[name] = f"CREATE TABLE {name} ({columns.rstrip(')')})"
    return tables


def test_every_sql_worked_example_runs_on_its_own_schema():
    import sqlite3

    from deepretrieval_trainer.rewriting.tasks import SQL_EXAMPLE_POOL
    from deepretrieval_trainer.sql.guard import check_sql

    assert len(SQL_EXAMPLE_POOL) >= 4 and TASKS["sql"].examples == SQL_EXAMPLE_POOL[:len(TASKS["sql"].examples)]
    for prompt, answer in SQL_EXAMPLE_POOL:
        parsed = parse_sql_answer(answer)
        assert parsed.ok, (answer, parsed.reason)
        sql = check_sql(parsed.sql, dialect="sqlite").sql
        connection = sqlite3.connect(":memory:")
        for statement in _schema_tables(prompt).values():
            connection.execute(statement)
        connection.execute(sql).fetchall()  # every table and column it names exists in the schema it is shown with


def test_sql_task_shows_the_first_shots_of_the_pool_and_refuses_other_counts():
    from deepretrieval_trainer.rewriting.tasks import SQL_EXAMPLE_POOL, sql_task

    for shots in range(1, len(SQL_EXAMPLE_POOL) + 1):
        messages = sql_task(shots).messages("Database: d (sqlite)\nt(a INT)\nQuestion: how many?")
        assert len(messages) == 2 + 2 * shots
        assert [m["content"] for m in messages[2:-1:2]] == [answer for _, answer in SQL_EXAMPLE_POOL[:shots]]
    for bad in (0, len(SQL_EXAMPLE_POOL) + 1, True, "2"):
        with pytest.raises(ValueError, match="worked examples"):
            sql_task(bad)
