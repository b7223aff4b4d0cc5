"""The corpus-steered task: the prompt shows the candidate terms RM3 mines from the query's first pass, the answer
keeps some, and framing ``steer`` searches RM3 restricted to them. Every path (the reward, the evaluation, both
plugins) builds the candidates and the search text with the same functions, from the same first pass."""

from __future__ import annotations

import json

import pytest

from deepretrieval_trainer.common.errors import ConfigError
from deepretrieval_trainer.retrieval.bm25 import BM25Search
from deepretrieval_trainer.retrieval.framing import search_text
from deepretrieval_trainer.retrieval.prf import RM3, PseudoRelevanceFeedback, candidate_terms, steered_query
from deepretrieval_trainer.retrieval.search import DocumentHit
from deepretrieval_trainer.rewriting.feedback import NO_RESULTS, Feedback
from deepretrieval_trainer.rewriting.tasks import TASKS, get_task, with_feedback
from deepretrieval_trainer.training.config import TrainConfig

QUERY = "vitamin D deficiency fractures"
HITS = [DocumentHit("a", "Bone health", "bone density vitamin fractures calcium bone", 3.0),
        DocumentHit("b", "", "calcium supplements bone loss elderly women", 1.5),
        DocumentHit("c", "Hip fractures", "hip fracture elderly women falls osteoporosis", 1.0)]


def test_the_prompt_lists_rm3s_candidate_terms_most_weighted_first():
    task = get_task("steer")
    candidates = task.feedback.candidates(HITS)
    assert list(candidates.weights) == list(candidate_terms(HITS, 10).weights)
    assert sum(candidates.weights.values()) == pytest.approx(1.0)
    weights = list(candidates.weights.values())
    assert weights == sorted(weights, reverse=True)
    shown = task.messages(QUERY, HITS)[-1]["content"]
    assert shown == f"Query: {QUERY}\nCandidate terms: " + ", ".join(candidates.forms.values())
    assert task.feedback.text([]) == NO_RESULTS
    assert with_feedback("steer", 5).feedback == Feedback(docs=5, field="terms", terms=10)  # the task's own format


def test_keeping_every_candidate_is_rm3_and_keeping_none_is_the_raw_query():
    candidates = candidate_terms(HITS, 10)
    everything = ", ".join(candidates.forms.values())
    rm3 = PseudoRelevanceFeedback(BM25Search({"x": {"title": "", "text": "xylophone music"}}), RM3(terms=10))
    assert steered_query(QUERY, everything, candidates) == rm3.expand(QUERY, HITS)
    assert steered_query(QUERY, "nothing offered here", candidates).startswith(QUERY)
    assert steered_query(QUERY, "", candidates) == QUERY
    assert steered_query(QUERY, everything, candidate_terms([], 10)) == QUERY  # no first pass: the raw query


def test_kept_terms_keep_their_rm3_weight_and_own_words_count_as_an_average_candidate():
    candidates = candidate_terms(HITS, 10)
    heavy, light = list(candidates.forms.values())[0], list(candidates.forms.values())[-1]
    text = steered_query(QUERY, f"{heavy}, {light}", candidates)
    words = text.split()
    assert words.count(heavy) > words.count(light) > 0  # the heavier candidate is repeated more
    own = steered_query(QUERY, f"{heavy}, cholecalciferol", candidates)
    assert "cholecalciferol" in own.split()
    # the user's query keeps its share: query_weight 3 repeats it more against the same kept terms
    assert steered_query(QUERY, heavy, candidates, 3).count(QUERY) >= steered_query(QUERY, heavy, candidates).count(QUERY)


def test_candidates_travel_as_json_unchanged():
    candidates = candidate_terms(HITS, 10)
    again = type(candidates).from_json(candidates.to_json())
    assert again == candidates and list(again.weights) == list(candidates.weights)


def test_the_answer_is_read_from_its_terms_field():
    task = get_task("steer")
    parsed = task.parse('bone, density, calcium"}</answer>')
    assert parsed.ok and parsed.query == "bone, density, calcium" and task.well_formed(parsed)
    looped = task.parse("bone, calcium, calcium, calcium, calcium, calc")  # the budget ended a loop
    assert looped.ok and looped.query == "bone, calcium," and looped.repaired and not task.well_formed(looped)


def test_framing_steer_goes_with_a_task_whose_prompt_shows_terms():
    assert TrainConfig(task="steer", framing="steer", query_weight=2).build_task().feedback.field == "terms"
    with pytest.raises(ConfigError, match="framing 'steer' with task='retrieval'.*needs task 'steer'"):
        TrainConfig(framing="steer")
    with pytest.raises(ValueError, match="pass candidates="):
        search_text(QUERY, "bone", "steer")
    assert TASKS["steer"].think is False and TASKS["steer"].prefill == '<answer>{"terms": "'


def test_every_path_searches_the_same_steered_text(scripted_rewriter):
    pytest.importorskip("llama_index.core")
    pytest.importorskip("haystack")
    from haystack import Document
    from haystack_deepretrieval import DeepRetrievalQueryRewriter
    from llama_index.core.schema import QueryBundle
    from llamaindex_deepretrieval import DeepRetrievalQueryTransform

    from deepretrieval_trainer.evaluation.evaluate import _search_query
    from deepretrieval_trainer.evaluation.sources import Source
    from deepretrieval_trainer.training.rewards import RetrievalReward

    task = get_task("steer")
    candidates = task.feedback.candidates(HITS)
    answer = ", ".join(list(candidates.forms.values())[:3])
    completion = f'{answer}"}}</answer>'
    expected = steered_query(QUERY, answer, candidates)
    reward = RetrievalReward(search=BM25Search({"d1": {"title": "", "text": "vitamin d"}}), task=task, framing="steer")
    assert reward.search_text(QUERY, answer, candidates) == expected
    rewriter = scripted_rewriter(completion, task=task)
    result = rewriter.rewrite([QUERY], [HITS])[0]
    assert result.query == answer
    assert _search_query(Source("trained", rewriter, steer=True), result, candidates) == expected
    transform = DeepRetrievalQueryTransform(rewriter=scripted_rewriter(completion, task=task), mode="steer")
    assert transform.run(QueryBundle(QUERY), metadata={"first_pass": HITS}).query_str == expected
    component = DeepRetrievalQueryRewriter.from_rewriter(scripted_rewriter(completion, task=task))
    documents = [Document(id=h.doc_id, content=f"{h.title} {h.text}".strip(), meta={"title": h.title}, score=h.score)
                 for h in HITS]
    assert component.run(QUERY, documents=documents)["search_query"] == expected
    fallback = DeepRetrievalQueryRewriter.from_rewriter(scripted_rewriter("garbage", task=task))
    assert fallback.run(QUERY, documents=documents)["search_query"] == QUERY  # a fallback searches the query alone


def test_the_reward_scores_the_steered_search_and_logs_gains_over_raw_and_rm3():
    from deepretrieval_trainer.training.rewards import RetrievalReward

    corpus = {"bone": {"title": "Bone density", "text": "bone density calcium vitamin"},
              "hip": {"title": "Hip fracture", "text": "hip fracture elderly falls"},
              "music": {"title": "Music", "text": "xylophone music concert"}}
    search = BM25Search(corpus)
    task = get_task("steer")
    hits = search.search_documents(["vitamin fractures"], 10)[0]
    candidates = task.feedback.candidates(hits)
    logged = {}
    reward = RetrievalReward(search=search, task=task, framing="steer")
    completions = [", ".join(candidates.forms.values()) + '"}</answer>', 'garbage']
    rewards = reward(completions, query=["vitamin fractures"] * 2, qrels=[json.dumps({"bone": 1})] * 2,
                     candidates=[candidates.to_json()] * 2, log_metric=lambda k, v: logged.__setitem__(k, v))
    assert rewards[1] == 0.0 and rewards[0] > 0
    assert {"retrieval/gain_over_raw", "retrieval/gain_over_rm3", "retrieval/rm3_reward"} <= set(logged)
    assert logged["retrieval/gain_over_rm3"] == pytest.approx((rewards[0] - logged["retrieval/rm3_reward"]
                                                               + logged["retrieval/raw_query_reward"]
                                                               - logged["retrieval/rm3_reward"]) / 2)
    with pytest.raises(ValueError, match="dataset column 'candidates'"):
        reward(completions, query=["q"] * 2, qrels=[json.dumps({"bone": 1})] * 2)


def test_min_choice_spread_keeps_the_queries_where_the_kept_candidates_change_the_reward(scifact_dev):
    import random

    from deepretrieval_trainer.common.errors import DataError
    from deepretrieval_trainer.training.retrieval import CHOICE_PROBES, choice_rows, training_rows
    from deepretrieval_trainer.training.rewards import RetrievalReward

    search = BM25Search(scifact_dev.corpus)
    rows = training_rows(scifact_dev)[:60]
    config = TrainConfig(task="steer", framing="steer", reward_k=10, min_choice_spread=0.05)
    task = config.build_task()
    kept = choice_rows(search, rows, config, task)
    assert 0 < len(kept) < len(rows)
    reward = RetrievalReward(search=search, task=task)
    rng = random.Random(config.seed)  # the same draws choice_rows made, query by query
    for row in rows:
        candidates = task.feedback.candidates(search.search_documents([row.query_text], task.feedback.docs)[0])
        forms = list(candidates.forms.values())
        keeps = [forms, []] + [rng.sample(forms, len(forms) // 2) for _ in range(CHOICE_PROBES)]
        texts = [steered_query(row.query_text, " ".join(keep), candidates) for keep in keeps]
        scores = [reward.score(found, row.qrels) for found in search.search(texts, 10)]
        assert (row in kept) == (max(scores) - min(scores) >= 0.05)
    assert choice_rows(search, rows, TrainConfig(task="steer", framing="steer"), task) == rows  # None: every row
    with pytest.raises(DataError, match="leaves no training query"):
        choice_rows(search, rows, TrainConfig(task="steer", framing="steer", min_choice_spread=2.0), task)
    with pytest.raises(ConfigError, match="applies to framing 'steer'"):
        TrainConfig(min_choice_spread=0.1)
