"""The embedded SmolLM2 model through the component's local backend, in a BM25 pipeline on SciFact: the retriever
gets the model's rewrite (run and run_async), and the pipeline's YAML loads and runs to the same rewrite."""

from __future__ import annotations

import pytest
from haystack import Pipeline

from haystack_deepretrieval import DeepRetrievalQueryRewriter
from tests.haystack.conftest import RecordingBM25Retriever

pytestmark = pytest.mark.slow

# The embedded model rewrites this SciFact dev claim (greedy, 64 tokens) into a parsable answer.
QUERY = "61% of colorectal cancer patients are diagnosed with regional or distant metastases."


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread: oversubscribed threads on a small CPU generate ~10x slower than one."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def pipeline(one_torch_thread, scifact_store):
    """One warmed local-backend component for the module (a component belongs to one pipeline)."""
    rewriter = DeepRetrievalQueryRewriter(backend="local", max_tokens=64)
    rewriter.warm_up()
    pipe = Pipeline()
    pipe.add_component("rewriter", rewriter)
    pipe.add_component("retriever", RecordingBM25Retriever(document_store=scifact_store, top_k=10))
    pipe.connect("rewriter.query", "retriever.query")
    return pipe


@pytest.fixture(scope="module")
def sync_output(pipeline):
    retriever = pipeline.get_component("retriever")
    retriever.received.clear()
    out = pipeline.run({"rewriter": {"query": QUERY}}, include_outputs_from={"rewriter"})
    return out, list(retriever.received)


def test_retriever_gets_the_model_rewrite(sync_output):
    out, received = sync_output
    rewrite = out["rewriter"]["query"]
    assert out["rewriter"]["meta"]["fell_back"] is False, out["rewriter"]["meta"]
    assert rewrite != QUERY and received == [rewrite]
    assert out["rewriter"]["queries"] == [rewrite, QUERY]


async def test_retriever_gets_the_model_rewrite_async(pipeline, sync_output):
    retriever = pipeline.get_component("retriever")
    retriever.received.clear()
    out = await pipeline.run_async({"rewriter": {"query": QUERY}}, include_outputs_from={"rewriter"})
    assert retriever.received == [out["rewriter"]["query"]] == [sync_output[0]["rewriter"]["query"]]
    assert [d.id for d in out["retriever"]["documents"]] == [d.id for d in sync_output[0]["retriever"]["documents"]]


def test_yaml_round_trip_loads_and_runs_the_same_rewrite(pipeline, sync_output):
    loaded = Pipeline.loads(pipeline.dumps(), allowed_modules=["tests.haystack"])  # the recording retriever
    rewriter = loaded.get_component("rewriter")
    assert isinstance(rewriter, DeepRetrievalQueryRewriter) and rewriter.to_dict() == pipeline.get_component(
        "rewriter").to_dict()
    out = loaded.run({"rewriter": {"query": QUERY}}, include_outputs_from={"rewriter"})
    assert loaded.get_component("retriever").received == [sync_output[0]["rewriter"]["query"]]
    assert [d.id for d in out["retriever"]["documents"]] == [d.id for d in sync_output[0]["retriever"]["documents"]]
