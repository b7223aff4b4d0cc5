"""Nested input is bounded and reported as a normal malformed-input error, per query.

Each entry point that reads nested text gets the deep case: a Boolean query of 495 nested parentheses (under the
1,000-character query limit) and a long alternating AND/OR chain, through the translator, the FTS5 engine, both
rewards, LlamaIndex and Haystack; JSON and YAML nested far deeper than Python's recursion limit, through the loaders.
"""

from __future__ import annotations

import json

import pytest

from deepretrieval_trainer.common.errors import ConfigError, DataError
from deepretrieval_trainer.literature.boolean import MAX_DEPTH, BooleanQueryError, translate
from deepretrieval_trainer.literature.dataset import load_literature
from deepretrieval_trainer.literature.fts5 import FTS5Search
from deepretrieval_trainer.retrieval.data import load_beir
from deepretrieval_trainer.training.config import TrainConfig
from deepretrieval_trainer.training.rewards import build_rewards

from ...conftest import collection_path

DEEP_PARENS = "(" * 495 + "lens" + ")" * 495
LONG_CHAIN = " ".join(f"lens{i} {'AND' if i % 2 else 'OR'}" for i in range(600)) + " lens"
JUST_DEEP_ENOUGH = "(" * MAX_DEPTH + "lens" + ")" * MAX_DEPTH
DEEP = {"495 nested parentheses": DEEP_PARENS, "alternating AND/OR chain": LONG_CHAIN}
GOOD = "lens AND protein"


@pytest.fixture(scope="module")
def medline(tmp_path_factory):
    return FTS5Search.from_path(collection_path("medline"), index_path=tmp_path_factory.mktemp("fts") / "m.sqlite")


def test_the_deep_query_is_under_the_query_limit():
    assert len(DEEP_PARENS) < 1000


@pytest.mark.parametrize("query", DEEP.values(), ids=DEEP.keys())
def test_translate_reports_deep_nesting_as_malformed(query):
    with pytest.raises(BooleanQueryError, match=f"more than {MAX_DEPTH} deep"):
        translate(query)


def test_nesting_up_to_the_limit_still_translates(medline):
    assert translate(JUST_DEEP_ENOUGH).expression == '"lens"'
    assert medline.search([JUST_DEEP_ENOUGH], 5) == medline.search(["lens"], 5)


@pytest.mark.parametrize("query", DEEP.values(), ids=DEEP.keys())
def test_the_engine_rejects_one_query_not_the_batch(medline, query, tmp_path):
    with pytest.raises(BooleanQueryError):
        medline.search([query], 5)
    assert "deep" in medline.query_error(query)
    good, bad = medline.search_each([GOOD, query], 5)
    assert good == medline.search([GOOD], 5)[0] and isinstance(bad, BooleanQueryError)
    lenient = FTS5Search.from_path(collection_path("medline"), index_path=medline.index_path, malformed="empty")
    assert lenient.search([GOOD, query, GOOD], 5) == [good, [], good]


def test_both_rewards_score_a_deep_query_as_a_format_failure(medline):
    format_reward, retrieval_reward = build_rewards(medline, "literature")
    completions = [f'</think>\n<answer>{{"query": "{q}"}}</answer>' for q in (GOOD, DEEP_PARENS)]
    qrels = [json.dumps({doc: 1.0 for doc in medline.search([GOOD], 3)[0]})] * 2
    valid, invalid = format_reward(completions)
    assert valid > invalid
    rewards = retrieval_reward(completions, query=["lens proteins"] * 2, qrels=qrels)
    assert rewards[0] > 0 and rewards[1] == 0.0


def test_llamaindex_and_haystack_retrievers_raise_the_normal_error(medline):
    from haystack import Pipeline
    from haystack.core.errors import PipelineRuntimeError

    from haystack_deepretrieval.literature import LiteratureSearchRetriever
    from llamaindex_deepretrieval.literature import LiteratureRetriever

    with pytest.raises(BooleanQueryError, match="deep"):
        LiteratureRetriever(engine=medline, top_k=5).retrieve(DEEP_PARENS)
    pipeline = Pipeline()
    pipeline.add_component("search", LiteratureSearchRetriever(engine="fts5", collection=str(collection_path("medline"))))
    with pytest.raises(PipelineRuntimeError) as caught:
        pipeline.run({"search": {"query": DEEP_PARENS}})
    assert isinstance(caught.value.__cause__, BooleanQueryError)


def _beir(tmp_path, corpus_line: str):
    (tmp_path / "qrels").mkdir()
    (tmp_path / "corpus.jsonl").write_text(corpus_line + "\n", encoding="utf-8")
    (tmp_path / "queries.jsonl").write_text('{"_id": "q1", "text": "lens"}\n', encoding="utf-8")
    (tmp_path / "qrels" / "test.tsv").write_text("q1\td1\t1\n", encoding="utf-8")
    return tmp_path


def test_deep_json_in_a_collection_names_the_file_and_line(tmp_path):
    root = _beir(tmp_path, '{"_id": "d1", "text": ' + "[" * 100_000 + "]" * 100_000 + "}")
    with pytest.raises(DataError, match=r"corpus\.jsonl:1: the JSON nests too deep"):
        load_beir(root, "test")


def test_deep_json_in_a_literature_file_names_the_file_and_line(tmp_path):
    file = tmp_path / "lit.jsonl"
    file.write_text("[" * 100_000 + "]" * 100_000 + "\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"lit\.jsonl:1: the JSON nests too deep"):
        load_literature(file)


def test_deep_yaml_config_is_a_config_error(tmp_path):
    file = tmp_path / "train.yaml"
    file.write_text("max_steps: " + "[" * 100_000 + "\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="nests too deep"):
        TrainConfig.from_yaml(file)
