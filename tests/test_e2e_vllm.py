"""End to end on a real vLLM server on loopback: the embedded SmolLM2 checkpoint served with a LoRA adapter, driving
a LlamaIndex BM25 query engine and a Haystack pipeline over ../shared/data/adi, sync and async; hot-swapping an
adapter into the running server; the server stopped mid-run (both pipelines answer with the original query and log
why) and restarted (rewrites resume).

The server is the session fixture ``vllm_server`` (tests/vllm_fixtures.py): one start per session plus the one
restart below; it is stopped (process group) at session end, also when a test fails. Tests run in file order.
"""

from __future__ import annotations

import logging
import os

os.environ.setdefault("HAYSTACK_TELEMETRY_ENABLED", "False")  # no network here: telemetry only retries and warns

import httpx
import pytest
from haystack import Pipeline
from llama_index.core.llms.mock import MockLLM
from llama_index.core.query_engine import RetrieverQueryEngine, TransformQueryEngine
from llama_index.core.response_synthesizers.no_text import NoText

from deepretrieval_trainer.rewriting.openai_compat import OpenAIRewriter
from deepretrieval_trainer.rewriting.serve import load_adapter, unload_adapter
from haystack_deepretrieval import DeepRetrievalQueryRewriter
from llamaindex_deepretrieval import DeepRetrievalQueryTransform, DeepRetrievalRetriever
from llamaindex_deepretrieval.bm25 import build_beir_bm25
from tests.conftest import collection_path
from tests.haystack.conftest import RecordingBM25Retriever as HaystackRecordingRetriever
from tests.llamaindex.conftest import RecordingBM25Retriever as LlamaRecordingRetriever
from tests.vllm_fixtures import SERVED_NAME, make_peft_adapter

pytestmark = [pytest.mark.slow, pytest.mark.vllm]
QUERIES = 3  # ADI test queries per pipeline run: enough to see real rewrites, few enough for a small CPU


@pytest.fixture(scope="module")
def queries(adi_test) -> list[str]:
    return [adi_test.queries[qid] for qid in sorted(adi_test.judged_queries, key=int)[:QUERIES]]


@pytest.fixture(scope="module")
def adi_llama_bm25():
    return build_beir_bm25(collection_path("adi"))


@pytest.fixture
def llama_retriever(adi_llama_bm25) -> LlamaRecordingRetriever:
    retriever = LlamaRecordingRetriever(existing_bm25=adi_llama_bm25.bm25, stemmer=adi_llama_bm25.stemmer,
                                        similarity_top_k=10)
    retriever.corpus = adi_llama_bm25.corpus
    return retriever


@pytest.fixture(scope="module")
def adi_store():
    from haystack.document_stores.in_memory import InMemoryDocumentStore

    from haystack_deepretrieval import beir_documents

    store = InMemoryDocumentStore(index="deepretrieval-e2e-adi")
    store.write_documents(beir_documents(collection_path("adi")))
    return store


def haystack_pipeline(base_url: str, store, **options) -> tuple[Pipeline, HaystackRecordingRetriever]:
    retriever = HaystackRecordingRetriever(document_store=store, top_k=10)
    pipe = Pipeline()
    pipe.add_component("rewriter", DeepRetrievalQueryRewriter(backend="openai", model=SERVED_NAME, base_url=base_url,
                                                             **options))
    pipe.add_component("retriever", retriever)
    pipe.connect("rewriter.query", "retriever.query")
    return pipe, retriever


@pytest.fixture(scope="module")
def expected(vllm_server, queries) -> dict[str, str]:
    """What the served model rewrites each query to (greedy, so every later call must give the same)."""
    with OpenAIRewriter(SERVED_NAME, base_url=vllm_server.base_url) as rewriter:
        results = [rewriter.rewrite([q])[0] for q in queries]  # one at a time, like the pipelines below
    rewritten = [r for r in results if not r.fell_back and r.query != r.original]
    assert rewritten, f"the served model rewrote none of {queries}: {[r.reason for r in results]}"
    return {r.original: r.query for r in results}


@pytest.fixture(scope="module")
def rewritten(expected) -> str:
    """A query the served model really rewrites (to something else than itself)."""
    return next(q for q, rewrite in expected.items() if rewrite != q)


def test_llamaindex_query_engine_and_retriever_get_the_served_rewrite(vllm_server, queries, expected,
                                                                       llama_retriever):
    with OpenAIRewriter(SERVED_NAME, base_url=vllm_server.base_url) as rewriter:
        engine = TransformQueryEngine(
            RetrieverQueryEngine(llama_retriever, response_synthesizer=NoText(llm=MockLLM())),
            query_transform=DeepRetrievalQueryTransform(rewriter=rewriter, mode="replace"),
        )
        responses = [engine.query(q) for q in queries]
    assert [b.query_str for b in llama_retriever.received] == [expected[q] for q in queries]
    direct = llama_retriever.retrieve(expected[queries[0]])
    assert [n.node.node_id for n in responses[0].source_nodes] == [n.node.node_id for n in direct]


async def test_llamaindex_async_paths(vllm_server, rewritten, expected, llama_retriever):
    async with OpenAIRewriter(SERVED_NAME, base_url=vllm_server.base_url) as rewriter:
        wrapped = DeepRetrievalRetriever(llama_retriever, rewriter=rewriter)
        nodes = await wrapped.aretrieve(rewritten)
        engine = TransformQueryEngine(
            RetrieverQueryEngine(llama_retriever, response_synthesizer=NoText(llm=MockLLM())),
            query_transform=DeepRetrievalQueryTransform(rewriter=rewriter),
        )
        await engine.aquery(rewritten)
    assert [b.query_str for b in llama_retriever.received] == [expected[rewritten]] * 2
    assert nodes


async def test_haystack_pipeline_gets_the_served_rewrite_sync_and_async(vllm_server, queries, rewritten, expected,
                                                                        adi_store):
    pipe, retriever = haystack_pipeline(vllm_server.base_url, adi_store)
    outs = [pipe.run({"rewriter": {"query": q}}, include_outputs_from={"rewriter"}) for q in queries]
    outs.append(await pipe.run_async({"rewriter": {"query": rewritten}}, include_outputs_from={"rewriter"}))
    assert retriever.received == [expected[q] for q in [*queries, rewritten]]
    assert [o["rewriter"]["query"] for o in outs] == retriever.received
    assert all(o["retriever"]["documents"] for o in outs)
    component = pipe.get_component("rewriter").to_dict()["init_parameters"]
    assert component["base_url"] == vllm_server.base_url and component["model"] == SERVED_NAME


def test_hot_swap_adapters_in_the_running_server(vllm_server, rewritten, expected, served_adapter, tmp_path):
    """Runtime LoRA loading: add a second adapter under a new name, replace an adapter in place, unload."""
    other = make_peft_adapter(tmp_path / "other", seed=1, scale=0.3)  # B != 0, large: this adapter changes the text
    load_adapter(vllm_server.base_url, "swapped", other, replace=False)
    served = {m["id"] for m in httpx.get(vllm_server.base_url + "/models").json()["data"]}
    assert {SERVED_NAME, "swapped"} <= served
    with OpenAIRewriter("swapped", base_url=vllm_server.base_url) as rewriter:
        changed = rewriter.rewrite([rewritten])[0]
    with OpenAIRewriter(SERVED_NAME, base_url=vllm_server.base_url) as rewriter:
        base = rewriter.rewrite([rewritten])[0]
        assert base.query == expected[rewritten]
        assert changed.completion != base.completion  # the other adapter really serves different weights
        load_adapter(vllm_server.base_url, SERVED_NAME, other)  # in place: same name, newer weights
        assert rewriter.rewrite([rewritten])[0].completion == changed.completion
        load_adapter(vllm_server.base_url, SERVED_NAME, served_adapter)  # and back
        assert rewriter.rewrite([rewritten])[0].completion == base.completion
    unload_adapter(vllm_server.base_url, "swapped")
    assert "swapped" not in {m["id"] for m in httpx.get(vllm_server.base_url + "/models").json()["data"]}


async def test_server_stopped_mid_run_falls_back_then_rewrites_resume(vllm_server, rewritten, expected, adi_store,
                                                                       llama_retriever, caplog):
    pipe, hay_retriever = haystack_pipeline(vllm_server.base_url, adi_store, max_retries=1, timeout=120.0)
    rewriter = OpenAIRewriter(SERVED_NAME, base_url=vllm_server.base_url, max_retries=1, timeout=120.0)
    llama = DeepRetrievalRetriever(llama_retriever, rewriter=rewriter)
    query = rewritten
    assert pipe.run({"rewriter": {"query": query}})["retriever"]["documents"]
    assert llama.retrieve(query)
    vllm_server.stop()
    with caplog.at_level(logging.WARNING):
        hay_sync = pipe.run({"rewriter": {"query": query}}, include_outputs_from={"rewriter"})
        hay_async = await pipe.run_async({"rewriter": {"query": query}}, include_outputs_from={"rewriter"})
        assert llama.retrieve(query) and await llama.aretrieve(query)
    assert hay_retriever.received == [expected[query], query, query]
    assert [b.query_str for b in llama_retriever.received] == [expected[query], query, query]
    for out in (hay_sync, hay_async):
        assert out["rewriter"]["meta"]["fell_back"] is True and "cannot reach" in out["rewriter"]["meta"]["reason"]
        assert out["retriever"]["documents"]
    assert caplog.text.count("cannot reach") >= 4 and "fell back to the original" in caplog.text

    vllm_server.start()
    logging.getLogger(__name__).warning("vLLM restart took %.0f s", vllm_server.startup_s)
    hay_again = await pipe.run_async({"rewriter": {"query": query}}, include_outputs_from={"rewriter"})
    assert hay_again["rewriter"]["meta"]["fell_back"] is False
    assert llama.retrieve(query)
    assert hay_retriever.received[-1] == expected[query] == llama_retriever.received[-1].query_str
    await rewriter.aclose()
