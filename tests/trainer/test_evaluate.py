import json
import logging
import math

import pytest

from deepretrieval_trainer.evaluation.evaluate import METRICS, compare, evaluate, paired_t_test, select_queries
from deepretrieval_trainer.evaluation.report import format_table, to_markdown, write_outputs
from deepretrieval_trainer.evaluation.sources import Source, parse_source
from deepretrieval_trainer.retrieval.bm25 import BM25Search
from deepretrieval_trainer.retrieval.metrics import mean_metric
from deepretrieval_trainer.rewriting.rewriters import BaseRewriter
from deepretrieval_trainer.rewriting.tasks import HYDE_TASK


@pytest.fixture(scope="module")
def scifact_search(scifact_dev):
    return BM25Search(scifact_dev.corpus)


class EchoRewriter(BaseRewriter):
    """Answers every query with itself (plus ``suffix``), through the real prompt and parser."""

    def __init__(self, suffix: str = "", **kwargs):
        super().__init__(**kwargs)
        self.suffix = suffix
        self.calls = 0

    def _complete(self, conversations):
        self.calls += 1
        queries = [c[-1]["content"].removeprefix("Query: ") for c in conversations]
        return [f'x</think><answer>{json.dumps({"query": q + self.suffix})}</answer>' for q in queries]


def test_raw_numbers_match_the_core_metrics_on_scifact_dev(scifact_dev, scifact_search):
    report = evaluate(scifact_dev, scifact_search, [Source("raw")], progress=False)
    queries = scifact_dev.judged_queries
    assert report.queries == len(queries) == len(scifact_dev.qrels)
    run = dict(zip(queries, scifact_search.search(list(queries.values()), 1000), strict=True))
    raw = report.source("raw")
    for name, (fn, k) in METRICS.items():
        metric = {"ndcg@10": "ndcg", "mrr": "mrr"}.get(name, "recall")
        assert raw.means[name] == pytest.approx(mean_metric(metric, run, scifact_dev.qrels, k), abs=1e-12), name
    assert raw.means["ndcg@10"] > 0.6  # the BM25 sanity figure of this collection is 0.659 on the full split
    assert raw.fallback_rate == 0 and raw.comparison is None
    assert all(o.search_query == o.query for o in raw.outcomes)


def test_scripted_sources_are_compared_per_query_with_raw(scifact_dev, scifact_search, scripted_rewriter,
                                                         failing_rewriter):
    sources = [
        Source("echo", EchoRewriter()),
        Source("constant", scripted_rewriter()),
        Source("failing", failing_rewriter),
    ]
    report = evaluate(scifact_dev, scifact_search, sources, limit=40, progress=False)
    assert [s.name for s in report.sources] == ["raw", "echo", "constant", "failing"]
    raw, echo, constant, failing = report.sources
    assert report.queries == 40 and [o.qid for o in raw.outcomes] == list(scifact_dev.judged_queries)[:40]
    # the same query text gives the same ranking: all ties, no evidence of a difference
    assert echo.means == raw.means
    assert (echo.comparison.wins, echo.comparison.ties, echo.comparison.losses) == (0, 40, 0)
    assert echo.comparison.p_value == 1.0 and echo.fallback_rate == 0
    # one fixed query for every claim loses nearly everywhere, significantly
    c = constant.comparison
    assert c.wins + c.ties + c.losses == 40 and c.losses > 30
    assert c.mean_delta == pytest.approx(constant.means["ndcg@10"] - raw.means["ndcg@10"])
    assert c.p_value < 1e-6
    assert {o.search_query for o in constant.outcomes} == {"scripted rewrite"}
    # a dead backend falls back to the original query: raw's numbers, 100% fallback, reasons kept
    assert failing.fallback_rate == 1.0 and failing.means == raw.means
    assert all("backend unreachable" in o.reason for o in failing.outcomes)


def test_include_original_searches_query_plus_rewrite(adi_test):
    search = BM25Search(adi_test.corpus)
    report = evaluate(adi_test, search, [Source("hyde-like", EchoRewriter(" extra words"), include_original=True)],
                      limit=3, progress=False)
    for outcome in report.source("hyde-like").outcomes:
        assert outcome.search_query == f"{outcome.query} {outcome.query} extra words"


def test_rewrites_are_cached_per_source_identity(adi_test, tmp_path, failing_rewriter):
    search = BM25Search(adi_test.corpus)
    first = evaluate(adi_test, search, [Source("echo", EchoRewriter(" retrieval"), identity="echo-v1")],
                     out_dir=tmp_path, progress=False)
    assert (tmp_path / "rewrites" / "echo.jsonl").is_file()
    # same identity: the (dead) rewriter is never asked, the cached rewrites are searched again
    again = evaluate(adi_test, search, [Source("echo", failing_rewriter, identity="echo-v1")],
                     out_dir=tmp_path, progress=False)
    assert again.source("echo").fallback_rate == 0
    assert again.source("echo").means == first.source("echo").means
    assert [o.rewrite_latency_s for o in again.source("echo").outcomes] == [
        o.rewrite_latency_s for o in first.source("echo").outcomes]
    # another identity (e.g. new adapter weights): rewritten again
    changed = evaluate(adi_test, search, [Source("echo", failing_rewriter, identity="echo-v2")],
                       out_dir=tmp_path, progress=False)
    assert changed.source("echo").fallback_rate == 1.0


class GarbageRewriter(BaseRewriter):
    """Every other completion is unparsable: half the queries fall back."""

    def _complete(self, conversations):
        return ["no tags at all" if i % 2 else 'x</think><answer>{"query": "retrieval"}</answer>'
                for i, _ in enumerate(conversations)]


def test_fallbacks_are_summarised_once_per_source_not_warned_per_query(adi_test, caplog):
    search = BM25Search(adi_test.corpus)
    with caplog.at_level(logging.WARNING):
        report = evaluate(adi_test, search, [Source("garbage", GarbageRewriter())], limit=6, batch_size=6,
                          progress=False)
    assert report.source("garbage").fallback_rate == 0.5
    assert all("no <answer> tag" in o.reason for o in report.source("garbage").outcomes if o.fell_back)
    lines = [r.getMessage() for r in caplog.records if "fell back" in r.getMessage()]
    assert lines == ["source garbage: 3 of 6 rewrites fell back to the original query (no <answer> tag in the "
                     "completion: 3); the fallback column counts them and results.json gives each query's reason"]
    # outside an evaluation the rewriter still warns per query, as a pipeline component must
    with caplog.at_level(logging.WARNING):
        caplog.clear()
        GarbageRewriter().rewrite(["a", "b"])
    assert sum("fell back to the original query 'b'" in r.getMessage() for r in caplog.records) == 1


def test_no_new_words_rate_says_how_often_a_source_searched_only_the_users_words(adi_test):
    search = BM25Search(adi_test.corpus)
    sources = [Source("echo", EchoRewriter(), include_original=True),
               Source("extra", EchoRewriter(suffix=" retrieval systems"), include_original=True),
               Source("garbage", GarbageRewriter())]
    report = evaluate(adi_test, search, sources, limit=6, batch_size=6, progress=False)
    rates = {s.name: s.no_new_words_rate for s in report.sources}
    # of adi's first six queries only the fifth already says "information retrieval systems"
    assert rates["raw"] == rates["echo"] == 1.0
    assert rates["extra"] == pytest.approx(1 / 6)
    # garbage: queries 2, 4, 6 fall back and are left out; of 1, 3, 5 (searched as "retrieval"), 5 has the word
    assert rates["garbage"] == pytest.approx(1 / 3)
    assert report.source("extra").summary()["no_new_words_rate"] == pytest.approx(1 / 6)


def test_paired_t_test_matches_the_textbook_formula():
    ours, theirs = [0.5, 0.7, 0.2, 0.9, 0.4], [0.4, 0.5, 0.3, 0.6, 0.4]
    deltas = [a - b for a, b in zip(ours, theirs)]
    mean = sum(deltas) / len(deltas)
    sd = math.sqrt(sum((d - mean) ** 2 for d in deltas) / (len(deltas) - 1))
    t, p = paired_t_test(ours, theirs)
    assert t == pytest.approx(mean / (sd / math.sqrt(len(deltas))))
    assert 0.05 < p < 0.5
    assert paired_t_test([0.1], [0.2]) == (None, None)
    assert paired_t_test([0.3, 0.4], [0.3, 0.4]) == (0.0, 1.0)


def test_limit_and_names_are_validated(adi_test):
    assert list(select_queries(adi_test, 2)) == list(adi_test.judged_queries)[:2]
    with pytest.raises(ValueError, match="limit=0"):
        select_queries(adi_test, 0)
    with pytest.raises(ValueError, match="distinct name"):
        evaluate(adi_test, BM25Search(adi_test.corpus), [Source("a"), Source("a")], progress=False)
    with pytest.raises(ValueError, match="unchanged-query baseline"):
        evaluate(adi_test, BM25Search(adi_test.corpus), [Source("raw", EchoRewriter())], progress=False)
    with pytest.raises(ValueError, match="letters, digits"):
        Source("two words")


def test_parse_source_forms(tmp_path):
    assert parse_source("raw") == Source("raw")
    base = parse_source("base")
    assert base.name == "base" and base.rewriter.adapter is None and base.identity and not base.include_original
    hyde = parse_source("hyde")
    assert hyde.include_original and hyde.rewriter.task is HYDE_TASK and hyde.identity != base.identity
    with pytest.raises(FileNotFoundError, match="adapter_config.json"):
        parse_source(f"trained=adapter:{tmp_path}")
    run = tmp_path / "my-run"
    (run / "adapter").mkdir(parents=True)
    (run / "adapter" / "adapter_config.json").write_text("{}")
    (run / "adapter" / "adapter_model.safetensors").write_bytes(b"v1")
    named = parse_source(f"trained=adapter:{run}")
    assert named.name == "trained" and named.rewriter.adapter == run / "adapter"
    unnamed = parse_source(f"adapter:{run}")
    assert unnamed.name == "adapter:my-run"
    (run / "adapter" / "adapter_model.safetensors").write_bytes(b"v2")
    assert parse_source(f"adapter:{run}").identity != unnamed.identity  # retrained weights invalidate the cache
    for bad in ("bm25", "adapter:", "server:http://localhost:8000/v1", "raw:x"):
        with pytest.raises(ValueError, match="not understood"):
            parse_source(bad)


def test_report_outputs(adi_test, tmp_path, scripted_rewriter):
    report = evaluate(adi_test, BM25Search(adi_test.corpus), [Source("constant", scripted_rewriter())],
                      limit=5, progress=False)
    table = format_table(report)
    assert "raw" in table and "constant" in table and "nDCG@10" in table and "first 5 judged queries" in table
    markdown = to_markdown(report)
    assert markdown.count("\n| ") == 3  # header + two sources
    paths = write_outputs(report, tmp_path / "out")
    data = json.loads(paths["json"].read_text())
    assert [s["name"] for s in data["summary"]] == ["raw", "constant"]
    assert len(data["per_query"]["constant"]) == 5
    assert data["summary"][1]["vs_raw"]["wins"] + data["summary"][1]["vs_raw"]["ties"] + \
        data["summary"][1]["vs_raw"]["losses"] == 5
    assert data["summary"][1]["vs_raw"]["test"].endswith("per-query ndcg@10")
    # a comparison on another metric says which metric it tested (a Recall@100 row once claimed nDCG@10)
    recall = compare(report.source("constant"), report.source("raw"), metric="recall@100")
    assert recall.test.endswith("per-query recall@100")
    assert paths["chart"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_dead_server_source_falls_back_for_every_query(adi_test):
    # the real OpenAI-compatible client against a closed loopback port: every rewrite falls back, none raises
    source = parse_source("server:http://127.0.0.1:9/v1#rw", max_new_tokens=16)
    assert source.name == "server:rw" and source.identity
    report = evaluate(adi_test, BM25Search(adi_test.corpus), [source], limit=2, progress=False)
    served = report.source("server:rw")
    assert served.fallback_rate == 1.0 and served.means == report.source("raw").means


@pytest.mark.slow
def test_eval_command_with_the_real_model_on_haystack(data_dir, tmp_path, capsys):
    from deepretrieval_trainer.cli import main

    argv = ["eval", "--data", str(data_dir / "adi"), "--split", "test", "--framework", "haystack", "--limit", "3",
            "--source", "base", "--source", "hyde", "--max-new-tokens", "48", "--out", str(tmp_path), "--no-progress"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "retriever: haystack bm25" in out and "first 3 judged queries" in out
    first = json.loads((tmp_path / "results.json").read_text())
    assert [s["name"] for s in first["summary"]] == ["raw", "base", "hyde"]
    hyde = first["per_query"]["hyde"]
    for row in hyde:
        if not row["fell_back"]:  # HyDE searches the query followed by the model's passage
            assert row["search_query"].startswith(row["query"] + " ") and len(row["search_query"]) > len(row["query"]) + 20
    assert any(not row["fell_back"] for row in hyde)
    assert all(row["rewrite_latency_s"] > 0 for row in first["per_query"]["base"])
    # a re-run reads the rewrites from the cache: same queries and latencies, same numbers
    assert main(argv) == 0
    second = json.loads((tmp_path / "results.json").read_text())
    for name in ("base", "hyde"):
        assert [(r["search_query"], r["rewrite_latency_s"]) for r in second["per_query"][name]] == [
            (r["search_query"], r["rewrite_latency_s"]) for r in first["per_query"][name]]
    assert [s["metrics"] for s in second["summary"]] == [s["metrics"] for s in first["summary"]]
