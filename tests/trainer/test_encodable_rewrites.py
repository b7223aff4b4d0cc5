"""A rewrite the next component cannot encode is a fallback with a reason, in every backend and both plugins.

The model's answer holds a lone surrogate (a JSON escape such as ``\\ud800``, in the answer's own JSON or in the
server's body), NUL or another C0 control character. Before, both plugins returned it as the rewrite
(``fell_back=False``), and a Haystack pipeline rewriter -> ``LiteratureSearchRetriever(engine="pubmed")`` raised
``PipelineRuntimeError`` from a ``UnicodeEncodeError``. Tab and newline are whitespace, and pass.
"""

from __future__ import annotations

import pytest
from deepretrieval_trainer.literature.http import HttpPolicy
from deepretrieval_trainer.literature.pubmed import PubMedSearch
from deepretrieval_trainer.rewriting.openai_compat import OpenAIRewriter
from deepretrieval_trainer.rewriting.rewriters import RewriteError, RewriteResult
from llama_index.core.instrumentation import get_dispatcher
from llama_index.core.instrumentation.event_handlers import BaseEventHandler
from llama_index.core.schema import QueryBundle

from tests.conftest import ScriptedRewriter
from tests.trainer.literature.loopback import Loopback, fake_esearch, pubmed_ids
from tests.trainer.test_openai_compat import answer, server  # noqa: F401 - the loopback chat server fixture

QUERY = "heart attack"
# what the model's answer holds, as the server's JSON body carries it: a str with a real surrogate is sent as a
# "\ud800" escape of the body (the content then holds the surrogate); "\\ud800" is an escape of the answer's JSON
UNSENDABLE = {
    "lone surrogate, escaped in the answer": ("heart \\ud800 attack", "lone surrogate U+D800"),
    "lone surrogate, escaped in the body": ("heart \ud800 attack", "lone surrogate U+D800"),
    "low surrogate": ("heart \\udfff", "lone surrogate U+DFFF"),
    "NUL": ("heart\\u0000attack", "control character U+0000"),
    "ESC": ("heart \\u001b[31m attack", "control character U+001B"),
}


class Events(BaseEventHandler):
    events: list = []

    def handle(self, event, **kwargs) -> None:
        self.events.append(event)


def _core(url):
    with OpenAIRewriter("m", base_url=url) as rewriter:
        result = rewriter.rewrite([QUERY])[0]
    return result.query, result.fell_back, result.reason


async def _core_async(url):
    async with OpenAIRewriter("m", base_url=url) as rewriter:
        result = (await rewriter.arewrite([QUERY]))[0]
    return result.query, result.fell_back, result.reason


def _haystack(url):
    from haystack_deepretrieval import DeepRetrievalQueryRewriter

    component = DeepRetrievalQueryRewriter(backend="openai", model="m", base_url=url, api_key=None)
    output = component.run(QUERY)
    component.close()
    return output["query"], output["meta"]["fell_back"], output["meta"]["reason"]


def _with_events(run):
    handler = Events(events=[])
    get_dispatcher().add_event_handler(handler)
    try:
        sent = run()
    finally:
        get_dispatcher().event_handlers.remove(handler)
    [event] = [e for e in handler.events if type(e).__name__ == "QueryRewriteEvent"]
    assert sent == event.query
    return event.query, event.fell_back, event.reason


def _llamaindex_transform(url):
    from llamaindex_deepretrieval import DeepRetrievalQueryTransform

    with OpenAIRewriter("m", base_url=url) as rewriter:
        transform = DeepRetrievalQueryTransform(rewriter=rewriter)
        return _with_events(lambda: transform.run(QueryBundle(QUERY)).query_str)


def _llamaindex_retriever(url):
    """DeepRetrievalRetriever over LiteratureRetriever(PubMed): the term PubMed got is what was sent on."""
    from llamaindex_deepretrieval import DeepRetrievalRetriever
    from llamaindex_deepretrieval.literature import LiteratureRetriever

    with Loopback(fake_esearch(pubmed_ids(3))) as pubmed, OpenAIRewriter("m", base_url=url) as rewriter:
        engine = PubMedSearch(base_url=pubmed.url, api_key="", policy=HttpPolicy(requests_per_second=100))
        retriever = DeepRetrievalRetriever(LiteratureRetriever(engine=engine, top_k=3), rewriter=rewriter)

        def run():
            assert [n.node.id_ for n in retriever.retrieve(QUERY)] == pubmed_ids(3)
            return pubmed.requests[-1].params["term"]

        return _with_events(run)


def _haystack_pipeline(url):
    """rewriter -> LiteratureSearchRetriever(engine="pubmed"): the pipeline runs, PubMed gets what was sent on."""
    from haystack import Pipeline

    from haystack_deepretrieval import DeepRetrievalQueryRewriter
    from haystack_deepretrieval.literature import LiteratureSearchRetriever

    with Loopback(fake_esearch(pubmed_ids(3))) as pubmed:
        pipe = Pipeline()
        pipe.add_component("rewriter", DeepRetrievalQueryRewriter(backend="openai", model="m", base_url=url,
                                                                  api_key=None))
        pipe.add_component("pubmed", LiteratureSearchRetriever(engine="pubmed", base_url=pubmed.url, api_key=None,
                                                               top_k=3))
        pipe.connect("rewriter.query", "pubmed.query")
        output = pipe.run({"rewriter": {"query": QUERY}}, include_outputs_from={"rewriter"})
        pipe.get_component("rewriter").close()
        assert [d.id for d in output["pubmed"]["documents"]] == pubmed_ids(3)
        meta = output["rewriter"]["meta"]
        return pubmed.requests[-1].params["term"], meta["fell_back"], meta["reason"]


COMPONENTS = {"core": _core, "core-async": _core_async, "haystack": _haystack, "haystack-pipeline": _haystack_pipeline,
              "llamaindex-transform": _llamaindex_transform, "llamaindex-retriever": _llamaindex_retriever}


async def _run(component, url):
    outcome = COMPONENTS[component](url)
    return await outcome if component == "core-async" else outcome


@pytest.mark.parametrize("text", UNSENDABLE)
@pytest.mark.parametrize("component", COMPONENTS)
async def test_an_unencodable_rewrite_falls_back_with_the_reason(server, component, text):  # noqa: F811
    written, problem = UNSENDABLE[text]
    server.plan[QUERY] = [("ok", [answer(written)])]
    sent, fell_back, reason = await _run(component, server.url)
    assert (sent, fell_back) == (QUERY, True)
    assert "the rewrite cannot be sent on" in reason and problem in reason


@pytest.mark.parametrize("component", COMPONENTS)
async def test_tab_and_newline_are_whitespace_and_pass(server, component):  # noqa: F811
    server.plan[QUERY] = [("ok", [answer("myocardial\\tinfarction\\naspirin")])]
    assert await _run(component, server.url) == ("myocardial infarction aspirin", False, None)  # as parsed


@pytest.mark.parametrize("text", UNSENDABLE)
def test_every_backend_gets_the_check_from_the_shared_parse_path(text):
    written, problem = UNSENDABLE[text]
    completion = answer(written)  # the completion text as a backend returns it (a real surrogate, or the escape)
    [result] = ScriptedRewriter(completion=completion).rewrite([QUERY])
    assert (result.query, result.fell_back, result.completion) == (QUERY, True, completion)
    assert problem in result.reason
    with pytest.raises(RewriteError, match="cannot be sent on"):
        ScriptedRewriter(completion=completion, strict=True).rewrite([QUERY])


class Custom:
    """A Rewriter that is not a BaseRewriter (no shared parse path) returning an unencodable rewrite."""

    task = ScriptedRewriter().task
    card = None

    def rewrite(self, queries, hits=None):
        return [RewriteResult(q, "heart \ud800 attack", False) for q in queries]

    async def arewrite(self, queries, hits=None):
        return self.rewrite(queries)


def test_the_llamaindex_plugin_checks_any_rewriter_too():
    from llamaindex_deepretrieval import DeepRetrievalQueryTransform

    sent, fell_back, reason = _with_events(
        lambda: DeepRetrievalQueryTransform(rewriter=Custom()).run(QueryBundle(QUERY)).query_str)
    assert (sent, fell_back) == (QUERY, True) and "lone surrogate" in reason


async def test_the_haystack_plugin_checks_any_rewriter_too():
    from haystack_deepretrieval import DeepRetrievalQueryRewriter

    component = DeepRetrievalQueryRewriter.from_rewriter(Custom())
    for output in (component.run(QUERY), await component.run_async(QUERY)):
        assert (output["query"], output["meta"]["fell_back"]) == (QUERY, True)
        assert "lone surrogate" in output["meta"]["reason"]
