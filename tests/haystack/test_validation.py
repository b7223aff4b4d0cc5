"""The Haystack components type-check every init parameter, from Python, from_dict and pipeline YAML alike, and a
malformed retriever pipeline YAML is one clear error naming the file."""

from __future__ import annotations

import pytest
from haystack import Pipeline
from haystack.core.errors import DeserializationError

from deepretrieval_trainer.common.errors import ConfigError
from deepretrieval_trainer.training.config import RetrieverConfig
from deepretrieval_trainer.training.retrievers import build_search
from haystack_deepretrieval import DeepRetrievalQueryRewriter, HaystackSearch
from haystack_deepretrieval.literature import LiteratureSearchRetriever

REWRITER = "haystack_deepretrieval.component.DeepRetrievalQueryRewriter"
WRONG = {  # parameter -> (wrong value, what the message says)
    "strict": ("false", "must be true or false; write it without quotes (strict: false)"),
    "include_original": ("yes", "must be true or false"),
    "timeout": ("abc", "must be a number"),
    "max_retries": (2.5, "must be a whole number"),
    "max_tokens": ("128", "must be a whole number"),
    "temperature": ([0.1], "must be a number"),
    "backend": ("remote", "choose one of ['local', 'openai']"),
}


@pytest.mark.parametrize("name", WRONG)
def test_rewriter_parameters_are_type_checked_from_python_and_from_dict(name):
    value, message = WRONG[name]
    with pytest.raises(ValueError, match=f"{name}=.*{message}".replace("(", r"\(").replace(")", r"\)")
                       .replace("[", r"\[").replace("]", r"\]")):
        DeepRetrievalQueryRewriter(**{name: value})
    with pytest.raises(ValueError, match=name):
        DeepRetrievalQueryRewriter.from_dict({"type": REWRITER, "init_parameters": {name: value}})


def test_pipeline_yaml_with_a_quoted_boolean_is_refused():
    pipe = Pipeline()
    pipe.add_component("rewriter", DeepRetrievalQueryRewriter())
    text = pipe.dumps().replace("strict: false", "strict: 'false'")
    assert "strict: 'false'" in text
    with pytest.raises(DeserializationError, match="strict='false' must be true or false"):
        Pipeline.loads(text)


def test_literature_component_parameters_are_type_checked():
    with pytest.raises(ValueError, match="max_retries=2.5 must be a whole number"):
        LiteratureSearchRetriever(engine="pubmed", max_retries=2.5)
    with pytest.raises(ValueError, match="timeout='soon'"):
        LiteratureSearchRetriever(engine="pubmed", timeout="soon")


@pytest.mark.parametrize("text", ["components: [\n", "components:\n  r:\n    type: nowhere.Retriever\n", "- a\n- b\n"])
def test_a_malformed_pipeline_yaml_is_one_error_naming_the_file(tmp_path, text):
    file = tmp_path / "retriever.yaml"
    file.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError, match=r"retriever\.yaml: not a loadable Haystack pipeline") as caught:
        HaystackSearch.from_yaml(file)
    assert caught.value.__cause__ is None and caught.value.__suppress_context__  # no chained traceback
    with pytest.raises(ConfigError, match=r"retriever\.yaml"):
        build_search(RetrieverConfig(framework="haystack", kind="pipeline", path=str(file)), "")


def test_cli_reports_a_malformed_pipeline_in_one_line(tmp_path, capsys, data_dir):
    from deepretrieval_trainer.cli import main

    file = tmp_path / "retriever.yaml"
    file.write_text("components: [\n", encoding="utf-8")
    code = main(["train", "--data-path", str(data_dir / "adi"), "--data-split", "test", "--retriever-framework",
                 "haystack", "--retriever-kind", "pipeline", "--retriever-path", str(file), "--run-dir",
                 str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2 and "retriever.yaml: not a loadable Haystack pipeline" in err
    assert "Traceback" not in err and len(err.splitlines()) <= 3


def _pipeline_bomb(depth: int, breadth: int, leaf: str) -> str:
    """A real dumped retriever pipeline whose retriever's ``filters`` is nested aliases (``depth`` levels of
    ``breadth``): Haystack deep copies what it loads, visiting every repetition."""
    from haystack.components.retrievers.in_memory import InMemoryBM25Retriever
    from haystack.document_stores.in_memory import InMemoryDocumentStore

    from tests.trainer.test_yaml_files import alias_bomb

    pipe = Pipeline()
    pipe.add_component("retriever", InMemoryBM25Retriever(document_store=InMemoryDocumentStore()))
    text = pipe.dumps()
    assert "      filters: null\n" in text
    anchors = alias_bomb(depth, breadth, leaf=leaf).rsplit("\n", 2)[0] + "\n"  # the anchors, without the last key
    return anchors + text.replace("      filters: null\n", f"      filters: *a{depth}\n")


def test_a_pipeline_yaml_whose_aliases_multiply_is_refused_in_bounded_memory(tmp_path, data_dir):
    """A 542-byte pipeline file of nested aliases ran Haystack's deep copy past 15 s and 800 MB; now it is one
    ConfigError naming the file, through HaystackSearch.from_yaml, RetrieverConfig and `deepretrieval train`."""
    from tests.trainer.bounded import run_bounded
    from tests.trainer.test_yaml_files import LEAF, SHAPES

    files = []
    for depth, breadth in SHAPES:
        file = tmp_path / f"retriever-{depth}x{breadth}.yaml"
        file.write_text(_pipeline_bomb(depth, breadth, LEAF), encoding="utf-8")
        files.append(str(file))
    adi = str(data_dir / "adi")
    run = run_bounded(f"[load(file) for file in {files!r}]", setup=f"""
from deepretrieval_trainer.cli import main
from deepretrieval_trainer.training.config import RetrieverConfig
from deepretrieval_trainer.training.retrievers import build_search
from haystack_deepretrieval import HaystackSearch

def outcome(call):
    try:
        call()
    except Exception as exc:
        return [type(exc).__name__, str(exc)]
    return ["loaded", ""]

def load(file):
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main(["train", "--data-path", {adi!r}, "--data-split", "test", "--retriever-framework", "haystack",
                     "--retriever-kind", "pipeline", "--retriever-path", file, "--run-dir", file + ".run"])
    return [outcome(lambda: HaystackSearch.from_yaml(file)),
            outcome(lambda: build_search(RetrieverConfig(framework="haystack", kind="pipeline", path=file), "")),
            [f"exit {{code}}", err.getvalue()]]
""")
    assert run["error"] is None, run
    for file, outcomes in zip(files, run["result"], strict=True):
        for (outcome, message), expected in zip(outcomes, ["ConfigError", "ConfigError", "exit 2"], strict=True):
            assert outcome == expected, (file, outcome, message[-500:])
            assert f"{file}: its YAML aliases (*name) would repeat" in message, message[-500:]
            assert "write the repeated values out, or use fewer aliases" in message
    assert run["growth_mib"] < 64, run
    assert HaystackSearch.from_yaml(_small(tmp_path)).pipeline is not None  # aliases within the budget still load


def _small(tmp_path):
    """A pipeline file that uses an alias modestly (what a hand-edited file may do)."""
    file = tmp_path / "small.yaml"
    file.write_text(_pipeline_bomb(1, 3, "x"), encoding="utf-8")
    return file
