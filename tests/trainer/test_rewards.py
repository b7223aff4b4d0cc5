"""Reward functions on hand-built completions with known expected values (real parser, real BM25 where searched)."""

from __future__ import annotations

import json
import math
import pickle

import pytest

from deepretrieval_trainer.common.errors import ConfigError
from deepretrieval_trainer.retrieval.bm25 import BM25Search
from deepretrieval_trainer.retrieval.metrics import recall_at_k
from deepretrieval_trainer.rewriting.tasks import get_task
from deepretrieval_trainer.training.config import TrainConfig
from deepretrieval_trainer.training.rewards import FormatReward, RetrievalReward, build_rewards, normalize_query

VALID = ' relevant terms</think>\n<answer>{"query": "%s"}</answer>'


class FixedSearch:
    """A SearchBackend returning fixed rankings by query text; counts what it was asked."""

    def __init__(self, rankings: dict[str, list[str]]):
        self.rankings = rankings
        self.calls: list[list[str]] = []

    def search(self, queries, k):
        self.calls.append(list(queries))
        return [self.rankings.get(q, [])[:k] for q in queries]

    async def asearch(self, queries, k):
        return self.search(queries, k)


def test_format_reward_values_and_names():
    reward = FormatReward(task="retrieval")
    logged = {}
    scores = reward(
        [VALID % "a b", ' no closing think <answer>{"query": "x"}</answer>', " ok</think><answer>{\"query\": ", "x</think>"],
        log_metric=logged.__setitem__,
    )
    assert scores == [0.1, -2.0, -2.0, -2.0]
    assert logged["format/valid_rate"] == 0.25
    assert reward.__name__ == "format" and RetrievalReward(search=FixedSearch({})).__name__ == "retrieval"
    assert FormatReward(task="qa")([VALID % "q", "junk"]) == [1.0, -4.0]
    assert pickle.loads(pickle.dumps(reward))([VALID % "a"]) == [0.1]


def test_ndcg_reward_for_retrieval_task():
    search = FixedSearch({"good": ["d1", "d2"], "other": ["d9"], "orig": ["d2"]})
    reward = RetrievalReward(search=search, task="retrieval")
    qrels = json.dumps({"d2": 1})
    scores = reward([VALID % "good", VALID % "other", "unparsable"], query=["orig"] * 3, qrels=[qrels] * 3)
    assert scores[0] == pytest.approx(1 / math.log2(3))  # relevant doc at rank 2
    assert scores[1] == 0.0 and scores[2] == 0.0
    assert reward.cache.k == 100  # the retrieval task trains with a larger k than its eval k=10


def test_unusable_completions_can_score_what_the_fallback_retrieves():
    """unusable_reward: raw - an unparsable sample scores the raw query's ranking (what the deployed component then
    searches), so a valid rewrite earns more only by retrieving better than falling back."""
    search = FixedSearch({"good": ["d2"], "bad": ["d9"], "orig": ["d9", "d2"]})
    qrels = json.dumps({"d2": 1})
    completions = [VALID % "good", VALID % "bad", "unparsable", VALID % ""]
    raw_score = 1 / math.log2(3)  # the raw query finds d2 at rank 2
    zero = RetrievalReward(search=search, task="retrieval")(completions, query=["orig"] * 4, qrels=[qrels] * 4)
    fallback = RetrievalReward(search=search, task="retrieval", unusable="raw")(completions, query=["orig"] * 4,
                                                                                 qrels=[qrels] * 4)
    assert zero == [1.0, 0.0, 0.0, 0.0]
    assert fallback == [1.0, 0.0, pytest.approx(raw_score), pytest.approx(raw_score)]
    with pytest.raises(ValueError, match="unusable='floor'"):
        RetrievalReward(search=search, unusable="floor")
    with pytest.raises(ConfigError, match="unusable_reward='floor'"):
        TrainConfig(unusable_reward="floor")
    [_, retrieval] = build_rewards(search, "retrieval", unusable="raw")
    assert retrieval.unusable == "raw"


def test_recall_tiers_for_literature():
    relevant = {f"r{i}": 1 for i in range(10)}
    search = FixedSearch({"half": [f"r{i}" for i in range(5)] + ["x"], "none": ["x", "y"], "most": list(relevant)[:7]})
    reward = RetrievalReward(search=search, task="literature")
    scores = reward([VALID % "half", VALID % "none", VALID % "most"], query=["t"] * 3, qrels=[relevant] * 3)
    assert scores == [4.0, -3.5, 5.0]


def test_hit_rank_tiers_for_qa():
    ranking = [f"d{i}" for i in range(1, 2001)]
    search = FixedSearch({"early": ranking, "mid": ranking[27:], "never": ["zzz"]})
    reward = RetrievalReward(search=search, task="qa")
    qrels = {"d3": 1}
    # rank 3 -> 5; in "mid" d3 is absent -> floor; "never" -> floor
    assert reward([VALID % "early", VALID % "mid", VALID % "never"], query=["q"] * 3, qrels=[qrels] * 3) == [5.0, -3.5, -3.5]
    search.rankings["rank30"] = ranking[:2] + [f"x{i}" for i in range(27)] + ["d3"]
    assert reward([VALID % "rank30"], query=["q"], qrels=[qrels]) == [2.0]


def test_cache_dedupes_normalized_queries_and_logs():
    search = FixedSearch({"Vitamin D bones": ["d1"], "q": ["d1"]})
    reward = RetrievalReward(search=search, task="retrieval")
    logged: dict[str, float] = {}
    completions = [VALID % "Vitamin D  bones", VALID % "vitamin d bones"]
    reward(completions, query=["q", "q"], qrels=[{"d1": 1}] * 2, log_metric=logged.__setitem__)
    # One batched search for both spellings (sent as first written: case matters to Boolean engines) and the raw query.
    assert search.calls == [["Vitamin D bones", "q"]]
    assert reward(completions, query=["q", "q"], qrels=[{"d1": 1}] * 2, log_metric=logged.__setitem__) == [1.0, 1.0]
    assert len(search.calls) == 1 and logged["search/cache_hit_rate"] == 1.0
    assert logged["retrieval/raw_query_reward"] == 1.0 and "search/time_s" in logged
    assert normalize_query("  A\tB ") == "a b"


def test_expand_framing_searches_original_plus_rewrite():
    search = FixedSearch({"orig extra": ["d1"]})
    reward = RetrievalReward(search=search, task="retrieval", framing="expand")
    assert reward([VALID % "extra"], query=["orig"], qrels=[{"d1": 1}]) == [1.0]


def test_echo_penalty_charges_rewrites_that_add_no_word_to_the_query():
    """Under expand, an echo or a subset of the user's query ranks as the raw query does; echo_penalty makes a group
    prefer a rewrite that adds words, and the rate of such rewrites is logged with or without the penalty."""
    search = FixedSearch({"heart attack heart attack": ["d2", "d1"], "heart attack Heart": ["d2", "d1"],
                          "heart attack infarction": ["d1"], "heart attack": ["d2", "d1"]})
    completions = [VALID % "heart attack", VALID % "Heart", VALID % "infarction", "unparsable"]
    kwargs = dict(query=["heart attack"] * 4, qrels=[{"d1": 1}] * 4)
    raw_score = 1 / math.log2(3)
    logged_off, logged_on = {}, {}
    off = RetrievalReward(search=search, framing="expand")(completions, log_metric=logged_off.__setitem__, **kwargs)
    on = RetrievalReward(search=search, framing="expand", echo_penalty=0.25)(completions,
                                                                          log_metric=logged_on.__setitem__, **kwargs)
    assert off == [pytest.approx(raw_score), pytest.approx(raw_score), 1.0, 0.0]
    assert on == [pytest.approx(raw_score - 0.25), pytest.approx(raw_score - 0.25), 1.0, 0.0]
    assert logged_off["retrieval/no_new_words_rate"] == logged_on["retrieval/no_new_words_rate"] == pytest.approx(2 / 3)
    # the logged rewrite reward is what the search scored, before the penalty
    assert logged_on["retrieval/rewrite_reward"] == pytest.approx(logged_off["retrieval/rewrite_reward"])
    [_, retrieval] = build_rewards(search, "retrieval", framing="expand", query_weight=3, echo_penalty=0.1)
    assert retrieval.echo_penalty == 0.1
    with pytest.raises(ValueError, match="echo_penalty=0.1 applies to framing 'expand' or 'fuse'"):
        RetrievalReward(search=search, echo_penalty=0.1)
    with pytest.raises(ConfigError, match="echo_penalty=0.1 applies to framing 'expand' or 'fuse'"):
        TrainConfig(echo_penalty=0.1)
    with pytest.raises(ConfigError, match=r"echo_penalty=-1(\.0)? must be a number >= 0"):
        TrainConfig(framing="expand", echo_penalty=-1)
    assert TrainConfig(framing="fuse", query_weight=3, echo_penalty=0.1).echo_penalty == 0.1


def test_config_overrides_shape_the_rewards():
    config = TrainConfig(task="literature", reward_tiers=[[0.9, 10], [0.2, 1]], reward_floor=-1, reward_k=5,
                         format_invalid=-9)
    fmt, retrieval = build_rewards(FixedSearch({"q": ["r0", "r1", "x"]}), config.build_task())
    assert fmt(["junk"]) == [-9.0]
    relevant = {f"r{i}": 1 for i in range(5)}
    assert retrieval([VALID % "q"], query=["t"], qrels=[relevant]) == [1.0]  # recall 0.4 -> tier 0.2 -> 1
    assert retrieval.cache.k == 5
    assert get_task("literature").tiers.floor == -3.5  # built-in task unchanged


def test_real_bm25_rewards_a_better_rewrite(adi_test):
    search = BM25Search(adi_test.corpus)
    reward = RetrievalReward(search=search, task="retrieval")
    qid, text = next(iter(adi_test.judged_queries.items()))
    qrels = adi_test.qrels[qid]
    best_doc = max(qrels, key=qrels.get)
    good = adi_test.corpus[best_doc]["title"].replace('"', "")
    scores = reward([VALID % good, VALID % "zebra giraffe"], query=[text] * 2, qrels=[qrels] * 2)
    assert scores[0] > 0.0 and scores[1] == 0.0


def test_malformed_boolean_query_gets_the_format_penalty_not_a_crash(adi_test, monkeypatch, tmp_path):
    from deepretrieval_trainer.literature.fts5 import FTS5Search

    monkeypatch.setenv("DEEPRETRIEVAL_CACHE", str(tmp_path))
    engine = FTS5Search(adi_test.corpus)  # malformed="raise": a bad query in a batch would fail search()
    assert engine.query_error("(indexing AND") is not None and engine.query_error("indexing AND retrieval") is None
    format_reward, retrieval_reward = build_rewards(engine, "literature")
    qid, judged = next(iter(adi_test.qrels.items()))
    completions = [VALID % "(indexing AND", VALID % "indexing OR retrieval OR documents"]
    task = get_task("literature")
    assert format_reward(completions) == [task.format_invalid, task.format_valid]
    rewards = retrieval_reward(completions, query=[adi_test.queries[qid]] * 2, qrels=[json.dumps(judged)] * 2)
    assert rewards[0] == 0.0
    ranking = engine.search(["indexing OR retrieval OR documents"], task.reward_k)[0]
    assert rewards[1] == task.tiers(recall_at_k(ranking, judged, task.reward_k))


class DatedSearch(FixedSearch):
    """FixedSearch whose results depend on a per-query publication-date cutoff, like PubMedSearch.search_dated."""

    def search_dated(self, queries, k, dates):
        self.calls.append([(q, d.end if d else None) for q, d in zip(queries, dates)])
        return [self.rankings.get(q, [])[:k] if d is None else ["old"] for q, d in zip(queries, dates)]


def test_per_row_publication_date_cutoff_reaches_the_engine_and_the_cache_key():
    search = DatedSearch({"q": ["new", "old"]})
    reward = RetrievalReward(search=search, task="literature")
    completions = [VALID % "q", VALID % "q"]
    qrels = [{"old": 1}, {"new": 1}]
    rewards = reward(completions, query=["t", "t"], qrels=qrels, pub_date=["2001/01/01", None])
    assert search.calls[0] == [("q", "2001/01/01"), ("q", None), ("t", "2001/01/01"), ("t", None)]
    task = get_task("literature")
    assert rewards == [task.tiers(1.0), task.tiers(1.0)]  # each row scored on its own date window
    with pytest.raises(ValueError, match="cannot filter by date"):
        RetrievalReward(search=FixedSearch({}), task="literature")([VALID % "q"], query=["t"], qrels=[{"a": 1}],
                                                                   pub_date=["2001"])


def test_date_cutoffs_need_a_dated_engine_before_any_model_loads():
    from deepretrieval_trainer.common.errors import ConfigError
    from deepretrieval_trainer.training.retrieval import check_search, training_rows

    rows = training_rows([{"query": "t", "qrels": {"a": 1}, "pub_date": "2001/01/01"}])
    with pytest.raises(ConfigError, match="cannot filter by date"):
        check_search(FixedSearch({}), rows, 10)
    check_search(DatedSearch({}), rows, 10)
