from hypothesis import given, settings
from hypothesis import strategies as st

from deepretrieval_trainer.rewriting.answer import MAX_QUERY_CHARS, Rewrite, parse_answer


def test_canonical_format():
    parsed = parse_answer('<think>add synonyms</think>\n<answer>{"query": "vitamin D fracture elderly"}</answer>')
    assert parsed == Rewrite("vitamin D fracture elderly", True, None, has_think=True, is_json=True)
    assert parsed.well_formed


def test_extra_text_around_tags():
    parsed = parse_answer('Sure! <think>x</think> blah <answer> {"query": "a b"} </answer> hope this helps')
    assert parsed.ok and parsed.query == "a b"


def test_code_fence_and_trailing_comma():
    text = '<think>t</think><answer>\n```json\n{"query": "heart attack aspirin",}\n```\n</answer>'
    parsed = parse_answer(text)
    assert parsed.ok and parsed.query == "heart attack aspirin" and parsed.is_json


def test_missing_think_is_parsed_but_not_well_formed():
    parsed = parse_answer('<answer>{"query": "q"}</answer>')
    assert parsed.ok and parsed.query == "q"
    assert not parsed.has_think and not parsed.well_formed


def test_require_think():
    parsed = parse_answer('<answer>{"query": "q"}</answer>', require_think=True)
    assert not parsed.ok and "think" in parsed.reason


def test_missing_closing_answer_tag_still_parses():
    parsed = parse_answer('<think>t</think><answer>{"query": "unterminated"}')
    assert parsed.ok and parsed.query == "unterminated"


def test_single_quotes_and_escaped_quotes():
    assert parse_answer("<answer>{'query': 'single quoted'}</answer>").query == "single quoted"
    parsed = parse_answer('<answer>{"query": "\\"heart attack\\" AND aspirin"}</answer>')
    assert parsed.query == '"heart attack" AND aspirin'


def test_bare_text_answer_is_accepted_but_not_json():
    parsed = parse_answer("<think>t</think><answer>plain words</answer>")
    assert parsed.ok and parsed.query == "plain words" and not parsed.is_json


def test_whitespace_is_normalized():
    assert parse_answer('<answer>{"query": "  a \n\t b  "}</answer>').query == "a b"


def test_think_content_does_not_leak_an_answer():
    parsed = parse_answer('<think>maybe <answer>{"query": "inside"}</answer></think>no answer here')
    assert not parsed.ok


def test_rejections_have_reasons():
    cases = {
        "no tags at all": "no <answer>",
        "<answer></answer>": "empty <answer>",
        '<answer>{"query": ""}</answer>': "empty",
        '<answer>{"q": "x"}</answer>': '"query"',
        '<answer>{"query": 3}</answer>': '"query"',
        f'<answer>{{"query": "{"x" * (MAX_QUERY_CHARS + 1)}"}}</answer>': "limit",
    }
    for text, expected in cases.items():
        parsed = parse_answer(text)
        assert not parsed.ok and parsed.query is None, text
        assert expected in parsed.reason, (text, parsed.reason)


def test_non_string_input():
    for value in (None, 3, b"<answer>x</answer>", ["a"]):
        parsed = parse_answer(value)
        assert not parsed.ok and "not text" in parsed.reason


@settings(max_examples=400, deadline=None)
@given(st.text())
def test_never_raises_on_arbitrary_text(text):
    parsed = parse_answer(text)
    assert isinstance(parsed, Rewrite)
    assert parsed.ok == (parsed.query is not None)
    if parsed.ok:
        assert parsed.query.strip() and len(parsed.query) <= MAX_QUERY_CHARS
    else:
        assert parsed.reason


@settings(max_examples=300, deadline=None)
@given(st.text(), st.text(), st.text())
def test_never_raises_inside_answer_tags(before, body, after):
    parsed = parse_answer(f"{before}<think>{before}</think><answer>{body}</answer>{after}")
    assert isinstance(parsed, Rewrite)


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.characters(blacklist_categories=("Cs", "Cc")), min_size=1, max_size=200))
def test_json_round_trip_of_any_query(query):
    import json

    parsed = parse_answer(f"<think>t</think><answer>{json.dumps({'query': query})}</answer>")
    normalized = " ".join(query.split())
    if normalized:
        assert parsed.ok and parsed.query == normalized
    else:
        assert not parsed.ok
