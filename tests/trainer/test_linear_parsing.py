"""Every parser of model or user text runs in time linear in its input.

Complexity is measured as a ratio, never as a wall-clock bound: the same adversarial pattern is parsed at two
lengths ``FACTOR`` apart, and the time ratio must stay near ``FACTOR`` (linear), far below ``FACTOR**2`` (quadratic).
"""

from __future__ import annotations

import gc
import math
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from deepretrieval_trainer.literature.boolean import MAX_BOOLEAN_CHARS, BooleanQueryError, translate
from deepretrieval_trainer.retrieval.dates import normalize_date
from deepretrieval_trainer.rewriting.answer import MAX_COMPLETION_CHARS, parse_answer
from deepretrieval_trainer.sql.answer import parse_sql_answer

COMPLETION_PARSERS = {"parse_answer": parse_answer, "parse_sql_answer": parse_sql_answer}

FACTOR = 8
LIMIT = FACTOR * 2.5  # linear: ~8; quadratic: ~64
SMALL = 4_000


def _run(parser, text: str) -> None:
    try:
        parser(text)
    except (BooleanQueryError, ValueError):
        pass  # rejecting the text is fine; taking quadratic time to do it is not


def _best_seconds(parser, text: str, repeat: int) -> float:
    best = math.inf
    for _ in range(3):
        gc.collect()
        start = time.perf_counter()
        for _ in range(repeat):
            _run(parser, text)
        best = min(best, time.perf_counter() - start)
    return best


def growth(parser, unit: str, small_chars: int = SMALL, *, prefix: str = "", suffix: str = "") -> float:
    """time(unit repeated to FACTOR * small_chars) / time(unit repeated to small_chars), between prefix and suffix."""
    times = max(FACTOR, small_chars // len(unit) // FACTOR * FACTOR)  # same count modulo 2, 4, 8: same outcome
    small, large = prefix + unit * times + suffix, prefix + unit * (times * FACTOR) + suffix
    once = _best_seconds(parser, small, 1)
    repeat = max(1, min(1000, math.ceil(0.003 / max(once, 1e-7))))  # each timing spans at least ~3 ms
    ratio = math.inf
    for _ in range(3):  # a busy machine can stall one timing; a quadratic parser is slow in every try
        ratio = min(ratio, _best_seconds(parser, large, repeat) / _best_seconds(parser, small, repeat))
        if ratio < LIMIT:
            break
    return ratio


ANSWER_PATTERNS = {  # (prefix, repeated unit, suffix)
    "whitespace run in the answer": ("<answer>x", " ", "x</answer>"),
    "whitespace run in a JSON answer": ('<answer>{"query": "x', " ", 'x"}'),
    "whitespace run before a fence": ("<answer>```json", " ", "x"),
    "think block never closed": ("<think>", "x", "<answer>q</answer>"),
    "repeated <think>": "<think>",
    "repeated </think>": "</think>",
    "think blocks": "<think>a</think>",
    "repeated <answer>": "<answer>",
    "whitespace in the answer": "<answer>" + " ",
    "unclosed query values": '{"query": "',
    "unclosed single-quoted values": "{'query': '",
    "escaped quotes": '{"query": "\\"',
    "code fences": "``` ",
    "commas and spaces": ",  ",
    "nested brackets": "[",
    "nested objects": '{"query":',
}
ANSWER_FRAGMENTS = ["<think>", "</think>", "<answer>", "</answer>", "```", '"query"', "'query'", ":", '"', "'",
                    "\\", ",", " ", "\n", "{", "}", "[", "]", "x", "json"]
BOOLEAN_PATTERNS = {
    "nested parentheses": "(",
    "closing parentheses": ")",
    "alternating AND/OR": "a AND b OR ",
    "phrases": '"heart attack" ',
    "tags": "a[tiab] ",
    "unclosed tags": "[",
    "wildcards": "cardio* OR ",
    "NOT chains": "a NOT ",
}
BOOLEAN_FRAGMENTS = ["(", ")", " ", "a", "AND", "OR", "NOT", '"', "[", "]", "tiab", "mh", "*", "au", ":"]


def test_the_measure_catches_quadratic_work():
    def quadratic(text: str) -> None:
        for i in range(0, len(text), 8):
            text.find("never there", i)  # rescans the rest of the text from every eighth position

    assert growth(quadratic, "x") > LIMIT


@pytest.mark.parametrize("parser", COMPLETION_PARSERS.values(), ids=COMPLETION_PARSERS.keys())
@pytest.mark.parametrize("pattern", ANSWER_PATTERNS.values(), ids=ANSWER_PATTERNS.keys())
def test_parse_answer_is_linear(pattern, parser):
    prefix, unit, suffix = pattern if isinstance(pattern, tuple) else ("", pattern, "")
    assert growth(parser, unit, prefix=prefix, suffix=suffix) < LIMIT


@pytest.mark.parametrize("unit", BOOLEAN_PATTERNS.values(), ids=BOOLEAN_PATTERNS.keys())
def test_boolean_translation_is_linear(unit):
    assert growth(translate, unit, small_chars=1_000) < LIMIT


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.sampled_from(ANSWER_FRAGMENTS + ["sql", "SQL:", "select"]), min_size=1, max_size=6).map("".join),
       st.sampled_from(sorted(COMPLETION_PARSERS)))
def test_parse_answer_is_linear_on_any_repeated_pattern(unit, parser):
    assert growth(COMPLETION_PARSERS[parser], unit) < LIMIT


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.sampled_from(BOOLEAN_FRAGMENTS), min_size=1, max_size=6).map(" ".join))
def test_boolean_translation_is_linear_on_any_repeated_pattern(unit):
    assert growth(translate, unit, small_chars=1_000) < LIMIT


def test_dates_are_linear():
    assert growth(normalize_date, "1") < LIMIT


def test_the_reported_completion_is_refused_at_once():
    parsed = parse_answer("<think>" * 30_000 + "<answer>q</answer>")
    assert not parsed.ok and "limit" in parsed.reason and str(MAX_COMPLETION_CHARS) in parsed.reason


def test_input_caps_come_before_parsing():
    with pytest.raises(BooleanQueryError, match="limit"):
        translate("a " * MAX_BOOLEAN_CHARS)
    with pytest.raises(ValueError, match="not a date"):
        normalize_date("1" * 10_000_000)
