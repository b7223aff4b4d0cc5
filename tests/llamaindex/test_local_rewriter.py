"""The embedded SmolLM2 rewriter (in-process, real model) inside a LlamaIndex BM25 pipeline on SciFact."""

from __future__ import annotations

import pytest
from llama_index.core.retrievers import TransformRetriever

from llamaindex_deepretrieval import DeepRetrievalQueryTransform, DeepRetrievalRetriever, QueryRewriteEvent

QUERY = "Vitamin D deficiency is linked to bone loss."

pytestmark = pytest.mark.slow


def rewrite_events(events) -> list[QueryRewriteEvent]:
    return [e for e in events if isinstance(e, QueryRewriteEvent)]


async def test_local_model_rewrite_reaches_the_retriever(local_rewriter, recording_bm25, events):
    # local_rewriter is strict: an unparsable completion raises instead of falling back, so the model really rewrote
    nodes = TransformRetriever(recording_bm25, DeepRetrievalQueryTransform(rewriter=local_rewriter)).retrieve(QUERY)
    anodes = await DeepRetrievalRetriever(recording_bm25, rewriter=local_rewriter).aretrieve(QUERY)

    sync_event, async_event = rewrite_events(events)
    assert not sync_event.fell_back and sync_event.rewritten
    assert sync_event.query == async_event.query  # greedy decoding: the same rewrite both ways
    assert [b.query_str for b in recording_bm25.received] == [sync_event.query, async_event.query]
    assert len(nodes) == len(anodes) == 10
    assert sync_event.latency_s > 0
