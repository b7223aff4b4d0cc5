"""DeepRetrievalQueryRewriter in real Haystack pipelines over SciFact, with scripted/failing core rewriters and
a real OpenAI-compatible HTTP server on loopback (the embedded model runs in test_local_model.py)."""

from __future__ import annotations

import inspect
import logging

import pytest
from haystack import Pipeline
from haystack.components.retrievers import MultiQueryTextRetriever
from haystack.components.retrievers.in_memory import InMemoryBM25Retriever
from haystack.core.errors import PipelineRuntimeError, SerializationError
from haystack.utils import Secret

from deepretrieval_trainer.rewriting.rewriters import RewriteError
from haystack_deepretrieval import DeepRetrievalQueryRewriter
from tests.haystack.conftest import VALID_COMPLETION, RecordingBM25Retriever

QUERY = "0-dimensional biomaterials show inductive properties."

# A non-default value for every init parameter, per backend (adapter/device are local-only, base_url openai-only).
LOCAL = dict(backend="local", model="some/model", adapter="/tmp/adapter", base_url=None, task="dense", system_prompt="Rewrite.",
             user_prompt="Q: {query}", include_original=False, timeout=5.0, max_retries=0, max_tokens=32,
             temperature=0.7, device="cuda:1", strict=True, api_key=Secret.from_env_var("MY_KEY", strict=False),
             feedback_docs=0, dtype="bfloat16", query_weight=1)
OPENAI = dict(backend="openai", model="scifact-rewriter", adapter=None, base_url="http://10.0.0.1:9000/v1", api_key=None,
              task="qa", system_prompt=None, user_prompt=None, include_original=True, timeout=3.5, max_retries=5,
              max_tokens=256, temperature=0.2, device="cpu", strict=False, feedback_docs=3, dtype="auto",
              query_weight=3)


def rewriter_pipeline(rewriter: DeepRetrievalQueryRewriter, store) -> tuple[Pipeline, RecordingBM25Retriever]:
    retriever = RecordingBM25Retriever(document_store=store, top_k=10)
    pipe = Pipeline()
    pipe.add_component("rewriter", rewriter)
    pipe.add_component("retriever", retriever)
    pipe.connect("rewriter.query", "retriever.query")
    return pipe, retriever


def test_every_init_parameter_round_trips():
    params = [p for p in inspect.signature(DeepRetrievalQueryRewriter.__init__).parameters if p != "self"]
    defaults = DeepRetrievalQueryRewriter().to_dict()["init_parameters"]
    for values in (LOCAL, OPENAI):
        assert sorted(values) == sorted(params)
        original = DeepRetrievalQueryRewriter(**values)
        data = original.to_dict()
        assert sorted(data["init_parameters"]) == sorted(params)
        restored = DeepRetrievalQueryRewriter.from_dict(data)
        for name in params:
            assert getattr(restored, name) == getattr(original, name) == values[name], name
        assert restored.to_dict() == data
    changed = {n for n in params if LOCAL_DICT[n] != defaults[n] or OPENAI_DICT[n] != defaults[n]}
    assert changed == set(params), "every parameter must take a non-default value in one of the two cases"


LOCAL_DICT = DeepRetrievalQueryRewriter(**LOCAL).to_dict()["init_parameters"]
OPENAI_DICT = DeepRetrievalQueryRewriter(**OPENAI).to_dict()["init_parameters"]


def test_api_key_is_serialized_as_its_env_var_form_only(monkeypatch):
    monkeypatch.setenv("DEEPRETRIEVAL_API_KEY", "sk-very-secret")
    rewriter = DeepRetrievalQueryRewriter(backend="openai", model="m")
    assert rewriter.to_dict()["init_parameters"]["api_key"] == {
        "type": "env_var", "env_vars": ["DEEPRETRIEVAL_API_KEY", "OPENAI_API_KEY"], "strict": False}
    pipe = Pipeline()
    pipe.add_component("rewriter", rewriter)
    text = pipe.dumps()
    assert "sk-very-secret" not in text and "DEEPRETRIEVAL_API_KEY" in text
    assert Pipeline.loads(text).get_component("rewriter").api_key.resolve_value() == "sk-very-secret"


def test_a_token_secret_refuses_to_serialize():
    rewriter = DeepRetrievalQueryRewriter(backend="openai", model="m", api_key=Secret.from_token("sk-live-token"))
    with pytest.raises(ValueError, match="token"):
        rewriter.to_dict()
    pipe = Pipeline()
    pipe.add_component("rewriter", rewriter)
    with pytest.raises(ValueError, match="token"):
        pipe.dumps()


@pytest.mark.parametrize(("kwargs", "message"), [
    (dict(backend="vllm"), "choose one of"),
    (dict(backend="openai"), "needs model="),
    (dict(backend="openai", model="m", adapter="/a"), "--lora-modules"),
    (dict(base_url="http://x/v1"), "is for backend='openai'"),
    (dict(task="nope"), "unknown task"),
    (dict(user_prompt="no placeholder"), "{query}"),
    (dict(temperature=-1), "temperature"),
    (dict(max_tokens=0), "max_tokens"),
    (dict(timeout=0), "timeout"),
])
def test_bad_parameters_say_what_to_fix(kwargs, message):
    with pytest.raises(ValueError, match=message.replace("{", r"\{").replace("}", r"\}")):
        DeepRetrievalQueryRewriter(**kwargs)


def test_prompt_overrides_reach_the_task(scripted_rewriter):
    rewriter = DeepRetrievalQueryRewriter(system_prompt="SYS", user_prompt="Find: {query}")
    messages = rewriter._task.messages("x")
    assert messages[0] == {"role": "system", "content": "SYS"} and messages[-1]["content"] == "Find: x"


def test_retriever_gets_the_rewrite(scripted_rewriter, scifact_store):
    rewriter = DeepRetrievalQueryRewriter.from_rewriter(scripted_rewriter(VALID_COMPLETION % "biomaterials induction"))
    pipe, retriever = rewriter_pipeline(rewriter, scifact_store)
    out = pipe.run({"rewriter": {"query": QUERY}}, include_outputs_from={"rewriter"})
    assert retriever.received == ["biomaterials induction"]
    assert out["rewriter"]["query"] == "biomaterials induction"
    assert out["rewriter"]["queries"] == ["biomaterials induction", QUERY]
    assert out["rewriter"]["meta"]["fell_back"] is False
    direct = InMemoryBM25Retriever(document_store=scifact_store, top_k=10).run(query="biomaterials induction")
    assert [d.id for d in out["retriever"]["documents"]] == [d.id for d in direct["documents"]]


async def test_retriever_gets_the_rewrite_async(scripted_rewriter, scifact_store):
    rewriter = DeepRetrievalQueryRewriter.from_rewriter(scripted_rewriter(VALID_COMPLETION % "biomaterials induction"))
    pipe, retriever = rewriter_pipeline(rewriter, scifact_store)
    out = await pipe.run_async({"rewriter": {"query": QUERY}}, include_outputs_from={"rewriter"})
    assert retriever.received == ["biomaterials induction"] == [out["rewriter"]["query"]]


@pytest.mark.parametrize("run_async", [False, True])
async def test_backend_failure_falls_back_to_the_original(failing_rewriter, scifact_store, caplog, run_async):
    pipe, retriever = rewriter_pipeline(DeepRetrievalQueryRewriter.from_rewriter(failing_rewriter), scifact_store)
    data = {"rewriter": {"query": QUERY}}
    with caplog.at_level(logging.WARNING):
        out = await pipe.run_async(data, {"rewriter"}) if run_async else pipe.run(data, {"rewriter"})
    assert retriever.received == [QUERY]
    assert out["rewriter"]["queries"] == [QUERY]
    assert out["rewriter"]["meta"]["fell_back"] is True
    assert "backend unreachable" in out["rewriter"]["meta"]["reason"]
    assert "backend unreachable" in caplog.text
    assert out["retriever"]["documents"]


def test_unparsable_text_falls_back_to_the_original(scripted_rewriter, scifact_store, caplog):
    rewriter = DeepRetrievalQueryRewriter.from_rewriter(scripted_rewriter("I think the answer is biomaterials."))
    pipe, retriever = rewriter_pipeline(rewriter, scifact_store)
    with caplog.at_level(logging.WARNING):
        out = pipe.run({"rewriter": {"query": QUERY}}, include_outputs_from={"rewriter"})
    assert retriever.received == [QUERY]
    assert out["rewriter"]["meta"]["fell_back"] is True and out["rewriter"]["meta"]["reason"]
    assert "fell back" in caplog.text


def test_strict_raises_instead_of_falling_back(scripted_rewriter, scifact_store):
    rewriter = DeepRetrievalQueryRewriter.from_rewriter(scripted_rewriter("no answer tags", strict=True))
    pipe, _ = rewriter_pipeline(rewriter, scifact_store)
    with pytest.raises(PipelineRuntimeError) as info:
        pipe.run({"rewriter": {"query": QUERY}})
    assert isinstance(info.value.__cause__, RewriteError)


def test_openai_backend_over_http(chat_server, scifact_store, monkeypatch):
    monkeypatch.setenv("DEEPRETRIEVAL_API_KEY", "sk-from-env")
    chat_server.completion = VALID_COMPLETION % "bone induction biomaterial"
    rewriter = DeepRetrievalQueryRewriter(backend="openai", model="scifact-lora", base_url=chat_server.base_url,
                                          max_retries=0, max_tokens=64)
    pipe, retriever = rewriter_pipeline(rewriter, scifact_store)
    out = pipe.run({"rewriter": {"query": QUERY}}, include_outputs_from={"rewriter"})
    assert retriever.received == ["bone induction biomaterial"] == [out["rewriter"]["query"]]
    request = chat_server.requests[0]
    assert request["model"] == "scifact-lora" and request["max_tokens"] == 64
    assert QUERY in request["messages"][-2]["content"]
    assert chat_server.headers[0]["Authorization"] == "Bearer sk-from-env"
    pipe.close()


async def test_openai_backend_unparsable_text_falls_back(chat_server, scifact_store):
    chat_server.completion = "Sure! Here is a better query: biomaterials"
    rewriter = DeepRetrievalQueryRewriter(backend="openai", model="m", base_url=chat_server.base_url, max_retries=0)
    pipe, retriever = rewriter_pipeline(rewriter, scifact_store)
    out = await pipe.run_async({"rewriter": {"query": QUERY}}, include_outputs_from={"rewriter"})
    assert retriever.received == [QUERY] and out["rewriter"]["meta"]["fell_back"] is True
    await pipe.close_async()


def test_openai_backend_dead_server_falls_back(closed_port_url, scifact_store):
    rewriter = DeepRetrievalQueryRewriter(backend="openai", model="m", base_url=closed_port_url, max_retries=0,
                                          timeout=5.0)
    pipe, retriever = rewriter_pipeline(rewriter, scifact_store)
    out = pipe.run({"rewriter": {"query": QUERY}}, include_outputs_from={"rewriter"})
    assert retriever.received == [QUERY]
    assert "cannot reach" in out["rewriter"]["meta"]["reason"]


def test_queries_feed_multi_query_text_retriever(scripted_rewriter, scifact_store):
    rewriter = DeepRetrievalQueryRewriter.from_rewriter(scripted_rewriter(VALID_COMPLETION % "bone induction"))
    multi = MultiQueryTextRetriever(retriever=InMemoryBM25Retriever(document_store=scifact_store, top_k=3))
    pipe = Pipeline()
    pipe.add_component("rewriter", rewriter)
    pipe.add_component("multi", multi)
    pipe.connect("rewriter.queries", "multi.queries")
    documents = pipe.run({"rewriter": {"query": QUERY}})["multi"]["documents"]
    single = InMemoryBM25Retriever(document_store=scifact_store, top_k=3)
    expected = {d.id for q in ("bone induction", QUERY) for d in single.run(query=q)["documents"]}
    assert {d.id for d in documents} == expected and len(documents) == len(expected)


def test_include_original_per_call_and_no_duplicate(scripted_rewriter):
    rewriter = DeepRetrievalQueryRewriter.from_rewriter(scripted_rewriter(VALID_COMPLETION % "Bone Induction"))
    assert rewriter.run(query="bone induction")["queries"] == ["Bone Induction"]
    assert rewriter.run(query="other", include_original=False)["queries"] == ["Bone Induction"]
    assert rewriter.run(query="other")["queries"] == ["Bone Induction", "other"]


def test_empty_query_passes_through_without_calling_the_backend(scripted_rewriter):
    backend = scripted_rewriter()
    out = DeepRetrievalQueryRewriter.from_rewriter(backend).run(query="  ")
    assert out["query"] == "  " and out["meta"]["fell_back"] is True and backend.calls == []


def test_a_wrapped_rewriter_cannot_be_serialized(scripted_rewriter):
    with pytest.raises(SerializationError, match="from_rewriter"):
        DeepRetrievalQueryRewriter.from_rewriter(scripted_rewriter()).to_dict()
