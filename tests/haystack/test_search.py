"""HaystackSearch over real InMemoryBM25Retriever components and pipelines on SciFact and ADI."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from haystack import Document, Pipeline, component
from haystack.components.retrievers.in_memory import InMemoryBM25Retriever
from haystack.document_stores.in_memory import InMemoryDocumentStore

from deepretrieval_trainer.retrieval.metrics import mean_metric
from deepretrieval_trainer.retrieval.search import SearchBackend
from haystack_deepretrieval import HaystackSearch, beir_documents
from tests.conftest import collection_path


def bm25_pipeline(store, top_k: int = 10) -> Pipeline:
    pipe = Pipeline()
    pipe.add_component("retriever", InMemoryBM25Retriever(document_store=store, top_k=top_k))
    return pipe


def test_scifact_dev_raw_ndcg_matches_the_retriever(scifact_search, scifact_dev):
    assert isinstance(scifact_search, SearchBackend)
    qids = list(scifact_dev.judged_queries)
    queries = [scifact_dev.queries[q] for q in qids]
    rankings = scifact_search.search(queries, 10)
    retriever = InMemoryBM25Retriever(document_store=scifact_search.retriever.document_store, top_k=10)
    direct = [[d.id for d in retriever.run(query=q)["documents"]] for q in queries]
    assert rankings == direct
    ndcg = mean_metric("ndcg", dict(zip(qids, rankings, strict=True)), scifact_dev.qrels, 10)
    assert ndcg == mean_metric("ndcg", dict(zip(qids, direct, strict=True)), scifact_dev.qrels, 10)
    assert 0.62 < ndcg < 0.70, ndcg  # measured 0.6616 (BM25L, Haystack defaults): docs/haystack.md


async def test_asearch_equals_search(scifact_search, scifact_dev):
    queries = list(scifact_dev.judged_queries.values())[:24]
    assert await scifact_search.asearch(queries, 20) == scifact_search.search(queries, 20)


def test_beir_documents_keep_ids_and_title_plus_text(scifact_search):
    corpus = beir_documents(collection_path("adi"))
    assert len(corpus) == 82 and corpus[0].id == "1"
    stored = scifact_search.retriever.document_store.filter_documents(
        {"field": "id", "operator": "==", "value": "4983"})[0]
    assert stored.content.startswith("Microstructural development of human newborn cerebral white matter assessed")


@pytest.mark.parametrize("k", [1, 10, 40])
def test_pipeline_ranking_is_reproduced_with_top_k_per_call(adi_store, adi_test, k):
    pipe = bm25_pipeline(adi_store, top_k=3)  # the init top_k is overridden per call through retriever.top_k
    search = HaystackSearch(pipeline=pipe)
    assert search.input_sockets == [("retriever", "query")]
    assert search.output_socket == ("retriever", "documents")
    assert search.top_k_sockets == [("retriever", "top_k")]
    queries = list(adi_test.queries.values())
    expected = [[d.id for d in pipe.run({"retriever": {"query": q, "top_k": k}})["retriever"]["documents"]]
                for q in queries]
    assert search.search(queries, k) == expected
    assert max(len(r) for r in expected) == k


def test_id_from_a_meta_field_keeps_each_document_once(adi_test):
    store = InMemoryDocumentStore(shared=False)
    passages = []
    for doc in beir_documents(collection_path("adi")):
        words = doc.content.split()
        half = len(words) // 2
        for part, text in enumerate((words[:half], words[half:])):
            passages.append(Document(id=f"{doc.id}#{part}", content=" ".join(text), meta={"doc_id": doc.id}))
    store.write_documents(passages)
    retriever = InMemoryBM25Retriever(document_store=store, top_k=50)
    search = HaystackSearch(retriever=retriever, id_meta_key="doc_id")
    for query in list(adi_test.queries.values())[:10]:
        ranking = search.search([query], 5)[0]
        passages_ranked = [d.meta["doc_id"] for d in retriever.run(query=query, top_k=5)["documents"]]
        assert ranking == list(dict.fromkeys(passages_ranked))  # the retriever's top 5 passages, each doc once
        assert len(set(passages_ranked)) < 5 or len(ranking) == 5
    assert any(len(search.search([q], 5)[0]) < 5 for q in adi_test.queries.values())  # the case exists


def test_missing_meta_field_names_the_fix(adi_store):
    search = HaystackSearch(retriever=InMemoryBM25Retriever(document_store=adi_store), id_meta_key="pmid")
    with pytest.raises(ValueError, match="has no meta\\['pmid'\\].*'title'"):
        search.search(["indexing"], 5)


@component
class GatedRetriever:
    """A real component around InMemoryBM25Retriever whose async run counts how many calls are in flight."""

    def __init__(self, store: InMemoryDocumentStore) -> None:
        self.inner = InMemoryBM25Retriever(document_store=store)
        self.in_flight = 0
        self.most = 0

    @component.output_types(documents=list[Document])
    def run(self, query: str, top_k: int | None = None) -> dict[str, Any]:
        return self.inner.run(query=query, top_k=top_k)

    @component.output_types(documents=list[Document])
    async def run_async(self, query: str, top_k: int | None = None) -> dict[str, Any]:
        self.in_flight += 1
        self.most = max(self.most, self.in_flight)
        await asyncio.sleep(0.02)
        self.in_flight -= 1
        return self.inner.run(query=query, top_k=top_k)


async def test_asearch_concurrency_is_bounded(adi_store, adi_test):
    gated = GatedRetriever(adi_store)
    search = HaystackSearch(retriever=gated, max_concurrency=3)
    queries = list(adi_test.queries.values())
    assert await search.asearch(queries, 10) == search.search(queries, 10)
    assert gated.most == 3


async def test_asearch_over_a_pipeline(adi_store, adi_test):
    search = HaystackSearch(pipeline=bm25_pipeline(adi_store), max_concurrency=4)
    queries = list(adi_test.queries.values())
    assert await search.asearch(queries, 10) == search.search(queries, 10)


def test_from_yaml_with_documents_from_beir(tmp_path, adi_test):
    store = InMemoryDocumentStore(index="deepretrieval-tests-from-yaml")
    (tmp_path / "retrieval.yaml").write_text(bm25_pipeline(store).dumps())
    search = HaystackSearch.from_yaml(tmp_path / "retrieval.yaml", documents_from_beir=collection_path("adi"))
    reference = HaystackSearch.from_beir(collection_path("adi"))
    queries = list(adi_test.queries.values())
    assert search.search(queries, 10) == reference.search(queries, 10)
    assert search.search(queries[:3], 10)[0]


def test_from_yaml_finds_a_store_filled_in_this_process(tmp_path, adi_store, adi_test):
    # adi_store is InMemoryDocumentStore(index="deepretrieval-tests-adi"): same index, same documents.
    (tmp_path / "retrieval.yaml").write_text(bm25_pipeline(adi_store).dumps())
    search = HaystackSearch.from_yaml(tmp_path / "retrieval.yaml", input_socket="retriever.query",
                                      output_socket="retriever.documents")
    query = adi_test.queries["1"]
    assert search.search([query], 10) == HaystackSearch(retriever=InMemoryBM25Retriever(document_store=adi_store)) \
        .search([query], 10)


def test_from_yaml_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="Pipeline.dump"):
        HaystackSearch.from_yaml(tmp_path / "nope.yaml")


def test_blank_or_bare_string_queries_are_caller_errors(adi_store):
    search = HaystackSearch(retriever=InMemoryBM25Retriever(document_store=adi_store))
    with pytest.raises(ValueError, match="empty or not text"):
        search.search(["  ", "index"], 3)
    with pytest.raises(TypeError, match=r"wrap a single query as \[query\]"):
        search.search("index", 3)


@pytest.mark.parametrize(("kwargs", "message"), [
    (dict(), "exactly one"),
    (dict(retriever=object()), "not a Haystack component"),
    (dict(pipeline="P", input_socket="retriever"), "'component.socket'"),
    (dict(pipeline="P", input_socket="ranker.query"), "no component 'ranker'"),
    (dict(pipeline="P", output_socket="retriever.docs"), "has no such socket"),
    (dict(pipeline="P", top_k_socket="retriever.k"), "has no such socket"),
    (dict(retriever="R", input_socket="text"), "has no input 'text'"),
    (dict(retriever="R", max_concurrency=0), "max_concurrency"),
])
def test_bad_configuration_says_what_to_fix(adi_store, kwargs, message):
    if kwargs.get("pipeline") == "P":
        kwargs["pipeline"] = bm25_pipeline(adi_store)
    if kwargs.get("retriever") == "R":
        kwargs["retriever"] = InMemoryBM25Retriever(document_store=adi_store)
    with pytest.raises((ValueError, TypeError), match=message):
        HaystackSearch(**kwargs)


def test_bad_k_and_query_list(adi_store):
    search = HaystackSearch(retriever=InMemoryBM25Retriever(document_store=adi_store))
    with pytest.raises(ValueError, match="positive integer"):
        search.search(["x"], 0)
    with pytest.raises(TypeError, match="list of queries"):
        search.search("x", 3)


def test_search_documents_gives_the_ranking_with_the_core_hits(scifact_search, scifact_dev):
    from deepretrieval_trainer.retrieval.bm25 import BM25Search
    from deepretrieval_trainer.retrieval.search import DocumentSearch

    queries = list(scifact_dev.judged_queries.values())[:20]
    hits = scifact_search.search_documents(queries, 5)
    assert isinstance(scifact_search, DocumentSearch)
    assert [[h.doc_id for h in row] for row in hits] == scifact_search.search(queries, 5)
    assert all(h.score is not None for row in hits for h in row)
    core = {h.doc_id: h for row in BM25Search(scifact_dev.corpus).search_documents(queries, 1000) for h in row}
    for hit in (h for row in hits for h in row):
        assert (hit.title, hit.text) == (core[hit.doc_id].title, core[hit.doc_id].text)


def test_search_documents_through_a_pipeline_with_meta_ids(adi_test):
    store = InMemoryDocumentStore()
    store.write_documents([Document(content=f"Doc {i}: {doc['text']}", meta={"doc": d, "name": f"Doc {i}:"})
                           for i, (d, doc) in enumerate(adi_test.corpus.items())])
    pipe = Pipeline()
    pipe.add_component("retriever", InMemoryBM25Retriever(document_store=store))
    search = HaystackSearch(pipeline=pipe, id_meta_key="doc", title_meta_key="name")
    query = list(adi_test.judged_queries.values())[0]
    hits = search.search_documents([query], 4)[0]
    assert [h.doc_id for h in hits] == search.search([query], 4)[0]
    assert all(h.title.startswith("Doc ") and h.text == adi_test.corpus[h.doc_id]["text"].strip() for h in hits)
