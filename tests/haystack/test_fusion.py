"""QueryFusionJoiner, the deployment side of framing 'fuse', in real Haystack pipelines over ADI: the served ranking is
the core's fused_search ranking (the reward's), for a rewrite and for a fallback; serialization and errors."""

from __future__ import annotations

import inspect
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from haystack import Document, Pipeline
from haystack.components.joiners import DocumentJoiner
from haystack.components.retrievers.in_memory import InMemoryBM25Retriever

import haystack_deepretrieval
from deepretrieval_trainer.retrieval.framing import FUSION_DEPTH, fused_search
from haystack_deepretrieval import DeepRetrievalQueryRewriter, HaystackSearch, QueryFusionJoiner
from tests.conftest import collection_path
from tests.haystack.conftest import VALID_COMPLETION

ROOT = Path(__file__).resolve().parents[2]
REWRITES = ["automatic thesaurus retrieval system", "citation indexing of scientific documents"]
GARBAGE = "I would search for something, but I will not say what."
QUERY_IDS = ["1", "2", "5", "9", "17"]


@pytest.fixture(scope="module")
def adi_search() -> HaystackSearch:
    """The reward's retriever: InMemoryBM25Retriever over ADI; the pipelines below use its document store."""
    return HaystackSearch.from_beir(collection_path("adi"))


def fusion_pipeline(rewriter: DeepRetrievalQueryRewriter, store, joiner) -> Pipeline:
    """The documented fuse pipeline, with the rewrite's retriever named to sort before the query's (names can decide
    which of DocumentJoiner's lists comes first: see below); named inputs do not care."""
    pipe = Pipeline()
    pipe.add_component("rewriter", rewriter)
    pipe.add_component("a_rewrite_retriever", InMemoryBM25Retriever(document_store=store, top_k=FUSION_DEPTH))
    pipe.add_component("query_retriever", InMemoryBM25Retriever(document_store=store, top_k=FUSION_DEPTH))
    pipe.add_component("joiner", joiner)
    pipe.connect("rewriter.query", "a_rewrite_retriever.query")
    pipe.connect("a_rewrite_retriever.documents", "joiner.rewrite_documents")
    pipe.connect("query_retriever.documents", "joiner.query_documents")
    return pipe


def run(pipe: Pipeline, query: str) -> dict:
    return pipe.run({"rewriter": {"query": query}, "query_retriever": {"query": query}},
                    include_outputs_from={"rewriter"})


def scripted(scripted_rewriter, completion: str) -> DeepRetrievalQueryRewriter:
    return DeepRetrievalQueryRewriter.from_rewriter(scripted_rewriter(completion))


def test_the_pipeline_ranks_as_the_reward_does(adi_search, adi_test, scripted_rewriter):
    store = adi_search.retriever.document_store
    for rewrite in REWRITES:
        pipe = fusion_pipeline(scripted(scripted_rewriter, VALID_COMPLETION % rewrite), store,
                               QueryFusionJoiner(query_weight=3, top_k=10))
        for qid in QUERY_IDS:
            query = adi_test.queries[qid]
            out = run(pipe, query)
            assert out["rewriter"]["query"] == rewrite and not out["rewriter"]["meta"]["fell_back"]
            served = out["joiner"]["documents"]
            assert [d.id for d in served] == fused_search(adi_search, [query], [rewrite], 10, 3)[0], (rewrite, qid)
            # each document carries its fused score: 3 x the query's score + the rewrite's (0 where it is missing)
            retriever = InMemoryBM25Retriever(document_store=store, top_k=FUSION_DEPTH)
            alone = [{d.id: d.score for d in retriever.run(query=text)["documents"]} for text in (query, rewrite)]
            for document in served:
                expected = 3 * alone[0].get(document.id, 0.0) + alone[1].get(document.id, 0.0)
                assert document.score == pytest.approx(expected, rel=1e-12)
            assert [d.score for d in served] == sorted((d.score for d in served), reverse=True)
            assert all(d.content for d in served)  # the retrievers' documents, re-scored


def test_a_fallback_serves_the_query_own_ranking_as_the_reward_does(adi_search, adi_test, scripted_rewriter):
    """On fallback the rewriter's query is the user's: fusing it with itself gives the user's query's own ranking,
    which is what the core's fused_search gives for a rewrite of None (the reward's fallback)."""
    store = adi_search.retriever.document_store
    pipe = fusion_pipeline(scripted(scripted_rewriter, GARBAGE), store, QueryFusionJoiner(query_weight=3, top_k=10))
    for qid in QUERY_IDS:
        query = adi_test.queries[qid]
        out = run(pipe, query)
        assert out["rewriter"]["meta"]["fell_back"] and out["rewriter"]["query"] == query
        raw = fused_search(adi_search, [query], [None], 10, 3)[0]
        assert raw == adi_search.search([query], 10)[0]
        assert [d.id for d in out["joiner"]["documents"]] == raw, qid
    # the same claim through the core alone, on every judged ADI query: fusing a query with itself == no rewrite
    queries = [adi_test.queries[qid] for qid in adi_test.judged_queries]
    for weight in (1, 3):
        assert (fused_search(adi_search, queries, queries, 10, weight)
                == fused_search(adi_search, queries, [None] * len(queries), 10, weight))


def retrievers_pipeline(store, joiner) -> Pipeline:
    """Both retrievers fed by the caller, so Pipeline.run runs them in name order: the rewrite's one first."""
    named = isinstance(joiner, QueryFusionJoiner)
    pipe = Pipeline()
    pipe.add_component("a_rewrite_retriever", InMemoryBM25Retriever(document_store=store, top_k=FUSION_DEPTH))
    pipe.add_component("query_retriever", InMemoryBM25Retriever(document_store=store, top_k=FUSION_DEPTH))
    pipe.add_component("joiner", joiner)
    pipe.connect("query_retriever.documents", "joiner.query_documents" if named else "joiner.documents")
    pipe.connect("a_rewrite_retriever.documents", "joiner.rewrite_documents" if named else "joiner.documents")
    return pipe


def test_document_joiner_weights_lists_in_arrival_order(adi_search, adi_test):
    """Why the component exists: DocumentJoiner(merge, weights=[3, 1]) with the query's retriever connected first
    weights the REWRITE 3, because its variadic input takes the lists in the order their senders ran (here the
    retrievers' name order; under run_async, whichever answers first). Named inputs cannot be swapped."""
    store = adi_search.retriever.document_store
    ours = retrievers_pipeline(store, QueryFusionJoiner(query_weight=3, top_k=10))
    theirs = retrievers_pipeline(store, DocumentJoiner(join_mode="merge", weights=[3, 1], top_k=10))
    rewrite = REWRITES[0]
    swapped = 0
    for qid in QUERY_IDS:
        query = adi_test.queries[qid]
        data = {"a_rewrite_retriever": {"query": rewrite}, "query_retriever": {"query": query}}
        expected = fused_search(adi_search, [query], [rewrite], 10, 3)[0]
        assert [d.id for d in ours.run(data)["joiner"]["documents"]] == expected
        joined = [d.id for d in theirs.run(data)["joiner"]["documents"]]
        assert joined == fused_search(adi_search, [rewrite], [query], 10, 3)[0]  # the rewrite weighted 3
        swapped += joined != expected
    assert swapped


def test_pipeline_run_async_gives_the_same_ranking(adi_search, adi_test, scripted_rewriter):
    import asyncio

    store = adi_search.retriever.document_store
    pipe = fusion_pipeline(scripted(scripted_rewriter, VALID_COMPLETION % REWRITES[0]), store,
                           QueryFusionJoiner(query_weight=3, top_k=10))
    query = adi_test.queries["1"]
    out = asyncio.run(pipe.run_async({"rewriter": {"query": query}, "query_retriever": {"query": query}}))
    assert [d.id for d in out["joiner"]["documents"]] == fused_search(adi_search, [query], [REWRITES[0]], 10, 3)[0]


def doc(doc_id: str, score: float | None, **meta) -> Document:
    return Document(id=doc_id, content=f"text of {doc_id}", score=score, meta=meta)


def test_run_fuses_named_lists_keeps_documents_and_first_ranks():
    joiner = QueryFusionJoiner(query_weight=2)
    query = [doc("a", 1.0, source="query"), doc("b", 0.5, source="query"), doc("a", 9.0, source="again")]
    rewrite = [doc("b", 2.0, source="rewrite"), doc("c", 1.5, source="rewrite")]
    out = joiner.run(query_documents=query, rewrite_documents=rewrite)["documents"]
    # b: 2 x 0.5 + 2.0 = 3; a: 2 x 1.0 (its repeat further down is ignored, as HaystackSearch reads rankings) = 2;
    # c: 1.5; equal sums would keep the query's order, then the rewrite's
    assert [(d.id, d.score) for d in out] == [("b", 3.0), ("a", 2.0), ("c", 1.5)]
    assert [d.meta["source"] for d in out] == ["query", "query", "rewrite"]  # the query's document where both hold it
    assert query[1].score == 0.5  # inputs are not modified
    two = joiner.run(query_documents=query, rewrite_documents=rewrite, top_k=2)["documents"]
    assert [d.id for d in two] == ["b", "a"]
    assert QueryFusionJoiner(top_k=1).run(query_documents=query, rewrite_documents=rewrite)["documents"][0].id == "b"
    assert joiner.run(query_documents=[], rewrite_documents=[])["documents"] == []
    tie = joiner.run(query_documents=[doc("q", 0.5)], rewrite_documents=[doc("r", 1.0)])["documents"]
    assert [d.id for d in tie] == ["q", "r"]


def test_a_document_without_a_score_is_an_error_naming_the_fix():
    joiner = QueryFusionJoiner(query_weight=3)
    with pytest.raises(ValueError, match=r"'n' in rewrite_documents came back without a score.*retrievers that return"):
        joiner.run(query_documents=[doc("a", 1.0)], rewrite_documents=[doc("n", None)])
    with pytest.raises(ValueError, match=r"'n' in query_documents .*framing 'expand'"):
        joiner.run(query_documents=[doc("n", None)], rewrite_documents=[])


@pytest.mark.parametrize("bad", [0, -1, 2.5, True, "3", None])
def test_a_bad_query_weight_is_an_error_naming_the_fix(bad):
    with pytest.raises(ValueError, match=r"query_weight=.* must be a whole number >= 1"):
        QueryFusionJoiner(query_weight=bad)
    data = {"type": "haystack_deepretrieval.fusion.QueryFusionJoiner", "init_parameters": {"query_weight": bad}}
    with pytest.raises(ValueError, match="must be a whole number >= 1"):
        QueryFusionJoiner.from_dict(data)


@pytest.mark.parametrize("bad", [0, -2, 1.5, False, "10"])
def test_a_bad_top_k_is_an_error(bad):
    with pytest.raises(ValueError, match=r"top_k=.* must be a whole number >= 1, or None"):
        QueryFusionJoiner(top_k=bad)
    with pytest.raises(ValueError, match=r"top_k=.* must be a whole number >= 1, or None"):
        QueryFusionJoiner().run(query_documents=[], rewrite_documents=[], top_k=bad)


def test_init_is_keyword_only_and_every_parameter_round_trips():
    params = [p for p in inspect.signature(QueryFusionJoiner.__init__).parameters.values() if p.name != "self"]
    assert all(p.kind is p.KEYWORD_ONLY for p in params)
    with pytest.raises(TypeError):
        QueryFusionJoiner(3)  # type: ignore[misc]
    for values in ({"query_weight": 3, "top_k": 10}, {"query_weight": 1, "top_k": None}):
        assert sorted(values) == sorted(p.name for p in params)
        original = QueryFusionJoiner(**values)
        data = original.to_dict()
        assert data == {"type": "haystack_deepretrieval.fusion.QueryFusionJoiner", "init_parameters": values}
        restored = QueryFusionJoiner.from_dict(data)
        assert {name: getattr(restored, name) for name in values} == values
        assert restored.to_dict() == data
    assert haystack_deepretrieval.QueryFusionJoiner is QueryFusionJoiner


def test_yaml_round_trip_loads_and_ranks_as_the_reward_does(chat_server, adi_search, adi_test):
    chat_server.completion = VALID_COMPLETION % REWRITES[1]
    rewriter = DeepRetrievalQueryRewriter(backend="openai", model="adi-fuse", base_url=chat_server.base_url,
                                          max_retries=0)
    store = adi_search.retriever.document_store
    text = fusion_pipeline(rewriter, store, QueryFusionJoiner(query_weight=3, top_k=10)).dumps()
    assert "type: haystack_deepretrieval.fusion.QueryFusionJoiner" in text
    loaded = Pipeline.loads(text)
    assert loaded.to_dict() == Pipeline.loads(loaded.dumps()).to_dict()
    assert loaded.get_component("joiner").to_dict()["init_parameters"] == {"query_weight": 3, "top_k": 10}
    query = adi_test.queries["2"]
    out = run(loaded, query)  # the loaded stores share the in-memory index of adi_search's store
    assert out["rewriter"]["query"] == REWRITES[1]
    assert [d.id for d in out["joiner"]["documents"]] == fused_search(adi_search, [query], [REWRITES[1]], 10, 3)[0]


FRESH_PROCESS = textwrap.dedent("""
    import json, sys
    from haystack import Document, Pipeline
    from haystack_deepretrieval import QueryFusionJoiner  # registers the plugin with Haystack's allowlist
    pipe = Pipeline.loads(open(sys.argv[1]).read())
    docs = pipe.run({"joiner": {"query_documents": [Document(id="a", score=1.0)],
                                "rewrite_documents": [Document(id="b", score=2.5)]}})["joiner"]["documents"]
    print(json.dumps([[d.id, d.score] for d in docs]))
""")


def test_a_fresh_process_loads_yaml_naming_only_the_joiner(tmp_path):
    pipe = Pipeline()
    pipe.add_component("joiner", QueryFusionJoiner(query_weight=2, top_k=5))
    yaml_file = tmp_path / "joiner.yaml"
    yaml_file.write_text(pipe.dumps())
    done = subprocess.run([sys.executable, "-c", FRESH_PROCESS, str(yaml_file)], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == [["b", 2.5], ["a", 2.0]]
