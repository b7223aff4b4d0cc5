"""DeepRetrievalQueryTransform in real LlamaIndex pipelines over BM25 on SciFact."""

from __future__ import annotations

import logging

import pytest
from llama_index.core.indices.query.query_transform.base import BaseQueryTransform
from llama_index.core.llms.mock import MockLLM
from llama_index.core.prompts import PromptTemplate
from llama_index.core.query_engine import RetrieverQueryEngine, TransformQueryEngine
from llama_index.core.response_synthesizers.no_text import NoText
from llama_index.core.retrievers import TransformRetriever
from llama_index.core.schema import QueryBundle

from deepretrieval_trainer.rewriting.rewriters import RewriteResult
from llamaindex_deepretrieval import DeepRetrievalQueryTransform, QueryRewriteEvent

QUERY = "Vitamin D deficiency is linked to bone loss."
REWRITE = "vitamin D deficiency osteoporosis bone mineral density"
ANSWER = f'</think>\n<answer>{{"query": "{REWRITE}"}}</answer>'


def no_text_engine(retriever) -> RetrieverQueryEngine:
    # The NoText synthesizer returns the retrieved nodes and never calls its LLM; it still wants one at
    # construction, and MockLLM is what LlamaIndex itself installs when the LLM is disabled (Settings.llm = None).
    return RetrieverQueryEngine(retriever, response_synthesizer=NoText(llm=MockLLM()))


def ids(nodes) -> list[str]:
    return [n.node.node_id for n in nodes]


def test_query_engine_sends_the_rewrite_to_the_retriever(recording_bm25, scifact_bm25, scripted_rewriter):
    rewriter = scripted_rewriter(completion=ANSWER)
    transform = DeepRetrievalQueryTransform(rewriter=rewriter, mode="replace")
    engine = TransformQueryEngine(no_text_engine(recording_bm25), query_transform=transform)

    response = engine.query(QUERY)

    assert [b.query_str for b in recording_bm25.received] == [REWRITE]
    assert len(rewriter.calls) == 1 and QUERY in rewriter.calls[0][0][-1]["content"]
    assert ids(response.source_nodes) == ids(scifact_bm25.retrieve(REWRITE))
    assert ids(response.source_nodes) != ids(scifact_bm25.retrieve(QUERY))


async def test_async_query_engine_sends_the_rewrite(recording_bm25, scripted_rewriter):
    transform = DeepRetrievalQueryTransform(rewriter=scripted_rewriter(completion=ANSWER))
    engine = TransformQueryEngine(no_text_engine(recording_bm25), query_transform=transform)

    response = await engine.aquery(QUERY)

    assert [b.query_str for b in recording_bm25.received] == [REWRITE]
    assert len(response.source_nodes) == 10


def test_transform_retriever_sends_the_rewrite(recording_bm25, scripted_rewriter):
    transform = DeepRetrievalQueryTransform(rewriter=scripted_rewriter(completion=ANSWER))
    nodes = TransformRetriever(recording_bm25, transform).retrieve(QUERY)

    assert [b.query_str for b in recording_bm25.received] == [REWRITE]
    assert len(nodes) == 10


@pytest.mark.parametrize("make", ["failing", "garbage"])
def test_fallback_keeps_the_pipeline_working(make, recording_bm25, scifact_bm25, failing_rewriter, scripted_rewriter,
                                             caplog, events):
    rewriter = failing_rewriter if make == "failing" else scripted_rewriter(completion="garbage")
    engine = TransformQueryEngine(no_text_engine(recording_bm25),
                                  query_transform=DeepRetrievalQueryTransform(rewriter=rewriter))
    with caplog.at_level(logging.WARNING):
        response = engine.query(QUERY)

    assert [b.query_str for b in recording_bm25.received] == [QUERY]
    assert ids(response.source_nodes) == ids(scifact_bm25.retrieve(QUERY))
    assert "fell back" in caplog.text
    (event,) = [e for e in events if isinstance(e, QueryRewriteEvent)]
    assert event.fell_back and event.query == QUERY and event.rewritten is None
    assert ("backend unreachable" if make == "failing" else "answer") in event.reason.lower()


class BrokenRewriter:
    """A rewriter outside the core's BaseRewriter that breaks in a way the core cannot catch."""

    def __init__(self, results):
        from deepretrieval_trainer.rewriting.tasks import get_task

        self.task = get_task("retrieval")
        self.results = results

    def rewrite(self, queries):
        if isinstance(self.results, Exception):
            raise self.results
        return self.results

    async def arewrite(self, queries):
        return self.rewrite(queries)


@pytest.mark.parametrize("results", [KeyError("boom"), [], [RewriteResult("q", "", False)], "not a list"])
async def test_unexpected_rewriter_failures_fall_back(results, caplog):
    transform = DeepRetrievalQueryTransform(rewriter=BrokenRewriter(results))
    with caplog.at_level(logging.WARNING):
        assert transform.run(QUERY).query_str == QUERY
        assert (await transform.arun(QUERY)).query_str == QUERY
    assert caplog.text.count("unexpected error") == 2


def test_modes_place_the_rewrite(scripted_rewriter):
    bundle = QueryBundle(query_str=QUERY, embedding=[0.1, 0.2])
    replace, expand, embed = (
        DeepRetrievalQueryTransform(rewriter=scripted_rewriter(completion=ANSWER), mode=mode).run(bundle)
        for mode in ("replace", "expand", "embed")
    )
    assert (replace.query_str, replace.embedding_strs) == (REWRITE, [REWRITE])
    assert (expand.query_str, expand.embedding_strs) == (f"{QUERY} {REWRITE}", [QUERY, REWRITE])
    assert (embed.query_str, embed.embedding_strs) == (QUERY, [REWRITE])
    assert replace.embedding is expand.embedding is embed.embedding is None


def test_bad_arguments_say_what_to_fix(scripted_rewriter):
    with pytest.raises(ValueError, match="mode='hybrid'.*replace"):
        DeepRetrievalQueryTransform(rewriter=scripted_rewriter(), mode="hybrid")
    with pytest.raises(ValueError, match="mode='fuse'.*DeepRetrievalRetriever"):
        DeepRetrievalQueryTransform(rewriter=scripted_rewriter(), mode="fuse")
    with pytest.raises(TypeError, match="no rewrite"):
        DeepRetrievalQueryTransform(rewriter=object())


def test_prompts_change_the_task_the_rewriter_uses(scripted_rewriter):
    rewriter = scripted_rewriter(completion=ANSWER)
    transform = DeepRetrievalQueryTransform(rewriter=rewriter, task="dense")
    assert isinstance(transform, BaseQueryTransform)
    prompts = transform.get_prompts()
    assert prompts["system_prompt"].get_template() == rewriter.task.system
    assert "semantic" in rewriter.task.system and prompts["user_prompt"].get_template() == "Query: {query}"

    transform.update_prompts({"system_prompt": PromptTemplate("Rewrite for a legal search engine."),
                              "user_prompt": PromptTemplate("Case question: {query}")})
    transform.run(QUERY)

    system, *_, user = rewriter.calls[-1][0]
    assert system["content"] == "Rewrite for a legal search engine."
    assert user["content"] == f"Case question: {QUERY}"
    with pytest.raises(ValueError, match="must contain"):
        transform.update_prompts({"user_prompt": PromptTemplate("no placeholder")})


async def test_event_and_span_carry_the_rewrite(scripted_rewriter, events):
    transform = DeepRetrievalQueryTransform(rewriter=scripted_rewriter(completion=ANSWER), mode="expand")
    transform.run(QUERY)
    await transform.arun(QUERY)

    sync_event, async_event = [e for e in events if isinstance(e, QueryRewriteEvent)]
    for event, span in ((sync_event, "rewrite_query-"), (async_event, "arewrite_query-")):
        assert (event.original, event.query, event.rewritten) == (QUERY, REWRITE, REWRITE)
        assert not event.fell_back and event.reason is None and event.mode == "expand"
        assert event.latency_s > 0
        assert event.span_id.startswith(span)
