"""Labels from a Haystack document store's own documents: a real InMemoryDocumentStore saved with save_to_disk
(streamed, in bounded memory for a large one), a live store walked in place or through filter_documents, the
`store` retriever kind, and `synthesize` filtering through HaystackSearch; bad stores get errors naming the fix."""

from __future__ import annotations

import json

import pytest
from haystack import Document
from haystack.components.retrievers.in_memory import InMemoryBM25Retriever
from haystack.document_stores.in_memory import InMemoryDocumentStore

from deepretrieval_trainer.common.errors import DataError
from deepretrieval_trainer.retrieval.data import load_corpus
from deepretrieval_trainer.retrieval.documents import open_documents, sample_documents
from deepretrieval_trainer.training.config import RetrieverConfig
from deepretrieval_trainer.training.retrievers import build_search
from deepretrieval_trainer.training.synthetic import NO_HEADROOM
from haystack_deepretrieval import HaystackSearch, SavedStoreDocuments, StoreDocuments, beir_documents, synthesize
from tests.conftest import collection_path, sample_twenty_in_a_fresh_process

ADI = collection_path("adi")


@pytest.fixture(scope="module")
def adi_store():
    store = InMemoryDocumentStore()
    store.write_documents(beir_documents(ADI))
    return store


@pytest.fixture(scope="module")
def saved_adi(adi_store, tmp_path_factory):
    path = tmp_path_factory.mktemp("store") / "adi.json"
    adi_store.save_to_disk(str(path))
    return path


def expected():
    return [(doc_id, doc["title"].strip(), doc["text"].strip()) for doc_id, doc in load_corpus(ADI).items()]


def test_a_saved_store_streams_its_documents(saved_adi):
    streamed = list(open_documents(f"haystack:{saved_adi}"))  # the entry point the CLI names
    assert [(d.doc_id, d.title, d.text) for d in streamed] == expected()
    assert list(SavedStoreDocuments(saved_adi)) == streamed


def test_a_live_store_in_place_or_through_filter_documents(adi_store):
    assert [(d.doc_id, d.title, d.text) for d in StoreDocuments(adi_store)] == expected()
    filtered = list(StoreDocuments(adi_store, filters={"field": "id", "operator": "in", "value": ["1", "5"]}))
    assert sorted(d.doc_id for d in filtered) == ["1", "5"]


def test_synthesize_from_a_saved_store_through_its_bm25(saved_adi, tmp_path):
    labels = synthesize(saved_adi, sample=82, queries_per_document=3, max_rank=40, out=tmp_path / "labels",
                        progress=False)
    search = HaystackSearch.from_store(saved_adi)
    found = search.search([p.query for p in labels.pairs], 40)
    assert labels.pairs and all(r.index(p.doc_id) + 1 == p.rank >= 2 for p, r in zip(labels.pairs, found, strict=True))
    report = json.loads((tmp_path / "labels" / "synthesis.json").read_text())
    assert report["retriever"] == "HaystackSearch" and report["documents"]["source"] == f"haystack:{saved_adi}"
    # what `--retriever-kind store` builds for the CLI is the same retriever
    built = build_search(RetrieverConfig(framework="haystack", kind="store", path=str(saved_adi)), str(saved_adi))
    assert built.search([labels.pairs[0].query], 40) == found[:1]


def test_synthesize_from_a_live_store_and_the_retriever_given(adi_store):
    own = synthesize(adi_store, sample=82, queries_per_document=2, progress=False)
    given = synthesize(adi_store, retriever=InMemoryBM25Retriever(document_store=adi_store), sample=82,
                       queries_per_document=2, progress=False)
    assert own.pairs and [p.query for p in own.pairs] == [p.query for p in given.pairs]


def test_the_headroom_check_runs_rm3_through_haystack_bm25(adi_store):
    plain = synthesize(adi_store, sample=82, queries_per_document=3, max_rank=40, progress=False)
    labels = synthesize(adi_store, sample=82, queries_per_document=3, max_rank=40, headroom="prf", progress=False)
    assert 0 < len(labels.pairs) < len(plain.pairs)
    assert all(p.prf_rank is not None and p.prf_rank < p.rank for p in labels.pairs)
    assert labels.report["retriever"] == "HaystackSearch" and labels.report["dropped"][NO_HEADROOM] > 0


def test_documents_without_text_are_counted_and_a_store_without_any_is_an_error(tmp_path):
    store = InMemoryDocumentStore()
    store.write_documents([Document(id="blob", content=None, meta={"title": "a picture"}),
                           Document(id="short", content="two words"),
                           Document(id="ok", content="a document with quite enough words to write a query from")])
    sample = sample_documents(StoreDocuments(store), 10)
    assert [d.doc_id for d in sample.documents] == ["ok"]
    assert sample.skipped == {"a document without text content": 1, "fewer than 8 words": 1}
    empty = tmp_path / "empty.json"
    InMemoryDocumentStore().save_to_disk(str(empty))
    with pytest.raises(DataError, match="holds no documents"):
        sample_documents(f"haystack:{empty}", 10)


def test_a_saved_store_with_a_repeated_id_leaves_out_both(saved_adi, tmp_path):
    data = json.loads(saved_adi.read_text())
    data["documents"].append(dict(data["documents"][0], content="another text under the same id, long enough here"))
    path = tmp_path / "twice.json"
    path.write_text(json.dumps(data))
    sample = sample_documents(f"haystack:{path}", 1000)
    assert len(sample.documents) == 81 and "1" not in {d.doc_id for d in sample.documents}
    # both left out: InMemoryDocumentStore.load_from_disk keeps the last of the two, so which would a qrel judge?
    assert sample.skipped == {"an id that occurs more than once": 2}


@pytest.mark.parametrize(("text", "message"), [
    ('{"init_parameters": {}, "documents": [{"id": "a", "content": "x"}', "not valid JSON after 1 documents"),
    ('{"something": "else"}', "no 'documents' list"),
    ("[1, 2, 3]", "no 'documents' list"),
])
def test_a_file_that_is_no_saved_store_says_so(tmp_path, text, message):
    path = tmp_path / "store.json"
    path.write_text(text)
    with pytest.raises(DataError, match=message):
        list(SavedStoreDocuments(path))
    with pytest.raises(DataError, match="not a saved InMemoryDocumentStore|no such file"):
        HaystackSearch.from_store(path)


def test_a_large_saved_store_is_read_in_bounded_memory(tmp_path):
    row = ('{{"id": "d{i}", "content": "a document of the saved store with words enough to sample it {i}", '
           '"blob": null, "meta": {{"title": "t{i}"}}, "score": null, "embedding": [0.1, 0.2, 0.3, 0.4], '
           '"sparse_embedding": null}}')
    with (tmp_path / "store.json").open("w") as out:  # 300k documents, ~55 MB, in save_to_disk's layout
        out.write('{"type": "haystack.document_stores.in_memory.document_store.InMemoryDocumentStore", '
                  '"init_parameters": {}, "documents": [')
        out.write(", ".join(row.format(i=i) for i in range(300_000)))
        out.write("]}")
    report = sample_twenty_in_a_fresh_process(f"haystack:{tmp_path / 'store.json'}")
    assert report["read"] == 300_000 and report["sampled"] == 20
    assert report["grown_kb"] < 30 * 1024, report["grown_kb"]
