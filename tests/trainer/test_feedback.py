"""Feedback-conditioned prompts: one function writes the first pass into the prompt, and training, evaluation, the
LlamaIndex retriever and the Haystack component build byte-identical prompts for the same query and documents."""

from __future__ import annotations

import json

import pytest
from haystack import Pipeline

from deepretrieval_trainer.common.errors import ConfigError
from deepretrieval_trainer.evaluation.evaluate import evaluate
from deepretrieval_trainer.evaluation.sources import Source
from deepretrieval_trainer.retrieval.search import DocumentHit
from deepretrieval_trainer.rewriting.feedback import NO_RESULTS, Feedback, leading_sentence
from deepretrieval_trainer.rewriting.tasks import TASKS, Task, first_pass, with_feedback
from deepretrieval_trainer.training.config import TrainConfig
from deepretrieval_trainer.training.retrieval import prompt_rows, training_rows
from haystack_deepretrieval import DeepRetrievalQueryRewriter, HaystackSearch
from llamaindex_deepretrieval import DeepRetrievalRetriever, LlamaIndexSearch
from llamaindex_deepretrieval.bm25 import build_beir_bm25
from tests.conftest import ScriptedRewriter, collection_path

HITS = [DocumentHit("a", "Vitamin D and falls", "Vitamin D lowers falls. It is cheap."),
        DocumentHit("b", "", "No title here! The rest."),
        DocumentHit("c", "A very long title " + "word " * 60, "x"),
        DocumentHit("d", "Fourth", "not shown")]


class Renderer:
    """Stands in for a tokenizer's chat template: the conversation as JSON, so prompts compare byte for byte."""

    def apply_chat_template(self, messages, add_generation_prompt, tokenize):
        assert add_generation_prompt and not tokenize
        return json.dumps(messages)


def rendered(task: Task, conversation) -> str:
    return Renderer().apply_chat_template(conversation, add_generation_prompt=True, tokenize=False) + task.prefill


def test_feedback_text_titles_sentences_and_caps():
    first, second, third = Feedback(docs=3).text(HITS).splitlines()
    assert (first, second) == ("1. Vitamin D and falls", "2. No title here!")  # no title: the leading sentence
    cut = third.removeprefix("3. ")
    assert len(cut) <= 160 and cut.endswith(" word...") and HITS[2].title.startswith(cut.removesuffix("..."))
    assert Feedback(docs=2, field="sentence").text(HITS) == "1. Vitamin D lowers falls.\n2. No title here!"
    assert Feedback(docs=1, field="title+sentence").text(HITS) == "1. Vitamin D and falls: Vitamin D lowers falls."
    assert Feedback().text([]) == NO_RESULTS
    assert leading_sentence("  Two\nlines. Next one.") == "Two lines."
    for kwargs, message in (({"docs": 0}, "positive integer"), ({"field": "abstract"}, "choose one of"),
                            ({"max_chars": 5}, ">= 20")):
        with pytest.raises(ValueError, match=message):
            Feedback(**kwargs)


def test_query_only_stays_the_default_and_feedback_is_an_option():
    plain = TASKS["retrieval"]
    assert plain.feedback is None and "{feedback}" not in plain.user
    assert plain.messages("q", HITS) == plain.messages("q")  # hits do not change a query-only prompt
    task = with_feedback("retrieval", 2)
    assert task.feedback == Feedback(docs=2) and task.system == plain.system
    last = task.messages("vitamin d", HITS)[-1]["content"]
    assert last.startswith("Query: vitamin d\n") and last.endswith("\n1. Vitamin D and falls\n2. No title here!")
    assert "Heart attack symptoms" in task.messages("vitamin d", HITS)[1]["content"]  # the example shows feedback
    with pytest.raises(ValueError, match="pass them"):
        task.messages("vitamin d")
    with pytest.raises(ValueError, match="goes with a Feedback"):
        Task("t", "s", user="{query} {feedback}")
    assert TrainConfig().build_task().feedback is None
    expected = with_feedback(TrainConfig(reward_k=50).build_task(), 4)
    assert TrainConfig(feedback_docs=4, reward_k=50).build_task() == expected
    with pytest.raises(ConfigError, match="feedback_docs=-1"):
        TrainConfig(feedback_docs=-1)


def test_training_eval_and_llamaindex_build_the_same_prompts(scifact_dev):
    task = with_feedback("retrieval", 3)
    retriever = build_beir_bm25(collection_path("scifact"))
    search = LlamaIndexSearch(retriever)
    rows = training_rows(scifact_dev)[:5]
    training = [row["prompt"] for row in prompt_rows(Renderer(), task, rows, search)]
    hits = first_pass(search, [r.query_text for r in rows], task)
    assert all(len(h) == 3 for h in hits) and hits[0][0].title  # SciFact has titles: they are what is shown

    recorder = ScriptedRewriter(task=task)
    evaluate(scifact_dev, search, [Source("fb", recorder)], limit=5, progress=False)
    evaluation = [rendered(task, c) for batch in recorder.calls for c in batch]

    deployed = ScriptedRewriter(task=task)
    wrapper = DeepRetrievalRetriever(retriever, rewriter=deployed)
    for row in rows:
        wrapper.retrieve(row.query_text)
    deployment = [rendered(task, c) for batch in deployed.calls for c in batch]

    assert training == evaluation == deployment
    for prompt, row, row_hits in zip(training, rows, hits, strict=True):
        user = json.loads(prompt.removesuffix(task.prefill))[-1]["content"]
        assert user.startswith(f"Query: {row.query_text}\n") and user.endswith(task.feedback.text(row_hits))
        assert all(hit.title[:40] in user for hit in row_hits)


async def test_haystack_component_builds_the_training_prompt_in_a_pipeline(scifact_dev):
    task = with_feedback("retrieval", 3)
    search = HaystackSearch.from_beir(collection_path("scifact"))
    rows = training_rows(scifact_dev)[:4]
    training = [row["prompt"] for row in prompt_rows(Renderer(), task, rows, search)]

    recorder = ScriptedRewriter(task=task)
    pipe = Pipeline()
    pipe.add_component("first_pass", search.retriever)
    pipe.add_component("rewriter", DeepRetrievalQueryRewriter.from_rewriter(recorder))
    pipe.connect("first_pass.documents", "rewriter.documents")
    for row in rows:
        pipe.run({"first_pass": {"query": row.query_text}, "rewriter": {"query": row.query_text}})
    await pipe.run_async({"first_pass": {"query": rows[0].query_text}, "rewriter": {"query": rows[0].query_text}})
    deployment = [rendered(task, c) for batch in recorder.calls for c in batch]
    assert deployment == training + training[:1]

    # the same documents give the same prompt whichever framework retrieved them
    llama = LlamaIndexSearch(build_beir_bm25(collection_path("scifact")))
    ids = llama.search([rows[0].query_text], 3)[0]
    store = search.retriever.document_store
    documents = sorted(store.filter_documents({"field": "id", "operator": "in", "value": ids}),
                       key=lambda d: ids.index(d.id))
    recorder.calls.clear()
    DeepRetrievalQueryRewriter.from_rewriter(recorder).run(rows[0].query_text, documents=documents)
    llama_training = prompt_rows(Renderer(), task, rows[:1], llama)[0]["prompt"]
    assert rendered(task, recorder.calls[0][0]) == llama_training


def test_a_feedback_component_without_documents_names_the_fix():
    component = DeepRetrievalQueryRewriter(backend="openai", model="m", feedback_docs=2)
    assert component.to_dict()["init_parameters"]["feedback_docs"] == 2
    assert DeepRetrievalQueryRewriter.from_dict(component.to_dict())._task == with_feedback("retrieval", 2)
    with pytest.raises(ValueError, match="connect a first retriever's documents"):
        component.run("a query")
    with pytest.raises(ValueError, match="must contain '\\{feedback\\}'"):
        DeepRetrievalQueryRewriter(feedback_docs=2, user_prompt="Q: {query}")


def test_eval_caches_feedback_rewrites_per_first_pass(adi_test, tmp_path):
    from deepretrieval_trainer.retrieval.bm25 import BM25Search

    task = with_feedback("retrieval", 2)
    recorder = ScriptedRewriter(task=task)
    source = Source("fb", recorder, identity="scripted")
    evaluate(adi_test, BM25Search(adi_test.corpus), [source], limit=3, out_dir=tmp_path, progress=False)
    evaluate(adi_test, BM25Search(adi_test.corpus), [source], limit=3, out_dir=tmp_path, progress=False)
    assert len(recorder.calls) == 1  # the same first pass: the cached rewrites
    shown = {h.doc_id for row in first_pass(BM25Search(adi_test.corpus), list(adi_test.judged_queries.values())[:3],
                                             task) for h in row}
    other = BM25Search({d: doc for d, doc in adi_test.corpus.items() if d not in shown})
    evaluate(adi_test, other, [source], limit=3, out_dir=tmp_path, progress=False)
    assert len(recorder.calls) == 2  # another retriever shows other documents: rewritten again


def test_eval_sources_show_feedback_as_configured_or_as_the_run_was_trained(tmp_path):
    from deepretrieval_trainer.evaluation.sources import parse_source

    assert parse_source("base").rewriter.task.feedback is None
    base = parse_source("base", feedback_docs=2)
    assert base.rewriter.task == with_feedback("retrieval", 2)
    assert base.identity != parse_source("base").identity  # another prompt, another rewrite cache
    served = parse_source("server:http://127.0.0.1:9/v1#rw", feedback_docs=4)
    assert served.rewriter.task.feedback == Feedback(docs=4)
    run = tmp_path / "run"
    (run / "adapter").mkdir(parents=True)
    (run / "adapter" / "adapter_config.json").write_text("{}")
    (run / "config.yaml").write_text("framing: replace\nfeedback_docs: 3\n")
    assert parse_source(f"adapter:{run}").rewriter.task.feedback == Feedback(docs=3)  # the run's setting wins
    assert parse_source(f"adapter:{run}", feedback_docs=1).rewriter.task.feedback == Feedback(docs=3)


def test_training_refuses_a_backend_without_document_text_before_the_model_loads(adi_test, tmp_path):
    from deepretrieval_trainer.training.retrieval import train

    class IdsOnly:
        def search(self, queries, k):
            return [["1"] for _ in queries]

    with pytest.raises(TypeError, match="feedback_docs=2 needs the text .*IdsOnly cannot return it"):
        train(IdsOnly(), adi_test, TrainConfig(run_dir=str(tmp_path / "run"), feedback_docs=2))
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_a_feedback_run_trains_and_is_evaluated_with_its_prompt(adi_test, tmp_path):
    from deepretrieval_trainer.evaluation.sources import parse_source
    from deepretrieval_trainer.retrieval.bm25 import BM25Search
    from deepretrieval_trainer.training.retrieval import train

    search = BM25Search(adi_test.corpus)
    config = TrainConfig(run_dir=str(tmp_path / "run"), max_steps=1, save_steps=1, prompts_per_step=1,
                         num_generations=2, max_completion_length=32, max_queries=2, torch_threads=1,
                         feedback_docs=2)
    adapter = train(search, adi_test, config)
    assert (adapter / "adapter_config.json").is_file()
    source = parse_source(f"adapter:{adapter.parent}")
    assert source.rewriter.task == with_feedback("retrieval", 2)
    report = evaluate(adi_test, search, [source], limit=2, progress=False)
    assert [o.qid for o in report.source(source.name).outcomes] == list(adi_test.judged_queries)[:2]
