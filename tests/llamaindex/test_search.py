"""LlamaIndexSearch reproduces the wrapped retriever's own ranking, read as document ids."""

from __future__ import annotations

import asyncio
from typing import List

import pytest
from llama_index.core import Document
from llama_index.core.base.base_retriever import BaseRetriever
from llama_index.core.node_parser import SentenceSplitter
from llama_index.core.schema import NodeWithScore, QueryBundle
from llama_index.retrievers.bm25 import BM25Retriever

from deepretrieval_trainer.retrieval.data import load_corpus
from deepretrieval_trainer.retrieval.metrics import mean_metric
from deepretrieval_trainer.retrieval.search import SearchBackend
from llamaindex_deepretrieval import LlamaIndexSearch
from llamaindex_deepretrieval.bm25 import persist_bm25
from tests.conftest import collection_path


def direct_run(retriever, queries: dict[str, str]) -> dict[str, list[str]]:
    return {qid: [n.node.node_id for n in retriever.retrieve(text)] for qid, text in queries.items()}


def test_reproduces_bm25_ranking_and_ndcg_on_scifact_dev(scifact_bm25, scifact_dev):
    queries = scifact_dev.judged_queries
    assert scifact_bm25.similarity_top_k == 10
    direct = direct_run(scifact_bm25, queries)
    search = LlamaIndexSearch(scifact_bm25)

    run = dict(zip(queries, search.search(list(queries.values()), 10), strict=True))

    assert isinstance(search, SearchBackend)
    assert run == direct
    ndcg = mean_metric("ndcg", run, scifact_dev.qrels, 10)
    assert ndcg == mean_metric("ndcg", direct, scifact_dev.qrels, 10)
    assert ndcg == pytest.approx(0.705, abs=0.01)  # stated in docs/llamaindex.md


async def test_async_search_matches_sync_and_restores_top_k(adi_bm25, adi_test):
    queries = list(adi_test.judged_queries.values())
    search = LlamaIndexSearch(adi_bm25, max_concurrency=4)
    wide = search.search(queries, 50)
    assert adi_bm25.similarity_top_k == 10
    assert await search.asearch(queries, 50) == wide
    assert all(len(ranking) == 50 for ranking in wide)
    assert adi_bm25.similarity_top_k == 10
    # ADI has 82 documents; bm25s refuses a larger top-k, so it is capped
    assert {len(r) for r in search.search(queries[:2], 500)} == {82}


def test_from_beir_with_explicit_k1_b_builds_the_same_index(adi_bm25, adi_test):
    queries = list(adi_test.judged_queries.values())
    explicit = LlamaIndexSearch.from_beir(collection_path("adi"), k1=1.5, b=0.75)
    other = LlamaIndexSearch.from_beir(collection_path("adi"), k1=0.9, b=0.4, stemmer=None)
    assert explicit.search(queries, 10) == LlamaIndexSearch(adi_bm25).search(queries, 10)
    assert other.search(queries, 10) != explicit.search(queries, 10)
    with pytest.raises(ValueError, match="not a PyStemmer algorithm"):
        LlamaIndexSearch.from_beir(collection_path("adi"), stemmer="klingon")


@pytest.fixture(scope="module")
def adi_chunks():
    corpus = load_corpus(collection_path("adi"))
    documents = [Document(id_=d, text=f"{doc['title']} {doc['text']}", metadata={"doc": d}) for d, doc in corpus.items()]
    splitter = SentenceSplitter(chunk_size=40, chunk_overlap=0, include_metadata=False)
    return splitter.get_nodes_from_documents(documents)


def test_chunks_collapse_to_the_documents_best_rank(adi_chunks, adi_test):
    assert len(adi_chunks) > 82
    retriever = BM25Retriever(nodes=adi_chunks, similarity_top_k=3)
    search = LlamaIndexSearch(retriever)
    queries = list(adi_test.judged_queries.values())

    rankings = search.search(queries, 20)

    shorter = 0
    for query, ranking in zip(queries, rankings, strict=True):
        expected = []
        retriever.similarity_top_k = 20
        for node in retriever.retrieve(query):
            if node.node.ref_doc_id not in expected:
                expected.append(node.node.ref_doc_id)
        retriever.similarity_top_k = 3
        assert ranking == expected
        shorter += len(ranking) < 20
    assert shorter > 0  # several chunks of one document were collapsed


def test_id_key_reads_the_document_id_from_metadata(adi_chunks, adi_test):
    relabelled = [n.model_copy(update={"metadata": {"doc": f"adi-{n.ref_doc_id}"}}) for n in adi_chunks]
    retriever = BM25Retriever(nodes=relabelled)
    query = next(iter(adi_test.judged_queries.values()))
    by_key = LlamaIndexSearch(retriever, id_key="doc").search([query], 10)[0]
    assert by_key == [f"adi-{d}" for d in LlamaIndexSearch(retriever).search([query], 10)[0]]
    with pytest.raises(ValueError, match="no metadata key 'missing'"):
        LlamaIndexSearch(retriever, id_key="missing").search([query], 10)


class SlowAsyncRetriever(BaseRetriever):
    """A retriever with a native async path (like a remote vector store) that records how many calls overlap."""

    def __init__(self, inner: BaseRetriever):
        super().__init__()
        self.inner, self.in_flight, self.peak = inner, 0, 0

    @property
    def similarity_top_k(self) -> int:
        return self.inner.similarity_top_k

    @similarity_top_k.setter
    def similarity_top_k(self, value: int) -> None:
        self.inner.similarity_top_k = value

    def _retrieve(self, query_bundle: QueryBundle) -> List[NodeWithScore]:
        return self.inner.retrieve(query_bundle)

    async def _aretrieve(self, query_bundle: QueryBundle) -> List[NodeWithScore]:
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        await asyncio.sleep(0.01)
        self.in_flight -= 1
        return self.inner.retrieve(query_bundle)


async def test_async_concurrency_is_bounded(adi_bm25, adi_test):
    retriever = SlowAsyncRetriever(adi_bm25)
    queries = list(adi_test.judged_queries.values())
    rankings = await LlamaIndexSearch(retriever, max_concurrency=3).asearch(queries, 10)
    assert retriever.peak == 3
    assert rankings == LlamaIndexSearch(adi_bm25).search(queries, 10)


def test_persisted_bm25_round_trips(tmp_path, adi_bm25, adi_test):
    queries = list(adi_test.judged_queries.values())
    unstemmed = LlamaIndexSearch.from_beir(collection_path("adi"), stemmer=None)
    persist_bm25(unstemmed.retriever, tmp_path / "plain", stemmer=None)
    adi_bm25.persist(str(tmp_path / "library"))  # BM25Retriever's own persist: no tokenizer settings saved

    assert LlamaIndexSearch.from_storage(tmp_path / "plain").search(queries, 10) == unstemmed.search(queries, 10)
    restored = LlamaIndexSearch.from_storage(tmp_path / "library")
    assert restored.search(queries, 10) == LlamaIndexSearch(adi_bm25).search(queries, 10)
    with pytest.raises(FileNotFoundError, match="neither retriever.json"):
        LlamaIndexSearch.from_storage(tmp_path)


def test_bad_input_says_what_to_fix(adi_bm25):
    search = LlamaIndexSearch(adi_bm25)
    with pytest.raises(ValueError, match="k=0"):
        search.search(["q"], 0)
    with pytest.raises(TypeError, match="wrap a single query"):
        search.search("a query", 10)
    with pytest.raises(ValueError, match="max_concurrency=0"):
        LlamaIndexSearch(adi_bm25, max_concurrency=0)
    with pytest.raises(TypeError, match="not a llama_index BaseRetriever"):
        LlamaIndexSearch(object())


@pytest.mark.slow
async def test_vector_index_ranking_and_persisted_index(adi_vector_index, minilm, adi_test, tmp_path):
    queries = adi_test.judged_queries
    retriever = adi_vector_index.as_retriever(similarity_top_k=10)
    search = LlamaIndexSearch(retriever)
    direct = [[n.node.ref_doc_id for n in retriever.retrieve(q)] for q in queries.values()]

    assert search.search(list(queries.values()), 10) == direct
    assert mean_metric("ndcg", dict(zip(queries, direct)), adi_test.qrels, 10) > 0.2
    some = list(queries.values())[:8]
    assert await search.asearch(some, 10) == direct[:8]

    adi_vector_index.storage_context.persist(persist_dir=str(tmp_path))
    loaded = LlamaIndexSearch.from_storage(tmp_path, embed_model=minilm)
    assert loaded.search(some, 10) == direct[:8]


async def test_concurrent_batches_with_different_k_do_not_mix(adi_bm25, adi_test):
    queries = list(adi_test.judged_queries.values())
    search = LlamaIndexSearch(SlowAsyncRetriever(adi_bm25))
    narrow, wide = await asyncio.gather(search.asearch(queries, 5), search.asearch(queries, 40))
    assert {len(r) for r in narrow} == {5} and {len(r) for r in wide} == {40}
    assert search.retriever.similarity_top_k == 10


def test_search_documents_gives_the_ranking_with_the_core_hits(scifact_bm25, scifact_dev):
    from deepretrieval_trainer.retrieval.bm25 import BM25Search
    from deepretrieval_trainer.retrieval.search import DocumentSearch

    queries = list(scifact_dev.judged_queries.values())[:20]
    search = LlamaIndexSearch(scifact_bm25)
    hits = search.search_documents(queries, 5)
    assert isinstance(search, DocumentSearch)
    assert scifact_bm25.similarity_top_k == 10  # k below it: the retriever ran with its own top-k, untouched
    assert [[h.doc_id for h in row] for row in hits] == [r[:5] for r in search.search(queries, 10)]
    assert all(h.score and h.score > 0 for row in hits for h in row)
    # the title comes from the node metadata, the body without it: the same hit the core BM25 gives for that id
    core = {h.doc_id: h for row in BM25Search(scifact_dev.corpus).search_documents(queries, 1000) for h in row}
    for hit in (h for row in hits for h in row):
        assert (hit.title, hit.text) == (core[hit.doc_id].title, core[hit.doc_id].text)
        assert hit.title == scifact_dev.corpus[hit.doc_id]["title"].strip()
    wide = search.search_documents(queries[:2], 30)
    assert [len(row) for row in wide] == [30, 30] and scifact_bm25.similarity_top_k == 10


def test_search_documents_of_chunks_and_of_nodes_without_titles(adi_chunks, adi_test):
    retriever = BM25Retriever(nodes=adi_chunks, similarity_top_k=40)
    search = LlamaIndexSearch(retriever)
    query = list(adi_test.judged_queries.values())[0]
    hits = search.search_documents([query], 8)[0]
    # the retriever's own top-k (40 chunks) is at least k, so it runs unchanged and the first 8 documents count
    assert [h.doc_id for h in hits] == search.search([query], 40)[0][:8] and len(hits) == 8
    best_chunk = {}
    for node in retriever.retrieve(query):
        best_chunk.setdefault(node.node.ref_doc_id, node.node.get_content().strip())
    assert [h.text for h in hits] == [best_chunk[h.doc_id] for h in hits]
    assert {h.title for h in hits} == {""}
