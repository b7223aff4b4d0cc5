"""`deepretrieval synthesize` end to end on ADI (a folder load_queries/load_qrels read), its errors (exit 2, the fix
named, nothing written into the data), `deepretrieval train --labels synthetic` and `--labels FOLDER` in one run
folder that records how the labels were made, and the doc2query writer with the embedded model."""

from __future__ import annotations

import json

import pytest

from deepretrieval_trainer.cli import main
from deepretrieval_trainer.retrieval.data import load_corpus, load_qrels, load_queries
from deepretrieval_trainer.retrieval.documents import sample_documents
from tests.conftest import collection_path

ADI = collection_path("adi")
TINY = ["--max-steps", "2", "--save-steps", "1", "--prompts-per-step", "1", "--num-generations", "2",
        "--max-completion-length", "32", "--max-queries", "4", "--torch-threads", "1", "--learning-rate", "1e-4"]


def test_synthesize_writes_a_beir_layout_folder(tmp_path, capsys):
    out = tmp_path / "labels"
    code = main(["synthesize", "--documents", f"beir:{ADI}", "--out", str(out), "--sample", "60",
                 "--queries-per-document", "2", "--retriever-framework", "llamaindex", "--show", "3"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "rank of the source document under the raw pseudo-query (kept: 2..100)" in printed
    assert printed.count("[rank ") == 3 and f"deepretrieval train --labels {out}" in printed
    queries, qrels = load_queries(out), load_qrels(out, "synthetic")
    assert queries and set(queries) == set(qrels)
    assert {d for judged in qrels.values() for d in judged} <= set(load_corpus(ADI))
    report = json.loads((out / "synthesis.json").read_text())
    assert report["retriever"] == "LlamaIndexSearch" and report["documents"]["sampled"] == 60
    assert report["kept"] == len(queries) and report["config"]["documents"] == f"beir:{ADI}"


def test_synthesize_with_the_headroom_check_says_what_it_dropped(tmp_path, capsys):
    out = tmp_path / "labels"
    code = main(["synthesize", "--documents", f"beir:{ADI}", "--out", str(out), "--sample", "82",
                 "--queries-per-document", "3", "--retriever-framework", "llamaindex", "--headroom", "prf"])
    assert code == 0
    printed = capsys.readouterr().out
    report = json.loads((out / "synthesis.json").read_text())
    dropped = report["dropped"]["no headroom (RM3 does not rank the document higher)"]
    assert f"headroom (prf): {dropped} of {report['headroom']['checked']} pairs in the window dropped" in printed
    assert report["config"]["headroom"] == "prf" and len(load_queries(out)) == report["kept"] > 0


@pytest.mark.parametrize(("args", "message"), [
    (["--out", "{tmp}/x"], "--documents is required"),
    (["--documents", f"beir:{ADI}", "--out", str(ADI / "labels")], "inside the documents' folder"),
    (["--documents", "beir:{tmp}/empty", "--out", "{tmp}/x"], "holds no documents"),
    (["--documents", f"beir:{ADI}", "--out", "{tmp}/x", "--min-rank", "9", "--max-rank", "3"], "above max_rank"),
    (["--documents", f"llamaindex:{ADI}", "--out", "{tmp}/x"], "name it beir:PATH"),
    (["--documents", f"beir:{ADI}", "--out", "{tmp}/x", "--headroom", "always"], "choose one of ['none', 'prf']"),
])
def test_synthesize_errors_name_the_fix(tmp_path, capsys, args, message):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "corpus.jsonl").write_text("")
    code = main(["synthesize", *[a.replace("{tmp}", str(tmp_path)) for a in args]])
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err
    assert not (ADI / "labels").exists() and not (tmp_path / "x" / "queries.jsonl").exists()


def test_train_on_labels_from_a_folder_checks_it_before_the_model_loads(tmp_path, capsys):
    out = tmp_path / "labels"
    (out).mkdir()
    (out / "synthesis.json").write_text(json.dumps({"status": "no pairs kept"}))
    code = main(["train", "--labels", str(out), "--run-dir", str(tmp_path / "run"), "--model", "/nonexistent/model",
                 "--data-path", str(ADI)])
    assert code == 2 and "holds no labels" in capsys.readouterr().err


@pytest.mark.slow
def test_train_with_synthetic_labels_in_one_run_folder(tmp_path):
    run = tmp_path / "run"
    code = main(["train", "--labels", "synthetic", "--synthesis-documents", f"beir:{ADI}", "--synthesis-sample", "40",
                 "--run-dir", str(run), *TINY])
    assert code == 0
    info = json.loads((run / "run.json").read_text())
    assert info["status"] == "completed" and info["steps"] == 2
    assert info["labels"]["source"] == "synthetic" and info["dataset"]["queries"] == 4  # --max-queries of those kept
    report = json.loads((run / "synthesis.json").read_text())
    assert report == json.loads((run / "labels" / "synthesis.json").read_text())
    assert report["documents"]["sampled"] == 40 and report["retriever"] == "BM25Search"
    assert (run / "adapter" / "adapter_config.json").is_file()
    assert load_queries(run / "labels") and info["labels"]["kept"] == report["kept"]
    # the same command again resumes: the labels made for the run are reused, not made again
    before = (run / "labels" / "queries.jsonl").read_text()
    assert main(["train", "--config", str(run / "config.yaml"), "--resume"]) == 0
    assert (run / "labels" / "queries.jsonl").read_text() == before


@pytest.mark.slow
def test_doc2query_writes_a_query_about_each_document():
    from deepretrieval_trainer.rewriting.doc2query import Doc2QueryWriter

    documents = sample_documents(f"beir:{ADI}", 4, seed=0).documents
    writer = Doc2QueryWriter(batch_size=4, max_new_tokens=32)
    written = list(writer.stream(documents))
    assert [index for index, _, _ in written] == [0, 1, 2, 3]
    queries = [query for _, query, _ in written if query]
    assert len(queries) >= 3
    for index, query, _ in written:
        if query:
            words = {w.lower() for w in query.split()}
            assert 2 <= len(words) <= 30 and words & set(documents[index].content.lower().split())
    described = writer.describe()
    assert described["method"] == "doc2query" and described["model"] == "smollm2-135m-instruct"
    assert described["dtype"] in ("bfloat16", "float32")
