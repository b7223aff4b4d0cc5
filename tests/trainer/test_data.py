import json

import pytest

from deepretrieval_trainer.common.errors import DataError
from deepretrieval_trainer.retrieval.data import available_splits, load_beir


def _write_collection(root, corpus=None, queries=None, qrels="query-id\tcorpus-id\tscore\nq1\td1\t1\n"):
    corpus = corpus if corpus is not None else [{"_id": "d1", "title": "T", "text": "text one"}, {"_id": "d2", "text": "two"}]
    queries = queries if queries is not None else [{"_id": "q1", "text": "query one"}]
    root.mkdir(parents=True, exist_ok=True)
    (root / "corpus.jsonl").write_text("".join(json.dumps(r) + "\n" for r in corpus))
    (root / "queries.jsonl").write_text("".join(json.dumps(r) + "\n" for r in queries))
    (root / "qrels").mkdir(exist_ok=True)
    (root / "qrels" / "test.tsv").write_text(qrels)
    return root


def test_real_collections_load(scifact_dev, data_dir):
    assert len(scifact_dev.corpus) == 5183
    assert len(scifact_dev.qrels) == 158
    assert set(scifact_dev.judged_queries) == set(scifact_dev.qrels)
    assert available_splits(data_dir / "scifact") == ["dev", "train"]
    assert len(scifact_dev.fingerprint) == 16


def test_preprocessed_corpus_and_unknown_docs(data_dir):
    with pytest.raises(DataError, match="not in the corpus"):
        load_beir(data_dir / "nfcorpus", "train")
    train = load_beir(data_dir / "nfcorpus", "train", drop_unknown_docs=True)
    assert len(train.corpus) == 3395
    assert all(doc in train.corpus for judged in train.qrels.values() for doc in judged)


def test_minimal_collection(tmp_path):
    collection = load_beir(_write_collection(tmp_path / "c"), "test")
    assert collection.doc_text("d1") == "T text one"
    assert collection.qrels == {"q1": {"d1": 1.0}}


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"corpus": [{"_id": "d1", "text": "a"}, {"_id": "d1", "text": "b"}]}, r"corpus.jsonl:2: duplicate id 'd1'"),
        ({"corpus": [{"_id": "d1", "title": "", "text": " "}]}, r"corpus.jsonl:1: document 'd1' has an empty"),
        ({"corpus": [{"title": "x", "text": "y"}]}, r"corpus.jsonl:1: missing '_id'"),
        ({"queries": [{"_id": "q1", "text": ""}]}, r"queries.jsonl:1: query 'q1' has empty 'text'"),
        ({"qrels": "query-id\tcorpus-id\tscore\nq9\td1\t1\n"}, r"query 'q9' is not in"),
        ({"qrels": "query-id\tcorpus-id\tscore\nq1\td7\t1\n"}, r"judges documents not in the corpus: \['d7'\]"),
        ({"qrels": "query-id\tcorpus-id\tscore\nq1\td1\n"}, r"test.tsv:2: expected 3 tab-separated columns"),
        ({"qrels": "query-id\tcorpus-id\tscore\nq1\td1\thigh\n"}, r"test.tsv:2: score 'high' is not a number"),
    ],
)
def test_bad_data_names_file_and_line(tmp_path, kwargs, message):
    root = _write_collection(tmp_path / "c", **kwargs)
    with pytest.raises(DataError, match=message):
        load_beir(root, "test")


def test_missing_files(tmp_path):
    with pytest.raises(DataError, match="not a folder"):
        load_beir(tmp_path / "nope", "test")
    root = _write_collection(tmp_path / "c")
    with pytest.raises(DataError, match=r"splits here are \['test'\]"):
        load_beir(root, "dev")
    (root / "queries.jsonl").unlink()
    with pytest.raises(DataError, match="queries.jsonl: missing"):
        load_beir(root, "test")
    (root / "corpus.jsonl").unlink()
    with pytest.raises(DataError, match="no corpus.jsonl or corpus.preprocessed.jsonl"):
        load_beir(root, "test")


def test_invalid_json_line(tmp_path):
    root = _write_collection(tmp_path / "c")
    (root / "corpus.jsonl").write_text('{"_id": "d1", "text": "ok"}\n{broken\n')
    with pytest.raises(DataError, match=r"corpus.jsonl:2: not valid JSON"):
        load_beir(root, "test")
