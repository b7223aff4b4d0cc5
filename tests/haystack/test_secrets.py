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
