"""The DocumentSearch capability of the core backends: the same ranking as search(), with each document's text."""

from __future__ import annotations

import pytest

from deepretrieval_trainer.literature.fts5 import FTS5Search
from deepretrieval_trainer.retrieval.bm25 import BM25Search
from deepretrieval_trainer.retrieval.search import DocumentHit, DocumentSearch, SearchBackend, document_search


@pytest.fixture(scope="module")
def adi_bm25s(adi_test):
    return BM25Search(adi_test.corpus)


def test_bm25_documents_follow_the_ranking_with_title_and_body(adi_bm25s, adi_test):
    queries = list(adi_test.judged_queries.values())
    hits = adi_bm25s.search_documents(queries, 20)
    assert isinstance(adi_bm25s, DocumentSearch)
    assert [[h.doc_id for h in row] for row in hits] == adi_bm25s.search(queries, 20)
    for row in hits:
        assert [h.score for h in row] == sorted((h.score for h in row), reverse=True) and row[-1].score > 0
        for hit in row:
            doc = adi_test.corpus[hit.doc_id]
            assert (hit.title, hit.text) == (doc["title"].strip(), doc["text"].strip())


def test_fts5_documents_are_its_stored_texts(adi_test, tmp_path):
    engine = FTS5Search(adi_test.corpus, index_path=tmp_path / "adi.sqlite")
    queries = ["information AND retrieval", "computer OR indexing"]
    hits = engine.search_documents(queries, 5)
    assert [[h.doc_id for h in row] for row in hits] == engine.search(queries, 5)
    assert all(len(row) == 5 for row in hits)
    hit = hits[0][0]
    assert (hit.title, hit.text, hit.score) == (adi_test.corpus[hit.doc_id]["title"].strip(),
                                                adi_test.corpus[hit.doc_id]["text"].strip(), None)


def test_content_that_begins_with_the_title_keeps_only_the_body():
    hit = DocumentHit.from_content("d1", "  Vitamin D and bones Vitamin D lowers fracture risk. ",
                                   title="Vitamin D and bones", score=3)
    assert hit == DocumentHit("d1", "Vitamin D and bones", "Vitamin D lowers fracture risk.", 3.0)
    assert DocumentHit.from_content("d2", "No title here.", title=None).text == "No title here."
    assert DocumentHit.from_content("d3", "Body first, then title", title="title").text == "Body first, then title"


class IdsOnly:
    def search(self, queries, k):
        return [["a"] for _ in queries]

    async def asearch(self, queries, k):
        return self.search(queries, k)


def test_a_backend_without_document_text_is_refused_with_the_fix(adi_bm25s):
    assert document_search(adi_bm25s) is adi_bm25s
    backend = IdsOnly()
    assert isinstance(backend, SearchBackend) and not isinstance(backend, DocumentSearch)
    with pytest.raises(TypeError, match=r"PRF needs the text .* IdsOnly cannot return it .*search_documents"):
        document_search(backend, purpose="PRF")
