"""Framing: the reward, the evaluation and both plugins send the retriever the same text for a rewrite."""

from __future__ import annotations

import pytest

from deepretrieval_trainer.config import ConfigError, TrainConfig
from deepretrieval_trainer.framing import check_framing, search_text

ORIGINAL, REWRITE = "vitamin d fractures", "cholecalciferol bone density elderly"


def test_expand_repeats_the_original_query_weight_times():
    assert search_text(ORIGINAL, REWRITE, "replace") == REWRITE
    assert search_text(ORIGINAL, REWRITE, "expand") == f"{ORIGINAL} {REWRITE}"
    assert search_text(ORIGINAL, REWRITE, "expand", 3) == f"{ORIGINAL} {ORIGINAL} {ORIGINAL} {REWRITE}"


@pytest.mark.parametrize("framing,weight,message", [
    ("expand", 0, "query_weight=0 must be a whole number >= 1"),
    ("expand", 2.5, "query_weight=2.5 must be a whole number"),
    ("replace", 2, "only applies to framing='expand'"),
    ("both", 1, "framing='both'"),
])
def test_bad_framing_names_the_fix(framing, weight, message):
    with pytest.raises(ValueError, match=message):
        check_framing(framing, weight)


def test_config_checks_query_weight():
    assert TrainConfig(framing="expand", query_weight=3).query_weight == 3
    with pytest.raises(ConfigError, match="only applies to framing='expand'"):
        TrainConfig(query_weight=2)


def test_every_path_searches_the_same_text(scripted_rewriter):
    pytest.importorskip("llama_index.core")
    pytest.importorskip("haystack")
    from deepretrieval_trainer.bm25 import BM25Search
    from deepretrieval_trainer.evaluate import _search_query
    from deepretrieval_trainer.rewards import RetrievalReward
    from deepretrieval_trainer.sources import Source
    from haystack_deepretrieval import DeepRetrievalQueryRewriter
    from llamaindex_deepretrieval import DeepRetrievalQueryTransform

    completion = f'</think>\n<answer>{{"query": "{REWRITE}"}}</answer>'
    expected = search_text(ORIGINAL, REWRITE, "expand", 3)
    search = BM25Search({"d1": {"title": "", "text": "vitamin d"}})
    reward = RetrievalReward(search=search, framing="expand", query_weight=3)
    rewriter = scripted_rewriter(completion)
    result = rewriter.rewrite([ORIGINAL])[0]
    transform = DeepRetrievalQueryTransform(rewriter=scripted_rewriter(completion), mode="expand", query_weight=3)
    component = DeepRetrievalQueryRewriter.from_rewriter(scripted_rewriter(completion))
    component.query_weight = 3
    assert reward.search_text(ORIGINAL, REWRITE) == expected
    assert _search_query(Source("trained", rewriter, include_original=True, query_weight=3), result) == expected
    assert transform.run(ORIGINAL).query_str == expected
    assert component.run(ORIGINAL)["search_query"] == expected
    fallback = DeepRetrievalQueryRewriter.from_rewriter(scripted_rewriter("garbage"))
    assert fallback.run(ORIGINAL)["search_query"] == ORIGINAL  # a fallback searches the user's query alone
