"""Every config field and data cell is type-checked where it enters.

The config checks are derived from the dataclasses' annotations, so these tests walk the fields too: a field added
later is covered by the same test without a line here.
"""

from __future__ import annotations

import dataclasses
import json
import math
import typing

import pytest

from deepretrieval_trainer.common.errors import ConfigError, DataError
from deepretrieval_trainer.common.fields import FieldTypeError, check_value
from deepretrieval_trainer.literature.dataset import load_literature
from deepretrieval_trainer.literature.http import HttpPolicy
from deepretrieval_trainer.retrieval.data import load_beir
from deepretrieval_trainer.rewriting.openai_compat import EndpointConfig
from deepretrieval_trainer.training.config import DataConfig, RetrieverConfig, TrainConfig


def _kind(hint):
    """The scalar type of a field (Optional[X] -> X), or None for anything else."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) in (typing.Union, getattr(__import__("types"), "UnionType")) and len(args) == 1:
        hint = args[0]
    if typing.get_origin(hint) is typing.Literal:
        return "literal"
    return hint if hint in (bool, int, float, str) else None


# the wrong values a config file or a flag can carry, per annotated type
WRONG = {bool: ["no", "false", 1], int: [2.5, "3", True], float: ["abc", math.nan, True], str: [3, ["a"]],
         "literal": ["nonsense"]}


def _wrong_cases(cls, build):
    hints = typing.get_type_hints(cls)
    cases = []
    for f in dataclasses.fields(cls):
        for value in WRONG.get(_kind(hints[f.name]), []):
            cases.append(pytest.param(build, f.name, value, id=f"{cls.__name__}.{f.name}={value!r}"))
    return cases


CASES = [
    *_wrong_cases(TrainConfig, lambda name, value: TrainConfig.from_dict({name: value})),
    *_wrong_cases(DataConfig, lambda name, value: TrainConfig.from_dict({"data": {name: value}})),
    *_wrong_cases(RetrieverConfig, lambda name, value: TrainConfig.from_dict({"retriever": {name: value}})),
    *_wrong_cases(EndpointConfig, lambda name, value: EndpointConfig(**{"model": "m", name: value})),
    *_wrong_cases(HttpPolicy, lambda name, value: HttpPolicy(**{name: value})),
]


@pytest.mark.parametrize(("build", "name", "value"), CASES)
def test_every_annotated_field_refuses_a_wrong_type_and_names_itself(build, name, value):
    with pytest.raises(ValueError) as caught:
        build(name, value)
    assert name in str(caught.value)


def test_the_walk_covers_the_fields_of_every_config():
    names = {case.values[1] for case in CASES}
    assert {"resume", "max_steps", "learning_rate", "lora_dropout", "timeout", "max_retries", "split"} <= names
    assert len(CASES) > 100


def test_the_reported_values_get_messages_that_name_the_fix(tmp_path):
    config = tmp_path / "train.yaml"
    config.write_text("resume: 'no'\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"resume='no' must be true or false; write it without quotes \(resume: false\)"):
        TrainConfig.from_yaml(config)
    with pytest.raises(ConfigError, match="lora_dropout='x' .* must be a number"):
        TrainConfig.from_dict({"lora_dropout": "x"})
    with pytest.raises(ValueError, match="timeout='abc' .* must be a number"):
        EndpointConfig(model="m", timeout="abc")
    with pytest.raises(ValueError, match="max_retries=2.5 must be a whole number"):
        EndpointConfig(model="m", max_retries=2.5)
    with pytest.raises(ConfigError, match=r"reward_tiers\[0\]\[1\]='high'"):
        TrainConfig.from_dict({"reward_tiers": [[0.5, "high"]]})


def test_right_values_are_kept_or_normalized(tmp_path):
    config = tmp_path / "train.yaml"
    config.write_text("learning_rate: 5e-4\nresume: false\nreward_tiers: [[0.5, 4], [0.1, 1]]\n", encoding="utf-8")
    loaded = TrainConfig.from_yaml(config)  # YAML 1.1 reads 5e-4 as text
    assert loaded.learning_rate == 5e-4 and loaded.resume is False
    assert loaded.reward_tiers == [[0.5, 4.0], [0.1, 1.0]] and isinstance(loaded.reward_tiers[0][1], float)
    assert EndpointConfig(model="m", timeout=5).timeout == 5.0


def test_unions_and_literals():
    hint = typing.Union[str, list[str]]
    assert check_value("x", "all-linear", hint) == "all-linear" and check_value("x", ["q"], hint) == ["q"]
    with pytest.raises(FieldTypeError, match="must be text or a list of text"):
        check_value("x", 3, hint)
    with pytest.raises(FieldTypeError, match=r"choose one of \['a', 'b'\]"):
        check_value("x", "c", typing.Literal["a", "b"])
    with pytest.raises(FieldTypeError, match=r"\*\*\*"):  # a secret's value is never shown
        check_value("api_key", 3, str)


def _collection(root, *, corpus=b'{"_id": "d1", "text": "one"}\n{"_id": "d2", "text": "two"}\n',
                queries=b'{"_id": "q1", "text": "query"}\n', qrels=b"q1\td1\t1\n"):
    (root / "qrels").mkdir(parents=True)
    (root / "corpus.jsonl").write_bytes(corpus)
    (root / "queries.jsonl").write_bytes(queries)
    (root / "qrels" / "test.tsv").write_bytes(qrels)
    return root


@pytest.mark.parametrize("grade", ["nan", "inf", "-inf"])
def test_a_non_finite_grade_is_refused(tmp_path, grade):
    with pytest.raises(DataError, match=rf"test\.tsv:2: score '{grade}' is not a finite number"):
        load_beir(_collection(tmp_path, qrels=f"q1\td1\t1\nq1\td2\t{grade}\n".encode()), "test")


def test_conflicting_duplicate_judgments_are_refused_and_equal_ones_kept(tmp_path):
    with pytest.raises(DataError, match=r"test\.tsv:3: query 'q1' grades document 'd1' 0, but line 1 graded it 1"):
        load_beir(_collection(tmp_path / "a", qrels=b"q1\td1\t1\nq1\td2\t1\nq1\td1\t0\n"), "test")
    assert load_beir(_collection(tmp_path / "b", qrels=b"q1\td1\t1\nq1\td1\t1\n"), "test").qrels == {"q1": {"d1": 1.0}}


@pytest.mark.parametrize("part", ["corpus", "queries", "qrels"])
def test_non_utf8_bytes_name_the_file_and_line(tmp_path, part):
    files = {"corpus": b'{"_id": "d1", "text": "one"}\n{"_id": "d2", "text": "caf\xe9"}\n',
             "queries": b'{"_id": "q1", "text": "query"}\n{"_id": "q2", "text": "\xff"}\n',
             "qrels": b"q1\td1\t1\nq1\td\xe92\t1\n"}
    root = _collection(tmp_path, **{part: files[part]})
    with pytest.raises(DataError, match=r":2: not UTF-8 text \(byte 0x(e9|ff) at column \d+\); save the file as UTF-8"):
        load_beir(root, "test")


@pytest.mark.parametrize(("part", "line", "message"), [
    ("corpus", b'{"_id": "d1", "text": ["a", "list"]}\n', r"corpus\.jsonl:1: 'text' is list"),
    ("corpus", b'{"_id": "d1", "title": 3, "text": "x"}\n', r"corpus\.jsonl:1: 'title' is int"),
    ("queries", b'{"_id": "q1", "text": {"nested": 1}}\n', r"queries\.jsonl:1: 'text' is dict"),
    ("queries", b'{"_id": 1.5, "text": "x"}\n', r"queries\.jsonl:1: '_id' is float"),
])
def test_json_cells_must_have_their_types(tmp_path, part, line, message):
    with pytest.raises(DataError, match=message):
        load_beir(_collection(tmp_path, **{part: line}), "test")


def test_non_utf8_literature_and_config_files(tmp_path):
    literature = tmp_path / "lit.jsonl"
    literature.write_bytes(json.dumps({"id": "1", "topic": "x", "relevant": ["2"]}).encode() + b"\n\xff\n")
    with pytest.raises(DataError, match=r"lit\.jsonl:2: not UTF-8"):
        load_literature(literature)
    config = tmp_path / "train.yaml"
    config.write_bytes(b"task: caf\xe9\n")
    with pytest.raises(ConfigError, match=r"train\.yaml: not UTF-8"):
        TrainConfig.from_yaml(config)


def test_an_annotation_only_type_checkers_can_resolve_leaves_the_other_fields_checked():
    from deepretrieval_trainer.common.fields import check_fields

    @dataclasses.dataclass
    class Settings:
        retries: int = 1
        client: "NotImportedHere | None" = None  # noqa: F821 - imported under TYPE_CHECKING in real code

    check_fields(Settings(client=object()))
    with pytest.raises(FieldTypeError, match="retries=2.5 must be a whole number"):
        check_fields(Settings(retries=2.5))


def test_the_cli_reports_a_wrong_type_in_one_line_before_anything_loads(tmp_path, capsys, data_dir):
    from deepretrieval_trainer.cli import main

    config = tmp_path / "train.yaml"
    config.write_text(f"resume: 'no'\ndata:\n  path: {data_dir / 'adi'}\n  split: test\n", encoding="utf-8")
    assert main(["train", "--config", str(config), "--model", "/nonexistent/model"]) == 2
    err = capsys.readouterr().err
    assert err.strip() == "error: resume='no' must be true or false; write it without quotes (resume: false)"


# -- error messages render no more of a value than they show ------------------------------------------------------


SHOWN = 80  # characters of a value a message shows (fields.SHOWN_CHARS), then "..."


class _Leaf:
    """A value whose repr counts how often it is rendered, and refuses to be rendered more than ``limit`` times."""

    def __init__(self, limit: int) -> None:
        self.renders, self.limit = 0, limit

    def __repr__(self) -> str:
        self.renders += 1
        if self.renders > self.limit:
            raise AssertionError(f"rendered {self.renders} times: the whole value is being rendered")
        return "leaf"


def _shared_tree(leaf, depth: int, breadth: int):
    """``breadth ** depth`` references to ``leaf`` in ``depth`` nested lists, each level one shared list (what YAML
    aliases load as): cheap to hold, astronomically long to render whole."""
    tree = [leaf]
    for _ in range(depth):
        tree = [tree] * breadth
    return tree


@pytest.mark.parametrize(("depth", "breadth"), [(64, 2), (20, 9), (3, 10_000), (1, 1_000_000)])
def test_a_message_renders_at_most_what_it_shows_of_a_shared_tree(depth, breadth):
    from deepretrieval_trainer.common.fields import shown

    leaf = _Leaf(limit=SHOWN)
    tree = _shared_tree(leaf, depth, breadth)
    text = shown("model", tree)
    assert len(text) == SHOWN + len("...") and text.endswith("...") and text.startswith("[[")
    with pytest.raises(FieldTypeError, match=r"model=\[.*\.\.\. \(list\) must be text"):
        check_value("model", tree, str)
    with pytest.raises(ConfigError, match=r"model=\[.*\.\.\. \(list\) must be text"):
        TrainConfig(model=tree)
    assert leaf.renders <= SHOWN  # each render adds characters: the walk stopped where the text was cut


def test_integers_past_pythons_digit_limit_are_described_not_rendered():
    from deepretrieval_trainer.common.fields import shown

    huge = 10 ** 5000  # repr() of it raises ValueError (Python's integer digit limit)
    assert shown("max_steps", huge) == "<an integer of about 5001 digits>"
    with pytest.raises(FieldTypeError, match=r"learning_rate=<an integer of about 5001 digits> must be a finite"):
        check_value("learning_rate", huge, float)  # float() of it raised OverflowError
    with pytest.raises(ConfigError, match=r"max_steps=<an integer of about 5001 digits> must be a positive integer"):
        TrainConfig(max_steps=-huge)
    with pytest.raises(ConfigError, match=r"reward_tiers\[0\]\[0\]=<an integer of about 5001 digits> must be a finite"):
        TrainConfig(reward_tiers=[[huge, 1]])


def test_secrets_nested_in_a_shown_value_are_masked():
    from deepretrieval_trainer.common.fields import shown

    assert shown("retriever", {"url": "http://x", "api_key": "sk-live-123"}) == "{'url': 'http://x', 'api_key': ***}"
    @dataclasses.dataclass
    class Server:
        url: str
        api_key: str

    assert shown("server", Server("http://x", "sk-live-123")) == "Server(url='http://x', api_key=***)"


def test_a_long_number_like_text_is_refused_without_a_quadratic_match():
    """A float field's text is matched as a number only when short: the pattern backtracks quadratically over a long
    run of digits (100,000 of them took minutes)."""
    from tests.trainer.bounded import run_bounded

    run = run_bounded('check_value("learning_rate", "1" * 100_000 + "x", float)', timeout_s=60, setup=(
        "from deepretrieval_trainer.common.fields import check_value"))
    assert run["error"] == "FieldTypeError" and "learning_rate='111" in run["message"], run
    assert check_value("learning_rate", " 5e-4 ", float) == 5e-4
