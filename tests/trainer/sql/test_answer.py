import pytest

from deepretrieval_trainer.sql.answer import parse_sql_answer

PARSED = {
    "<think>count them</think>\n<answer>SELECT count(*) FROM singer</answer>": "SELECT count(*) FROM singer",
    "<think>x</think><answer>SELECT 1;</answer>": "SELECT 1",
    "<think>x</think><answer>```sql\nSELECT name FROM t WHERE a = 'x  y'\n```</answer>": "SELECT name FROM t WHERE a = 'x  y'",
    '<answer>{"sql": "SELECT 2"}</answer>': "SELECT 2",
    '<answer>{"query": "SELECT 3"}</answer>': "SELECT 3",
    "<answer>SQLQuery: SELECT 4": "SELECT 4",
    "preamble <think>a</think> text <answer>SELECT 5</answer> trailing": "SELECT 5",
}


@pytest.mark.parametrize("text", list(PARSED))
def test_tolerated_shapes(text):
    answer = parse_sql_answer(text)
    assert answer.ok and answer.sql == PARSED[text]


@pytest.mark.parametrize("text, reason", [
    ("SELECT 1", "no <answer> tag"),
    ("<think>a</think><answer> </answer>", "empty <answer>"),
    (None, "not text"),
    ("<answer>" + "x" * 200_000, "characters (limit"),
])
def test_failures_say_why_and_never_raise(text, reason):
    answer = parse_sql_answer(text)
    assert not answer.ok and reason in answer.reason


def test_require_think_is_the_trained_format():
    assert not parse_sql_answer("<answer>SELECT 1</answer>", require_think=True).ok
    assert parse_sql_answer("<think>t</think><answer>SELECT 1</answer>", require_think=True).well_formed
