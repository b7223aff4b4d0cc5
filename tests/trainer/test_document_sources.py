"""Documents where users keep them, streamed: the BEIR corpus file line by line, the sources the plugins register by
entry point, a uniform sample in one pass with bounded memory (a generated 1M-document corpus in a subprocess), and
every bad record (too short, binary, 1 MB, a repeated id, not JSON, not UTF-8) skipped and counted, never fatal."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from collections import Counter
from importlib.metadata import entry_points

import pytest

from deepretrieval_trainer.common.errors import ConfigError, DataError
from deepretrieval_trainer.retrieval.data import load_corpus
from deepretrieval_trainer.retrieval.documents import (
    ENTRY_POINTS,
    BeirDocuments,
    SourceDocument,
    Unreadable,
    open_documents,
    sample_documents,
)
from tests.conftest import collection_path

WORDS = "retrieval of documents by their words and the queries people type to find them".split()


def write_corpus(folder, rows):
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / "corpus.jsonl").open("w", encoding="utf-8") as out:
        for row in rows:
            out.write((row if isinstance(row, str) else json.dumps(row)) + "\n")
    return folder


def doc(doc_id, words=12, title=""):
    return {"_id": doc_id, "title": title, "text": " ".join(WORDS[i % len(WORDS)] for i in range(words))}


def test_beir_documents_stream_the_corpus_as_load_corpus_reads_it():
    path = collection_path("adi")
    corpus = load_corpus(path)
    streamed = list(open_documents(f"beir:{path}"))
    assert [d.doc_id for d in streamed] == list(corpus)
    for document in streamed:
        assert (document.title, document.text) == (corpus[document.doc_id]["title"].strip(),
                                                    corpus[document.doc_id]["text"].strip())
    assert list(BeirDocuments(path / "corpus.jsonl")) == streamed  # the file itself, too


def test_the_plugins_register_their_sources_by_entry_point():
    registered = {entry.name: entry.value for entry in entry_points(group=ENTRY_POINTS)}
    assert registered == {"llamaindex": "llamaindex_deepretrieval.documents:storage_documents",
                          "haystack": "haystack_deepretrieval.stores:saved_store_documents"}


@pytest.mark.parametrize(("spec", "message"), [
    ("../shared/data/adi", "SCHEME:PATH"),
    ("beir:", "SCHEME:PATH"),
    ("nowhere:../shared/data/adi", "no package registers it"),
    ("beir:/no/such/folder", "does not exist"),
])
def test_a_bad_source_name_says_how_to_write_one(spec, message):
    with pytest.raises(ConfigError, match=message):
        open_documents(spec)


def test_the_sample_is_uniform_seeded_and_in_source_order(tmp_path):
    folder = write_corpus(tmp_path / "c", [doc(f"d{i}") for i in range(1000)])
    def ids(seed):
        return [d.doc_id for d in sample_documents(f"beir:{folder}", 100, seed=seed).documents]

    first = sample_documents(f"beir:{folder}", 100, seed=1)
    assert [d.doc_id for d in first.documents] == ids(1) != ids(2)
    positions = [int(d.doc_id[1:]) for d in first.documents]
    assert positions == sorted(positions) and len(set(positions)) == 100
    assert 300 < sum(positions) / 100 < 700  # spread over the whole file, not its first 100 lines
    counts = Counter()
    for seed in range(200):  # each document is drawn with probability 1/10
        counts.update(int(d.doc_id[1:]) // 100 for d in sample_documents(f"beir:{folder}", 100, seed=seed).documents)
    assert all(1700 < counts[tenth] < 2300 for tenth in range(10)), counts
    everything = sample_documents(f"beir:{folder}", 5000)
    assert len(everything.documents) == 1000 and everything.report()["sampled"] == 1000


BOUNDED = textwrap.dedent("""
    import json, resource, sys
    from deepretrieval_trainer.retrieval.documents import sample_documents
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    sample = sample_documents(sys.argv[1], 50, seed=0)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"before_kb": before, "peak_kb": peak, **sample.report()}))
""")


def test_a_million_documents_are_sampled_in_bounded_memory(tmp_path):
    folder = tmp_path / "big"
    folder.mkdir()
    text = " ".join(WORDS[:10])
    with (folder / "corpus.jsonl").open("w", encoding="utf-8") as out:  # 1M tiny documents, ~80 MB
        out.writelines(f'{{"_id": "d{i}", "title": "", "text": "{text} {i}"}}\n' for i in range(1_000_000))
    size_mb = (folder / "corpus.jsonl").stat().st_size / 2**20
    result = subprocess.run([sys.executable, "-c", BOUNDED, f"beir:{folder}"], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["read"] == report["usable"] == 1_000_000 and report["sampled"] == 50
    grown_mb = (report["peak_kb"] - report["before_kb"]) / 1024
    # what load_corpus would hold is several times the file; the sample holds 50 documents and 8 bytes per id
    assert size_mb > 70 and grown_mb < 30, (size_mb, grown_mb)


def test_bad_documents_are_skipped_and_counted(tmp_path):
    rows = [doc(f"ok{i}") for i in range(5)] + [
        doc("short", words=3),
        {"_id": "binary", "title": "", "text": "\x00\x01\x02\x03 data \ufffd\ufffd" * 20},
        {"_id": "huge", "title": "A huge one", "text": ("word " * 200_000).strip()},  # 1 MB
        doc("twice"), doc("twice"),
        "{not json",
        {"_id": ["a list"], "text": "an id that is no id " * 3},
        {"_id": "with\ttab", "text": "an id a qrels file cannot hold " * 2},
        {"_id": "numbers", "text": " ".join(str(n) for n in range(200))},
    ]
    folder = write_corpus(tmp_path / "c", rows)
    with (folder / "corpus.jsonl").open("ab") as out:
        out.write(b'{"_id": "latin1", "text": "caf\xe9 au lait and more words here to pass"}\n')
    sample = sample_documents(f"beir:{folder}", 100)
    assert sorted(d.doc_id for d in sample.documents) == ["huge", "ok0", "ok1", "ok2", "ok3", "ok4"]
    huge = next(d for d in sample.documents if d.doc_id == "huge")
    assert len(huge.content) <= 1000 and huge.content.startswith("A huge one word word") and sample.cut == 1
    assert sample.skipped == {"fewer than 8 words": 1, "binary or not text": 2, "an id that occurs more than once": 2,
                              "not JSON": 1, "a missing id, or one a qrels file cannot hold": 2, "not UTF-8": 1}
    assert sample.examples["not UTF-8"].endswith(f"corpus.jsonl:{len(rows) + 1}")
    assert sample.read == len(rows) + 1 and sample.usable == 8  # 'twice' twice is usable until the ids are compared


def test_an_empty_store_and_a_store_of_junk_are_errors_naming_it(tmp_path):
    empty = write_corpus(tmp_path / "empty", [])
    with pytest.raises(DataError, match=r"beir:.*empty: holds no documents"):
        sample_documents(f"beir:{empty}", 10)
    junk = write_corpus(tmp_path / "junk", [doc("a", words=2), doc("b", words=3), "[1, 2]"])
    with pytest.raises(DataError, match=r"none of its 3 records .* 2 fewer than 8 words \(first: document 'a'\)"):
        sample_documents(f"beir:{junk}", 10)
    with pytest.raises(DataError, match="no corpus.jsonl"):
        open_documents(f"beir:{tmp_path}")


def test_any_iterable_of_documents_is_a_source():
    rows = [("a", "Title", "Title and a body of enough words to write a query"), ("b", None, "x"),
            SourceDocument("c", "", "another document with quite enough words in it"), Unreadable("broken", "row 4")]
    sample = sample_documents(rows, 10)
    assert [d.doc_id for d in sample.documents] == ["a", "c"]
    assert sample.documents[0].text == "and a body of enough words to write a query"  # the leading title is the title
    assert sample.skipped == {"fewer than 8 words": 1, "broken": 1}
    with pytest.raises(TypeError, match="is text"):
        sample_documents(b"bytes are not documents", 1)
