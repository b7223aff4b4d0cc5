"""Framing: the reward, the evaluation and both plugins send the retriever the same text for a rewrite."""

from __future__ import annotations

import pytest

from deepretrieval_trainer.common.errors import ConfigError
from deepretrieval_trainer.retrieval.framing import check_framing, new_words, search_text
from deepretrieval_trainer.training.config import TrainConfig

ORIGINAL, REWRITE = "vitamin d fractures", "cholecalciferol bone density elderly"


def test_expand_repeats_the_original_query_weight_times():
    assert search_text(ORIGINAL, REWRITE, "replace") == REWRITE
    assert search_text(ORIGINAL, REWRITE, "expand") == f"{ORIGINAL} {REWRITE}"
    assert search_text(ORIGINAL, REWRITE, "expand", 3) == f"{ORIGINAL} {ORIGINAL} {ORIGINAL} {REWRITE}"


@pytest.mark.parametrize("framing,weight,message", [
    ("expand", 0, "query_weight=0 must be a whole number >= 1"),
    ("expand", 2.5, "query_weight=2.5 must be a whole number"),
    ("replace", 2, "only applies to framing 'expand', 'fuse' or 'steer'"),
    ("both", 1, "framing='both'"),
])
def test_bad_framing_names_the_fix(framing, weight, message):
    with pytest.raises(ValueError, match=message):
        check_framing(framing, weight)


def test_new_words_are_the_rewrites_words_the_query_lacks():
    assert new_words("Heart attack risk?", "heart ATTACK") == set()
    assert new_words("heart attack", "myocardial infarction, heart") == {"myocardial", "infarction"}
    assert new_words("covid-19 vaccine", "COVID 19 vaccines") == {"vaccines"}  # surface forms, not stems
    assert new_words("anything", "") == set()


def test_config_checks_query_weight():
    assert TrainConfig(framing="expand", query_weight=3).query_weight == 3
    with pytest.raises(ConfigError, match="only applies to framing 'expand', 'fuse' or 'steer'"):
        TrainConfig(query_weight=2)


def test_every_path_searches_the_same_text(scripted_rewriter):
    pytest.importorskip("llama_index.core")
    pytest.importorskip("haystack")
    from deepretrieval_trainer.evaluation.evaluate import _search_query
    from deepretrieval_trainer.evaluation.sources import Source
    from deepretrieval_trainer.retrieval.bm25 import BM25Search
    from deepretrieval_trainer.training.rewards import RetrievalReward
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


def _hits(*pairs):
    from deepretrieval_trainer.retrieval.search import DocumentHit

    return [DocumentHit(doc_id, score=score) for doc_id, score in pairs]


def test_fuse_sums_scores_with_the_original_weighted():
    from deepretrieval_trainer.retrieval.framing import fuse_hits

    original = _hits(("a", 2.0), ("b", 1.0))
    rewrite = _hits(("c", 5.0), ("b", 2.5), ("a", 0.5))
    # a: 3*2 + 0.5 = 6.5; b: 3*1 + 2.5 = 5.5; c: 5.0 (missing from the original's list counts 0 there)
    assert fuse_hits(original, rewrite, 3) == ["a", "b", "c"]
    # at weight 1: c 5.0 > b 3.5 > a 2.5
    assert fuse_hits(original, rewrite, 1) == ["c", "b", "a"]
    # equal sums keep the original's order first, as Haystack's DocumentJoiner(merge) does
    assert fuse_hits(_hits(("x", 1.0), ("y", 1.0)), _hits(("z", 3.0)), 3) == ["x", "y", "z"]


def test_fuse_refuses_a_retriever_without_scores():
    from deepretrieval_trainer.retrieval.framing import fuse_hits
    from deepretrieval_trainer.retrieval.search import DocumentHit

    with pytest.raises(ValueError, match="without a score: framing 'fuse'.*framing 'expand'"):
        fuse_hits([DocumentHit("a")], _hits(("b", 1.0)), 2)


def test_config_takes_fuse_with_a_query_weight():
    assert TrainConfig(framing="fuse", query_weight=3).framing == "fuse"
    with pytest.raises(ConfigError, match="framing 'expand', 'fuse' or 'steer'"):
        TrainConfig(framing="replace", query_weight=3)


def test_fuse_weights_the_query_where_repeating_it_cannot():
    """Haystack's in-memory BM25 counts a repeated query token once, so ``expand`` cannot weight the user's words
    there; ``fuse`` does, and the reward, the evaluation and the deployed retrievers all rank the same documents."""
    pytest.importorskip("haystack")
    from deepretrieval_trainer.retrieval.framing import FUSION_DEPTH, fused_search
    from deepretrieval_trainer.training.rewards import RetrievalReward
    from haystack_deepretrieval import HaystackSearch
    from tests.conftest import collection_path

    search = HaystackSearch.from_beir(collection_path("adi"))
    original, rewrite = "computer indexing of documents", "automatic thesaurus retrieval system"
    assert search.search([search_text(original, rewrite, "expand", 3)], 10) == \
        search.search([search_text(original, rewrite, "expand", 1)], 10)  # repetition changes nothing here
    fused = {w: fused_search(search, [original], [rewrite], 10, w)[0] for w in (1, 3)}
    assert fused[1] != fused[3]
    assert fused_search(search, [original], [None], 10, 3)[0] == search.search([original], 10)[0]  # fallback: raw

    qrels = {doc_id: 1.0 for doc_id in fused[3][:2]}  # judged so that the fused top two are the relevant ones
    reward = RetrievalReward(search=search, framing="fuse", query_weight=3, task="retrieval")
    assert reward.cache.k == FUSION_DEPTH and reward.cache.scored
    completion = f'</think>\n<answer>{{"query": "{rewrite}"}}</answer>'
    [got] = reward([completion], query=[original], qrels=[qrels])
    assert got == pytest.approx(reward.score(fused[3], qrels))
    assert got != pytest.approx(reward.score(search.search([rewrite], 100)[0], qrels))


def test_evaluation_scores_a_fuse_source_as_the_reward_ranks(adi_test, scripted_rewriter):
    pytest.importorskip("haystack")
    from deepretrieval_trainer.evaluation.evaluate import evaluate
    from deepretrieval_trainer.evaluation.sources import Source, parse_source
    from deepretrieval_trainer.retrieval.framing import fused_search
    from haystack_deepretrieval import HaystackSearch
    from tests.conftest import collection_path

    search = HaystackSearch.from_beir(collection_path("adi"))
    rewrite = "automatic thesaurus retrieval system"
    fused = Source("fused", scripted_rewriter(f'</think>\n<answer>{{"query": "{rewrite}"}}</answer>'),
                   include_original=True, query_weight=3, fuse=True)
    fallback = Source("garbage", scripted_rewriter("no answer here"), include_original=True, query_weight=3, fuse=True)
    report = evaluate(adi_test, search, [fused, fallback], limit=5, progress=False)
    queries = [adi_test.queries[o.qid] for o in report.source("raw").outcomes]
    expected = fused_search(search, queries, [rewrite] * len(queries), 10, 3)
    assert [o.top10 for o in report.source("fused").outcomes] == expected
    assert [o.top10 for o in report.source("garbage").outcomes] == [o.top10 for o in report.source("raw").outcomes]
    base = parse_source("base", framing="fuse", query_weight=3)
    assert base.fuse and base.include_original and base.query_weight == 3
    assert not parse_source("base", framing="expand", query_weight=3).fuse
