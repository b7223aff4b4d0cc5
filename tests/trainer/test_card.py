"""The adapter card: written by training beside peft's files, read wherever the adapter folder is copied, so that
evaluation, serving, LocalRewriter and both plugins search the adapter the way it was trained."""

from __future__ import annotations

import json
import logging
import shutil

import pytest

from deepretrieval_trainer.rewriting.card import CARD_FILE, AdapterCard, CardError, model_name, read_card
from deepretrieval_trainer.rewriting.feedback import Feedback
from tests.vllm_fixtures import make_peft_adapter

FUSED = AdapterCard(base_model="smollm2-135m-instruct", task="retrieval", framing="fuse", query_weight=3,
                    feedback=Feedback(docs=2, field="sentence"), dtype="bfloat16", retriever="HaystackSearch")
EXPANDED = AdapterCard(framing="expand", query_weight=3, dtype="float32", retriever="LlamaIndexSearch")


@pytest.fixture(scope="module")
def adapter_template(tmp_path_factory):
    """A real peft adapter for the embedded model (no card yet), made once."""
    return make_peft_adapter(tmp_path_factory.mktemp("template") / "adapter")


def copied(template, card: AdapterCard | None, where):
    """The adapter folder copied to a new place, with ``card`` written into it before the copy."""
    source = where / "trained" / "adapter"
    shutil.copytree(template, source)
    if card is not None:
        card.write(source)
    target = where / "elsewhere" / "my-adapter"
    shutil.copytree(source, target)
    shutil.rmtree(where / "trained")  # nothing of the run is left beside it
    return target


def test_a_card_round_trips_and_bad_cards_name_the_file_and_the_fix(tmp_path, caplog):
    FUSED.write(tmp_path)
    assert read_card(tmp_path) == FUSED
    values = json.loads((tmp_path / CARD_FILE).read_text())
    assert values["version"] == 1 and values["feedback"] == {"docs": 2, "field": "sentence", "max_chars": 160,
                                                             "terms": 10}
    values["added_later"] = 1
    (tmp_path / CARD_FILE).write_text(json.dumps(values))
    with caplog.at_level(logging.WARNING):
        assert read_card(tmp_path) == FUSED
    assert "added_later" in caplog.text
    for bad, message in (({"framing": "sideways"}, "framing='sideways'"), ({"task": "poetry"}, "not a built-in task"),
                         ({"query_weight": 0}, "query_weight=0"), ({"dtype": "auto"}, "precision training ran in"),
                         ({"framing": "replace", "query_weight": 3}, "only applies to framing")):
        (tmp_path / CARD_FILE).write_text(json.dumps({**values, **bad}))
        with pytest.raises(CardError, match=message) as caught:
            read_card(tmp_path)
        assert CARD_FILE in str(caught.value)
    (tmp_path / CARD_FILE).write_text("{not json")
    with pytest.raises(CardError, match="not a readable card.*delete it"):
        read_card(tmp_path)
    (tmp_path / CARD_FILE).write_text(" " * 100_000)
    with pytest.raises(CardError, match="is not an adapter card"):
        read_card(tmp_path)


def test_a_run_written_before_cards_is_read_from_its_config(tmp_path):
    run = tmp_path / "run"
    (run / "adapter").mkdir(parents=True)
    (run / "config.yaml").write_text("model: null\ntask: retrieval\nframing: expand\nquery_weight: 3\n"
                                     "feedback_docs: 2\ndtype: auto\n")
    (run / "run.json").write_text(json.dumps({"precision": {"dtype": "bfloat16"}}))
    card = read_card(run / "adapter")
    assert (card.framing, card.query_weight, card.feedback.docs, card.dtype) == ("expand", 3, 2, "bfloat16")
    assert read_card(tmp_path) is None  # neither a card nor a run's adapter/
    assert model_name(None) == model_name("/somewhere/smollm2-135m-instruct") == "smollm2-135m-instruct"


def test_a_copied_adapter_is_evaluated_and_prompted_as_trained(tmp_path, adapter_template):
    from deepretrieval_trainer.evaluation.sources import parse_source
    from deepretrieval_trainer.rewriting.rewriters import LocalRewriter

    adapter = copied(adapter_template, FUSED, tmp_path)
    # evaluation asked for the defaults (replace, the query-only prompt): the card wins
    source = parse_source(f"adapter:{adapter}")
    assert (source.fuse, source.include_original, source.query_weight) == (True, True, 3)
    assert source.rewriter.task.feedback == Feedback(docs=2, field="sentence")
    assert source.name == "adapter:my-adapter" and "adapter=" in source.identity
    rewriter = LocalRewriter(adapter=adapter)
    assert rewriter.card == FUSED and rewriter.model_name == "smollm2-135m-instruct"
    assert "{feedback}" in rewriter.task.user
    # without a card the old defaults hold, and the rewriter says so
    bare = copied(adapter_template, None, tmp_path / "bare")
    source = parse_source(f"adapter:{bare}", framing="expand", query_weight=2)
    assert (source.fuse, source.query_weight, source.rewriter.task.feedback) == (False, 2, None)
    assert LocalRewriter(adapter=bare).card is None


def test_both_plugins_search_a_copied_adapter_as_trained(tmp_path, adapter_template, data_dir, caplog):
    from haystack_deepretrieval import DeepRetrievalQueryRewriter
    from llamaindex_deepretrieval import DeepRetrievalQueryTransform, DeepRetrievalRetriever, LlamaIndexSearch

    from deepretrieval_trainer.rewriting.rewriters import LocalRewriter, RewriteResult

    fused, expanded = copied(adapter_template, FUSED, tmp_path / "f"), copied(adapter_template, EXPANDED, tmp_path / "e")
    retriever = LlamaIndexSearch.from_beir(data_dir / "adi").retriever
    wrapped = DeepRetrievalRetriever(retriever, rewriter=LocalRewriter(adapter=fused))
    assert (wrapped.mode, wrapped.query_weight) == ("fuse", 3)
    with pytest.raises(ValueError, match="trained with framing 'fuse'.*DeepRetrievalRetriever"):
        DeepRetrievalQueryTransform(rewriter=LocalRewriter(adapter=fused))
    transform = DeepRetrievalQueryTransform(rewriter=LocalRewriter(adapter=expanded))
    assert (transform.mode, transform.query_weight) == ("expand", 3)
    with caplog.at_level(logging.WARNING):
        assert DeepRetrievalQueryTransform(rewriter=LocalRewriter(adapter=expanded), mode="replace").mode == "replace"
    assert "trained with framing expand, query_weight 3" in caplog.text

    rewrite = RewriteResult("aspirin", "aspirin infarction", False)
    component = DeepRetrievalQueryRewriter(adapter=str(expanded))
    assert component._outputs(rewrite, None)["search_query"] == "aspirin aspirin aspirin aspirin infarction"
    component = DeepRetrievalQueryRewriter(adapter=str(fused))
    assert component._outputs(rewrite, None)["search_query"] == "aspirin infarction"  # fuse: the rewrite's own search
    assert component._task.feedback == Feedback(docs=2, field="sentence")
    assert DeepRetrievalQueryRewriter.from_dict(component.to_dict())._task == component._task
    # no adapter: the component's defaults as before (the original query beside the rewrite, weight 1)
    assert DeepRetrievalQueryRewriter()._outputs(rewrite, None)["search_query"] == "aspirin aspirin infarction"


def test_serving_a_copied_adapter_loads_its_base_and_prints_its_framing(tmp_path, adapter_template):
    from deepretrieval_trainer.commands.serve import snippets
    from deepretrieval_trainer.common.models import resolve_model
    from deepretrieval_trainer.rewriting.serve import ServerConfig, base_model_for

    adapter = copied(adapter_template, FUSED, tmp_path)
    assert base_model_for(adapter) == resolve_model("embedded")
    command = ServerConfig(adapters={"dr": adapter}).command(tmp_path / "vllm")
    assert command[2] == resolve_model("embedded") and f"dr={adapter}" in command
    text = snippets("http://127.0.0.1:8000/v1", "dr", str(adapter), read_card(adapter))
    assert "QueryFusionJoiner(query_weight=3)" in text and f'card="{adapter}"' in text
    elsewhere = AdapterCard(base_model="/models/not-here", framing="replace")
    elsewhere.write(adapter)
    with pytest.raises(FileNotFoundError, match="not on this machine: pass --base"):
        base_model_for(adapter)


@pytest.mark.slow
def test_deepretrieval_eval_searches_a_copied_adapter_as_trained(tmp_path, adapter_template, data_dir):
    from deepretrieval_trainer.cli import main

    adapter = copied(adapter_template, EXPANDED, tmp_path)
    out = tmp_path / "eval"
    argv = ["eval", "--data", str(data_dir / "adi"), "--split", "test", "--framework", "bm25s", "--limit", "3",
            "--max-new-tokens", "48", "--source", f"trained=adapter:{adapter}", "--out", str(out), "--no-progress"]
    assert main(argv) == 0
    rows = json.loads((out / "results.json").read_text())["per_query"]["trained"]
    for row in rows:  # expand, query_weight 3: the query three times, then the rewrite (or the query alone)
        assert row["search_query"].startswith(" ".join([row["query"]] * 3)) or row["search_query"] == row["query"]


def test_an_adapter_whose_weights_are_repeated_words_warns_when_searched_through_another_retriever(
        tmp_path, adapter_template, data_dir, caplog):
    from haystack_deepretrieval import DeepRetrievalQueryRewriter, HaystackSearch

    from deepretrieval_trainer.evaluation.sources import parse_source

    adapter = copied(adapter_template, EXPANDED, tmp_path)  # expand, query_weight 3, trained through LlamaIndexSearch
    with caplog.at_level(logging.WARNING):
        parse_source(f"adapter:{adapter}", search=HaystackSearch.from_beir(data_dir / "adi"))
        DeepRetrievalQueryRewriter(adapter=str(adapter))
    assert caplog.text.count("trained through LlamaIndexSearch with framing expand") == 2
    caplog.clear()
    fused = copied(adapter_template, FUSED, tmp_path / "fused")  # fuse keeps its weight in the scores
    with caplog.at_level(logging.WARNING):
        parse_source(f"adapter:{fused}", search=HaystackSearch.from_beir(data_dir / "adi"))
    assert "trained through" not in caplog.text
    assert EXPANDED.mismatch("LlamaIndexSearch") is None
