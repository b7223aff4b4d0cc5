"""A clear-text key in pipeline YAML is refused without being repeated, in the error or in any log."""

from __future__ import annotations

import logging

import pytest
from haystack import Pipeline
from haystack.core.errors import DeserializationError

from haystack_deepretrieval import DeepRetrievalQueryRewriter
from haystack_deepretrieval.literature import LiteratureSearchRetriever

KEY = "sk-live-0123456789abcdef"
FORMS = {"a plain string": KEY, "a token secret": {"type": "token", "token": KEY, "strict": False}}


def _yaml(component, **extra) -> str:
    import yaml

    pipe = Pipeline()
    pipe.add_component("c", component)
    data = pipe.to_dict()
    data["components"]["c"]["init_parameters"].update(extra)
    return yaml.safe_dump(data)


COMPONENTS = {"rewriter": lambda: DeepRetrievalQueryRewriter(backend="openai", model="m"),
              "literature": lambda: LiteratureSearchRetriever(engine="pubmed")}


@pytest.mark.parametrize("form", FORMS.values(), ids=FORMS.keys())
@pytest.mark.parametrize("component", COMPONENTS)
def test_a_clear_key_is_refused_and_never_repeated(component, form, caplog):
    caplog.set_level(logging.DEBUG)
    text = _yaml(COMPONENTS[component](), api_key=form)
    assert KEY in text
    with pytest.raises(DeserializationError) as caught:
        Pipeline.loads(text)
    message = str(caught.value) + str(caught.value.__cause__)
    assert "env_var" in message and "clear text" in message
    assert KEY not in message
    assert all(KEY not in record.getMessage() for record in caplog.records)


def test_the_environment_variable_form_still_loads(monkeypatch):
    monkeypatch.setenv("MY_API_KEY", KEY)
    loaded = Pipeline.loads(_yaml(DeepRetrievalQueryRewriter(backend="openai", model="m"),
                                  api_key={"type": "env_var", "env_vars": ["MY_API_KEY"], "strict": False}))
    assert loaded.get_component("c").api_key.resolve_value() == KEY


# -- a key with surrounding whitespace (read from a mounted secret file) works, and no part of it shows -------------

SHAPES = {"trailing newline": "{}\n", "CRLF": "{}\r\n", "leading space": " {}"}


def _pieces(text: str, key: str, size: int = 8) -> list[str]:
    return [key[i:i + size] for i in range(len(key) - size + 1) if key[i:i + size] in text]


@pytest.mark.parametrize("secret_form", ["token", "env_var"])
@pytest.mark.parametrize("shape", SHAPES)
def test_the_rewriter_sends_a_file_read_key_stripped_and_never_shows_it(shape, secret_form, monkeypatch, caplog):
    import threading

    from haystack.utils import Secret

    from tests.trainer.test_openai_compat import FakeServer

    caplog.set_level(logging.DEBUG)
    key = f"sk-hs-{shape[:4].strip()}-0123456789abcdef"
    monkeypatch.setenv("MY_API_KEY", SHAPES[shape].format(key))
    secret = (Secret.from_token(SHAPES[shape].format(key)) if secret_form == "token"
              else Secret.from_env_var("MY_API_KEY"))
    server = FakeServer()
    threading.Thread(target=server.serve_forever, daemon=True).start()
    server.plan["q"] = [("echo", 401)]
    try:
        component = DeepRetrievalQueryRewriter(backend="openai", model="m", base_url=server.url, api_key=secret,
                                               max_retries=0)
        fine, echoed = component.run("fine"), component.run("q")
        component.close()
    finally:
        server.shutdown()
        server.server_close()
    assert not fine["meta"]["fell_back"]
    assert {r["auth"] for r in server.requests} == {f"Bearer {key}"}
    assert echoed["meta"]["fell_back"] and "HTTP 401" in echoed["meta"]["reason"]
    assert _pieces(echoed["meta"]["reason"], key) == []
    assert [r.getMessage() for r in caplog.records if _pieces(r.getMessage(), key)] == []


def test_a_key_a_header_cannot_carry_fails_at_warm_up_without_showing_it():
    from haystack.utils import Secret

    key = "sk-inner\rreturn-0123456789abcdef"
    component = DeepRetrievalQueryRewriter(backend="openai", model="m", api_key=Secret.from_token(key))
    with pytest.raises(ValueError, match="cannot carry") as caught:
        component.warm_up()
    assert _pieces(str(caught.value), key) == [] and _pieces(str(caught.value), key.replace("\r", "")) == []


@pytest.mark.parametrize("shape", SHAPES)
def test_the_literature_retriever_sends_a_file_read_key_stripped_and_never_shows_it(shape, monkeypatch, caplog):
    from deepretrieval_trainer.literature.http import SearchServiceError

    from tests.trainer.literature.loopback import Answer, Loopback, fake_esearch, pubmed_ids

    caplog.set_level(logging.DEBUG)
    key = f"ncbi-hs-{shape[:4].strip()}-0123456789abcdef"
    monkeypatch.setenv("NCBI_API_KEY", SHAPES[shape].format(key))
    with Loopback(fake_esearch(pubmed_ids(3))) as server:
        retriever = LiteratureSearchRetriever(engine="pubmed", base_url=server.url, top_k=3, max_retries=0)
        assert [d.id for d in retriever.run("aspirin")["documents"]] == pubmed_ids(3)
        server.queue(Answer(400, "x" * 170 + f"&api_key={key}\n"))  # the echo straddles the excerpt's cut
        with pytest.raises(SearchServiceError) as caught:
            retriever.run("aspirin")
    assert {request.params["api_key"] for request in server.requests} == {key}
    assert _pieces(str(caught.value), key) == []
    assert [r.getMessage() for r in caplog.records if _pieces(r.getMessage(), key)] == []
