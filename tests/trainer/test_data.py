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


# -- cells a loader cannot take: a DataError naming file:line and the fix, never an interpreter or csv error -------

BIG = "1" * 5000  # more digits than Python converts (int() and str() raise ValueError)
BAD_CELLS = {  # case -> (file, the line appended to it (bytes: written raw), what the message says)
    "a 5000-digit integer _id (corpus)": (
        "corpus", '{"_id": ' + BIG + ', "text": "x"}',
        r"corpus\.jsonl:3: a number of 5000 digits is longer than Python reads \(4300\); write ids as JSON strings"),
    "a 5000-digit integer _id (queries)": (
        "queries", '{"_id": ' + BIG + ', "text": "x"}', r"queries\.jsonl:2: a number of 5000 digits"),
    "a 2000-character _id": (
        "corpus", '{"_id": "' + "d" * 2000 + '", "text": "x"}',
        r"corpus\.jsonl:3: '_id' 'ddd.*\.\.\. is 2,000 characters long; an id is at most 1024 characters"),
    "a qrels cell over csv's 128 KiB field limit": (
        "qrels", "q1\t" + "d" * 140_000 + "\t1",
        r"test\.tsv:3: the corpus-id 'ddd.*\.\.\. is 140,000 characters long; an id is at most 1024 characters: check"),
    "a 140,000-digit qrels score": (
        "qrels", "q1\td1\t" + "9" * 140_000, r"test\.tsv:3: score '999.*\.\.\. is not a finite number; write a "),
    "a lone surrogate in a document": (
        "corpus", r'{"_id": "d3", "text": "bad \ud800 text"}',
        r"corpus\.jsonl:3: 'text' holds a lone surrogate \(\\ud800 at character 5\).*write it again as UTF-8"),
    "a lone surrogate in a title": (
        "corpus", r'{"_id": "d3", "title": "\udfff", "text": "x"}', r"corpus\.jsonl:3: 'title' holds a lone surrogate"),
    "a lone surrogate in a query": (
        "queries", r'{"_id": "q2", "text": "what \udc00"}', r"queries\.jsonl:2: 'text' holds a lone surrogate"),
    "a lone surrogate in an id": (
        "corpus", r'{"_id": "d\udbff", "text": "x"}', r"corpus\.jsonl:3: '_id' holds a lone surrogate"),
    "surrogate bytes in qrels": (
        "qrels", b"q1\td\xed\xa0\x80\t1", r"test\.tsv:3: not UTF-8 text \(byte 0xed at column 5\); save the file"),
    "a NUL in a qrels id": (
        "qrels", "q1\td\x001\t1",
        r"test\.tsv:3: the corpus-id 'd\\x001' holds '\\x00' at character 2; .*no tab, line break or NUL: remove it"),
    "a NUL in a document id": (
        "corpus", r'{"_id": "d\u0000", "text": "x"}', r"corpus\.jsonl:3: '_id' 'd\\x00' holds '\\x00'"),
    "a tab in a query id": (
        "queries", r'{"_id": "q\t2", "text": "x"}', r"queries\.jsonl:2: '_id' 'q\\t2' holds '\\t'"),
}


def _with_line(root, part: str, line: str | bytes):
    file = {"corpus": root / "corpus.jsonl", "queries": root / "queries.jsonl", "qrels": root / "qrels" / "test.tsv"}[part]
    file.write_bytes(file.read_bytes() + (line if isinstance(line, bytes) else line.encode("utf-8")) + b"\n")
    return root


@pytest.mark.parametrize("loader", ["load_beir", "the file's own loader"])
@pytest.mark.parametrize("case", BAD_CELLS)
def test_a_bad_cell_is_a_data_error_naming_the_file_line_and_fix(tmp_path, case, loader):
    from deepretrieval_trainer.retrieval.data import load_corpus, load_qrels, load_queries

    part, line, message = BAD_CELLS[case]
    root = _with_line(_write_collection(tmp_path / "c"), part, line)
    load = {"load_beir": lambda: load_beir(root, "test"), "corpus": lambda: load_corpus(root),
            "queries": lambda: load_queries(root), "qrels": lambda: load_qrels(root, "test")}
    with pytest.raises(DataError, match=message):
        load["load_beir" if loader == "load_beir" else part]()


def test_a_lone_surrogate_in_a_field_no_stage_reads_is_left_alone(tmp_path):
    root = _with_line(_write_collection(tmp_path / "c"), "corpus", r'{"_id": "d3", "text": "x", "metadata": "\ud800"}')
    assert load_beir(root, "test").corpus["d3"] == {"title": "", "text": "x"}


def test_a_quoted_qrels_cell_is_read_as_written(tmp_path, caplog):
    """qrels are plain tab-separated text: csv's quoting silently turned '"q1"' into 'q1'."""
    from deepretrieval_trainer.retrieval.data import load_qrels

    root = _with_line(_write_collection(tmp_path / "c"), "qrels", '"q1"\td1\t1')
    assert load_qrels(root, "test") == {"q1": {"d1": 1.0}, '"q1"': {"d1": 1.0}}
    assert "test.tsv:3: a quoted id; qrels are plain tab-separated text" in caplog.text
    with pytest.raises(DataError, match=r"test\.tsv: query '\"q1\"' is not in .*queries\.jsonl; fix the id or add the "
                                        r"query; qrels are plain tab-separated text, so quotes around an id are part"):
        load_beir(root, "test")
    root = _write_collection(tmp_path / "d", qrels='query-id\tcorpus-id\tscore\nq1\t"d1"\t1\n')
    with pytest.raises(DataError, match=r"judges documents not in the corpus: \['\"d1\"'\].*quotes around an id"):
        load_beir(root, "test")


LITERATURE_CELLS = {  # case -> (the line, what the message says)
    "a 5000-digit integer id": ('{"id": ' + BIG + ', "topic": "x", "relevant": ["1"]}',
                                r"l\.jsonl:2: a number of 5000 digits is longer than Python reads"),
    "a 5000-digit relevant id": ('{"id": "r2", "topic": "x", "relevant": [' + BIG + ']}',
                                 r"l\.jsonl:2: a number of 5000 digits"),
    "a 2000-character relevant id": ('{"id": "r2", "topic": "x", "relevant": ["' + "7" * 2000 + '"]}',
                                     r"l\.jsonl:2: 'relevant'\[0\] '777.*is 2,000 characters long"),
    "a lone surrogate in the topic": (r'{"id": "r2", "topic": "a \ud800 b", "relevant": ["1"]}',
                                      r"l\.jsonl:2: 'topic' holds a lone surrogate \(\\ud800 at character 3\)"),
    "a lone surrogate in a PICO field": (r'{"id": "r2", "P": "\udc00", "relevant": ["1"]}',
                                         r"l\.jsonl:2: 'P' holds a lone surrogate"),
    "a lone surrogate in a relevant id": (r'{"id": "r2", "topic": "x", "relevant": ["1", "\ud800"]}',
                                          r"l\.jsonl:2: 'relevant' holds a lone surrogate"),
    "a lone surrogate in meta": (r'{"id": "r2", "topic": "x", "relevant": ["1"], "meta": {"note": "\ud800"}}',
                                 r"l\.jsonl:2: 'note' holds a lone surrogate"),
    "a NUL in the id": (r'{"id": "r\u00002", "topic": "x", "relevant": ["1"]}',
                        r"l\.jsonl:2: 'id' 'r\\x002' holds '\\x00'"),
}


@pytest.mark.parametrize("case", LITERATURE_CELLS)
def test_a_bad_literature_cell_is_a_data_error_naming_the_file_line_and_fix(tmp_path, case):
    from deepretrieval_trainer.literature.dataset import load_literature

    line, message = LITERATURE_CELLS[case]
    file = tmp_path / "l.jsonl"
    file.write_text('{"id": "r1", "topic": "x", "relevant": ["1"]}\n' + line + "\n", encoding="utf-8")
    with pytest.raises(DataError, match=message):
        load_literature(file)


def test_text_that_cannot_be_encoded_never_reaches_the_fts5_index(tmp_path):
    """A corpus built in Python (no file line to name) is refused naming the document, before the index is written."""
    from deepretrieval_trainer.literature.fts5 import FTS5Search

    for fingerprint in (None, "given"):  # the fingerprint hashes the text; a given one skips that
        with pytest.raises(DataError, match=r"document 'd2' holds a lone surrogate \(\\udc00 at character 3\), which "
                                            r"SQLite cannot store: fix the text"):
            FTS5Search({"d1": {"title": "a", "text": "b"}, "d2": {"title": "", "text": "b \udc00"}},
                       fingerprint=fingerprint, index_path=tmp_path / f"{fingerprint}.sqlite")
        assert not (tmp_path / f"{fingerprint}.sqlite").exists()
