"""RM3 pseudo-relevance feedback: the relevance model by hand, the weights carried by repetition, and the source
through the core BM25, the real CLI and a backend without document text."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from deepretrieval_trainer.evaluation.evaluate import evaluate
from deepretrieval_trainer.evaluation.sources import parse_source
from deepretrieval_trainer.retrieval.bm25 import BM25Search
from deepretrieval_trainer.retrieval.prf import RM3, Analyzer, PseudoRelevanceFeedback, apportion, feedback_model
from deepretrieval_trainer.retrieval.search import DocumentHit


def test_feedback_model_is_rm3_by_hand():
    hits = [DocumentHit("d1", "", "apple apple banana the", 2.0), DocumentHit("d2", "", "banana cherry of", 1.0)]
    model, forms = feedback_model(Analyzer(None), hits, terms=2)
    # each document cut to its 2 top terms and L1-normalized: d1 {apple 2/3, banana 1/3}, d2 {banana 1/2, cherry 1/2};
    # weighted by score: apple 4/3, banana 2/3 + 1/2, cherry 1/2; the top 2, normalized
    assert list(model) == ["apple", "banana"]
    assert model["apple"] == pytest.approx(8 / 15) and model["banana"] == pytest.approx(7 / 15)
    assert forms == {"apple": "apple", "banana": "banana"}
    # without scores every document weighs the same: apple 2/3, banana 1/3 + 1/2, cherry 1/2
    unscored = [DocumentHit(h.doc_id, h.title, h.text) for h in hits]
    model, _ = feedback_model(Analyzer(None), unscored, terms=2)
    assert model == pytest.approx({"banana": 5 / 9, "apple": 4 / 9})


def test_stemming_merges_inflections_and_writes_the_commonest_form():
    hits = [DocumentHit("d1", "Cells", "cell cells cells proliferation", 1.0)]
    model, forms = feedback_model(Analyzer("english"), hits, terms=5)
    assert model == pytest.approx({"cell": 0.8, "prolifer": 0.2}) and forms["cell"] == "cells"


@pytest.mark.parametrize("weight", [0.3, 0.5, 0.8])
def test_repetitions_carry_the_interpolated_weights(weight):
    analyzer = Analyzer("english")
    backend = BM25Search({"x": {"title": "", "text": "xylophone music"}})
    prf = PseudoRelevanceFeedback(backend, RM3(terms=4, weight=weight))
    query = "vitamin D deficiency fractures"
    hits = [DocumentHit("a", "Bone health", "bone density vitamin fractures calcium bone", 3.0),
            DocumentHit("b", "", "calcium supplements bone loss elderly women", 1.5)]
    text = prf.expand(query, hits)
    copies = text.count(query)
    assert copies >= 1 and text.startswith(query)
    units = Counter(key for _, key in analyzer.tokens(text))
    query_units = Counter(key for _, key in analyzer.tokens(query))
    model, _ = feedback_model(analyzer, hits, terms=4)
    n = len(analyzer.tokens(query))
    expected = {t: weight * query_units[t] / n + (1 - weight) * model.get(t, 0) for t in set(units) | set(model)}
    total = sum(units.values())
    expansion = total - copies * n
    for term, share in expected.items():  # each weight within one repetition of exact
        assert abs(units[term] / total - share) <= 1 / total + 1e-9, term
    assert copies * n / total == pytest.approx(weight, abs=1 / total + 1e-9) and expansion >= 4


def test_apportion_keeps_the_total():
    assert apportion(7, {"a": 0.5, "b": 0.3, "c": 0.2}) == {"a": 4, "b": 2, "c": 1}
    assert sum(apportion(30, {str(i): 1 / 7 for i in range(7)}).values()) == 30


def test_prf_source_on_scifact_dev_through_the_core_bm25(scifact_dev):
    search = BM25Search(scifact_dev.corpus)
    sources = [parse_source("prf:docs=5", search=search), parse_source("level=prf:weight=1", search=search)]
    report = evaluate(scifact_dev, search, sources, limit=30, progress=False)
    prf, level, raw = report.source("prf:d5:t10:w0.5"), report.source("level"), report.source("raw")
    assert all(o.search_query.startswith(o.query) and len(o.search_query) > 2 * len(o.query) for o in prf.outcomes)
    assert prf.fallback_rate == 0 and prf.means != raw.means and prf.rewrite_latency_s > 0
    # weight 1 keeps the original query alone: raw's numbers exactly
    assert level.means == raw.means and {o.search_query == o.query for o in level.outcomes} == {True}
    first = sources[0].rewriter
    hits = search.search_documents([prf.outcomes[0].query], 5)[0]
    assert prf.outcomes[0].search_query == first.prf.expand(prf.outcomes[0].query, hits)


class IdsOnly:
    def search(self, queries, k):
        return [["a"] for _ in queries]


def test_bad_specs_and_backends_say_what_to_fix(adi_test):
    with pytest.raises(TypeError, match="pseudo-relevance feedback .*IdsOnly cannot return it"):
        parse_source("prf", search=IdsOnly())
    with pytest.raises(ValueError, match="pass search="):
        parse_source("prf")
    for spec, message in (("prf:docs=0", "docs=0 must be a positive"), ("prf:weight=2", "in \\[0, 1\\]"),
                          ("prf:fb=3", "not understood"), ("prf:terms=x", "terms must be a number"),
                          ("prf:stem=klingon", "not a PyStemmer")):
        with pytest.raises(ValueError, match=message):
            parse_source(spec, search=BM25Search(adi_test.corpus))
    assert RM3.parse("stem=none, docs=3").label() == "d3:t10:w0.5:nostem"


def test_eval_command_with_prf_through_llamaindex(data_dir, tmp_path, capsys):
    from deepretrieval_trainer.cli import main

    argv = ["eval", "--data", str(data_dir / "adi"), "--split", "test", "--framework", "llamaindex", "--limit", "5",
            "--source", "prf", "--source", "prf:docs=3,terms=5,weight=0.6", "--out", str(tmp_path), "--no-progress"]
    assert main(argv) == 0
    assert "prf:d3:t5:w0.6" in capsys.readouterr().out
    results = json.loads((tmp_path / "results.json").read_text())
    assert [s["name"] for s in results["summary"]] == ["raw", "prf", "prf:d3:t5:w0.6"]
    assert all(len(r["search_query"]) > len(r["query"]) for r in results["per_query"]["prf"])
    assert not (tmp_path / "rewrites").exists()  # prf depends on the retriever: never cached


def test_eval_shows_the_free_baseline_by_default_where_it_can(adi_test):
    from deepretrieval_trainer.commands.eval import default_sources

    assert default_sources(BM25Search(adi_test.corpus)) == ["raw", "prf", "base"]
    assert default_sources(IdsOnly()) == ["raw", "base"]
