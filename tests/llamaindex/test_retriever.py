"""DeepRetrievalRetriever: the wrapped retriever receives the rewrite, on the sync and the real async path."""

from __future__ import annotations

import asyncio
import logging

import pytest

from deepretrieval_trainer.rewriting.rewriters import BaseRewriter
from llamaindex_deepretrieval import DeepRetrievalQueryTransform, DeepRetrievalRetriever, QueryRewriteEvent

QUERY = "Vitamin D deficiency is linked to bone loss."
REWRITE = "vitamin D deficiency osteoporosis bone mineral density"
ANSWER = f'</think>\n<answer>{{"query": "{REWRITE}"}}</answer>'


class AsyncOnlyRewriter(BaseRewriter):
    """A backend with a native async path and no sync one, like an HTTP client used from an event loop."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.loop_running = None

    def _complete(self, conversations):
        raise AssertionError("the async retriever must not call the sync backend")

    async def _acomplete(self, conversations):
        await asyncio.sleep(0)
        self.loop_running = asyncio.get_running_loop().is_running()
        return [ANSWER for _ in conversations]


def ids(nodes) -> list[str]:
    return [n.node.node_id for n in nodes]


def test_sync_retrieve_sends_the_rewrite(recording_bm25, scifact_bm25, scripted_rewriter):
    retriever = DeepRetrievalRetriever(recording_bm25, rewriter=scripted_rewriter(completion=ANSWER))
    nodes = retriever.retrieve(QUERY)
    assert [b.query_str for b in recording_bm25.received] == [REWRITE]
    assert ids(nodes) == ids(scifact_bm25.retrieve(REWRITE))


async def test_async_retrieve_awaits_the_backend_and_sends_the_rewrite(recording_bm25, scifact_bm25, events):
    rewriter = AsyncOnlyRewriter()
    retriever = DeepRetrievalRetriever(recording_bm25, rewriter=rewriter)
    nodes = await retriever.aretrieve(QUERY)

    assert rewriter.loop_running is True
    assert [b.query_str for b in recording_bm25.received] == [REWRITE]
    assert ids(nodes) == ids(scifact_bm25.retrieve(REWRITE))
    (event,) = [e for e in events if isinstance(e, QueryRewriteEvent)]
    assert event.span_id.startswith("arewrite_query-") and event.query == REWRITE


async def test_async_fallback_still_returns_documents(recording_bm25, failing_rewriter, scripted_rewriter, caplog):
    for rewriter in (failing_rewriter, scripted_rewriter(completion="garbage")):
        with caplog.at_level(logging.WARNING):
            nodes = await DeepRetrievalRetriever(recording_bm25, rewriter=rewriter).aretrieve(QUERY)
        assert len(nodes) == 10
    assert [b.query_str for b in recording_bm25.received] == [QUERY, QUERY]
    assert caplog.text.count("fell back") == 2


def test_prompts_reach_through_the_retriever(recording_bm25, scripted_rewriter):
    retriever = DeepRetrievalRetriever(recording_bm25, rewriter=scripted_rewriter(), mode="embed", task="dense")
    assert isinstance(retriever.query_transform, DeepRetrievalQueryTransform)
    assert set(retriever.get_prompts()) == {"query_transform:system_prompt", "query_transform:user_prompt"}


def test_rejects_a_non_retriever(scripted_rewriter):
    with pytest.raises(TypeError, match="not a llama_index BaseRetriever"):
        DeepRetrievalRetriever(object(), rewriter=scripted_rewriter())


def _reward_ranking(scifact_bm25, rewrite, weight=3):
    """What the trainer's reward ranks for QUERY + rewrite under framing 'fuse' (deepretrieval_trainer.retrieval.framing)."""
    from deepretrieval_trainer.retrieval.framing import fused_search
    from llamaindex_deepretrieval import LlamaIndexSearch

    return fused_search(LlamaIndexSearch(scifact_bm25), [QUERY], [rewrite], 10, weight)[0]


def test_fuse_retrieves_query_and_rewrite_apart_and_ranks_as_the_reward(recording_bm25, scifact_bm25,
                                                                         scripted_rewriter):
    from llamaindex_deepretrieval import LlamaIndexSearch

    retriever = DeepRetrievalRetriever(recording_bm25, rewriter=scripted_rewriter(completion=ANSWER), mode="fuse",
                                       query_weight=3)
    nodes = retriever.retrieve(QUERY)
    assert [b.query_str for b in recording_bm25.received] == [QUERY, REWRITE]
    assert recording_bm25.similarity_top_k == 10  # raised to the fusion depth for the two calls only
    assert LlamaIndexSearch(scifact_bm25).ranking(nodes, 10) == _reward_ranking(scifact_bm25, REWRITE)
    assert len(nodes) == 10 and [n.score for n in nodes] == sorted((n.score for n in nodes), reverse=True)
    assert _reward_ranking(scifact_bm25, REWRITE, 1) != _reward_ranking(scifact_bm25, REWRITE, 3)  # the weight counts
    assert len(DeepRetrievalRetriever(recording_bm25, rewriter=scripted_rewriter(completion=ANSWER), mode="fuse",
                                      top_k=4).retrieve(QUERY)) == 4


async def test_fuse_async_path_ranks_the_same(recording_bm25, scifact_bm25):
    from llamaindex_deepretrieval import LlamaIndexSearch

    rewriter = AsyncOnlyRewriter()
    nodes = await DeepRetrievalRetriever(recording_bm25, rewriter=rewriter, mode="fuse", query_weight=3).aretrieve(QUERY)
    assert rewriter.loop_running is True
    assert LlamaIndexSearch(scifact_bm25).ranking(nodes, 10) == _reward_ranking(scifact_bm25, REWRITE)


def test_fuse_fallback_returns_the_query_own_ranking(recording_bm25, scifact_bm25, scripted_rewriter):
    from llamaindex_deepretrieval import LlamaIndexSearch

    nodes = DeepRetrievalRetriever(recording_bm25, rewriter=scripted_rewriter(completion="garbage"),
                                   mode="fuse", query_weight=3).retrieve(QUERY)
    assert [b.query_str for b in recording_bm25.received] == [QUERY]
    search = LlamaIndexSearch(scifact_bm25)
    assert search.ranking(nodes, 10) == search.search([QUERY], 10)[0]


@pytest.mark.parametrize("kwargs,message", [
    ({"mode": "fuse", "query_weight": 0}, "query_weight=0 must be a whole number"),
    ({"mode": "replace", "top_k": 5}, "top_k=5 cuts the fused ranking of mode='fuse'"),
    ({"mode": "fuse", "top_k": 0}, "top_k=0 must be a positive integer"),
    ({"mode": "both"}, "mode='both'"),
])
def test_fuse_settings_name_the_fix(recording_bm25, scripted_rewriter, kwargs, message):
    with pytest.raises(ValueError, match=message):
        DeepRetrievalRetriever(recording_bm25, rewriter=scripted_rewriter(), **kwargs)
