import pytest
import pytrec_eval

from deepretrieval_trainer.retrieval.bm25 import BM25Search
from deepretrieval_trainer.retrieval.metrics import first_hit_rank, hit_at_k, mean_metric, mrr, ndcg_at_k, recall_at_k


@pytest.fixture(scope="module")
def scifact_run(scifact_dev):
    search = BM25Search(scifact_dev.corpus)
    queries = scifact_dev.judged_queries
    ranked = search.search(list(queries.values()), 1000)
    return dict(zip(queries, ranked, strict=True))


def _trec_run(run):
    # pytrec_eval ranks by score: give strictly decreasing scores in our rank order.
    return {qid: {doc: float(len(docs) - i) for i, doc in enumerate(docs)} for qid, docs in run.items()}


def test_against_trec_eval_on_real_bm25_run(scifact_dev, scifact_run):
    qrels = {qid: {doc: int(g) for doc, g in judged.items()} for qid, judged in scifact_dev.qrels.items()}
    measures = {"ndcg_cut.10", "ndcg_cut.100", "recall.10", "recall.100", "recall.1000", "recip_rank"}
    reference = pytrec_eval.RelevanceEvaluator(qrels, measures).evaluate(_trec_run(scifact_run))
    assert len(reference) == len(qrels) > 100
    for qid, judged in scifact_dev.qrels.items():
        ranking, ref = scifact_run[qid], reference[qid]
        assert ndcg_at_k(ranking, judged, 10) == pytest.approx(ref["ndcg_cut_10"], abs=1e-9)
        assert ndcg_at_k(ranking, judged, 100) == pytest.approx(ref["ndcg_cut_100"], abs=1e-9)
        for k in (10, 100, 1000):
            assert recall_at_k(ranking, judged, k) == pytest.approx(ref[f"recall_{k}"], abs=1e-9)
        assert mrr(ranking, judged) == pytest.approx(ref["recip_rank"], abs=1e-9)
    mean_ndcg = mean_metric("ndcg", scifact_run, scifact_dev.qrels, 10)
    assert mean_ndcg == pytest.approx(sum(r["ndcg_cut_10"] for r in reference.values()) / len(reference))
    assert 0.6 < mean_ndcg < 0.75  # plain BM25 on SciFact is ~0.66


def test_graded_ndcg_against_trec_eval():
    qrels = {"q": {"a": 2, "b": 1, "c": 0, "d": 3}}
    ranking = ["b", "x", "a", "c", "d"]
    ref = pytrec_eval.RelevanceEvaluator(qrels, {"ndcg_cut.5", "ndcg_cut.3"}).evaluate(_trec_run({"q": ranking}))["q"]
    graded = {doc: float(g) for doc, g in qrels["q"].items()}
    assert ndcg_at_k(ranking, graded, 5) == pytest.approx(ref["ndcg_cut_5"])
    assert ndcg_at_k(ranking, graded, 3) == pytest.approx(ref["ndcg_cut_3"])


def test_hit_and_rank():
    judged = {"d2": 1.0, "d9": 0.0}
    assert first_hit_rank(["d1", "d9", "d2"], judged) == 3
    assert hit_at_k(["d1", "d9", "d2"], judged, 2) == 0.0
    assert hit_at_k(["d1", "d9", "d2"], judged, 3) == 1.0
    assert mrr(["d1", "d2"], judged) == 0.5
    assert first_hit_rank([], judged) is None


def test_no_relevant_documents_scores_zero():
    assert recall_at_k(["a"], {"a": 0}, 10) == 0.0
    assert ndcg_at_k(["a"], {}, 10) == 0.0


def test_mean_metric_errors_and_missing_runs():
    with pytest.raises(ValueError, match="empty"):
        mean_metric("ndcg", {}, {}, 10)
    assert mean_metric("recall", {}, {"q": {"a": 1}}, 10) == 0.0
