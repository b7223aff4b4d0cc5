"""Labels from a LlamaIndex index's own documents: a real persisted StorageContext (docstore, and a VectorStoreIndex
with MiniLM embeddings), a BM25Retriever.persist folder, chunks that share their document's id, a docstore read
in bounded memory, the store without text and the empty one, and `synthesize` filtering through LlamaIndexSearch."""

from __future__ import annotations

import json

import pytest
from llama_index.core import Document, StorageContext, VectorStoreIndex
from llama_index.core.node_parser import SentenceSplitter
from llama_index.core.schema import TextNode
from llama_index.retrievers.bm25 import BM25Retriever

from deepretrieval_trainer.common.errors import DataError
from deepretrieval_trainer.retrieval.data import load_corpus
from deepretrieval_trainer.retrieval.documents import open_documents, sample_documents
from llamaindex_deepretrieval import LlamaIndexSearch, index_documents, synthesize
from llamaindex_deepretrieval.bm25 import beir_nodes, persist_bm25
from tests.conftest import collection_path, sample_twenty_in_a_fresh_process

ADI = collection_path("adi")


@pytest.fixture(scope="module")
def adi_storage(tmp_path_factory):
    """ADI's nodes in a docstore, persisted by StorageContext.persist."""
    folder = tmp_path_factory.mktemp("storage")
    storage = StorageContext.from_defaults()
    storage.docstore.add_documents(beir_nodes(ADI))
    storage.persist(str(folder))
    return folder


def test_a_persisted_docstore_streams_its_documents(adi_storage):
    corpus = load_corpus(ADI)
    documents = list(open_documents(f"llamaindex:{adi_storage}"))  # the entry point the CLI names
    assert [d.doc_id for d in documents] == list(corpus)
    for document in documents:
        assert (document.title, document.text) == (corpus[document.doc_id]["title"].strip(),
                                                   corpus[document.doc_id]["text"].strip())


def test_chunks_carry_their_documents_id(tmp_path):
    corpus = load_corpus(ADI)
    documents = [Document(id_=doc_id, text=f"{doc['title']} {doc['text']}")
                 for doc_id, doc in list(corpus.items())[:10]]
    nodes = SentenceSplitter(chunk_size=64, chunk_overlap=0).get_nodes_from_documents(documents)
    storage = StorageContext.from_defaults()
    storage.docstore.add_documents(nodes)
    storage.persist(str(tmp_path))
    streamed = list(index_documents(tmp_path))
    assert len(streamed) == len(nodes) > 10 and {d.doc_id for d in streamed} == set(list(corpus)[:10])
    sample = sample_documents(index_documents(tmp_path), 1000)
    assert len(sample.documents) == len(nodes)  # passages sharing an id are not duplicates here


def test_a_bm25_persist_folder_and_its_corpus(tmp_path):
    nodes = beir_nodes(ADI)
    persist_bm25(BM25Retriever(nodes=nodes), tmp_path)
    streamed = list(index_documents(tmp_path))
    assert [d.doc_id for d in streamed] == [n.node_id for n in nodes]
    assert streamed[0].title == nodes[0].metadata["title"]
    labels = synthesize(tmp_path, sample=82, queries_per_document=2, progress=False)  # searched through the folder
    assert labels.pairs and labels.report["retriever"] == "LlamaIndexSearch"


def test_synthesize_filters_through_the_retriever_it_is_given(adi_storage, adi_bm25, tmp_path):
    search = LlamaIndexSearch(adi_bm25)
    labels = synthesize(adi_storage, retriever=adi_bm25, sample=82, queries_per_document=3, max_rank=30,
                        out=tmp_path / "labels", progress=False)
    found = search.search([p.query for p in labels.pairs], 30)
    assert labels.pairs and all(r.index(p.doc_id) + 1 == p.rank >= 2 for p, r in zip(labels.pairs, found, strict=True))
    report = json.loads((tmp_path / "labels" / "synthesis.json").read_text())
    assert report["documents"]["source"] == f"llamaindex:{adi_storage}" and report["rank_window"] == [2, 30]


def test_an_index_that_keeps_no_text_is_an_error_with_the_fix(tmp_path):
    storage = StorageContext.from_defaults()  # a vector store that keeps only embeddings, and an empty docstore
    storage.vector_store.add([TextNode(id_=f"n{i}", text=f"text {i}", embedding=[float(i), 1.0, 0.0])
                              for i in range(5)])
    storage.persist(str(tmp_path))
    with pytest.raises(DataError, match=r"docstore.json holds no nodes and default__vector_store.json keeps only "
                                        r"embeddings and metadata for 5 nodes, no text.*store_nodes_override=True"):
        sample_documents(f"llamaindex:{tmp_path}", 10)


def test_text_kept_by_a_vector_store_is_read_where_the_docstore_is_empty(tmp_path):
    from llama_index.core.vector_stores.utils import node_to_metadata_dict

    storage = StorageContext.from_defaults()
    nodes = beir_nodes(ADI)[:5]
    for node in nodes:  # what a vector store that keeps text (stores_text=True) writes for each node
        storage.vector_store.data.embedding_dict[node.node_id] = [0.0, 1.0]
        storage.vector_store.data.metadata_dict[node.node_id] = node_to_metadata_dict(node, remove_text=False)
    storage.persist(str(tmp_path))
    assert [d.doc_id for d in index_documents(tmp_path)] == [n.node_id for n in nodes]


def test_an_empty_storage_is_an_error(tmp_path):
    StorageContext.from_defaults().persist(str(tmp_path / "empty"))
    with pytest.raises(DataError, match="no text to write queries from"):
        sample_documents(f"llamaindex:{tmp_path / 'empty'}", 10)
    with pytest.raises(DataError, match="neither docstore.json"):
        index_documents(tmp_path)


def test_a_large_docstore_is_read_in_bounded_memory(tmp_path):
    node = ('"n{i}": {{"__data__": {{"id_": "n{i}", "metadata": {{}}, "relationships": {{"1": {{"node_id": "d{i}"}}}}, '
            '"text": "a node of the docstore with words enough to sample it {i}", "class_name": "TextNode"}}, '
            '"__type__": "1"}}')
    with (tmp_path / "docstore.json").open("w") as out:  # 300k nodes, ~60 MB: what json.load would hold many times
        out.write('{"docstore/data": {')
        out.write(", ".join(node.format(i=i) for i in range(300_000)))
        out.write('}, "docstore/ref_doc_info": {}}')
    report = sample_twenty_in_a_fresh_process(f"llamaindex:{tmp_path}")
    assert report["read"] == 300_000 and report["sampled"] == 20
    assert report["grown_kb"] < 30 * 1024, report["grown_kb"]


@pytest.mark.slow
def test_a_persisted_vector_index(adi_vector_index, minilm, tmp_path):
    adi_vector_index.storage_context.persist(str(tmp_path))
    assert [d.doc_id for d in index_documents(tmp_path)] == list(load_corpus(ADI))
    labels = synthesize(tmp_path, embed_model=minilm, sample=30, max_rank=50, progress=False)
    assert labels.report["retriever"] == "LlamaIndexSearch" and labels.report["written"] > 0
    live = synthesize(adi_vector_index, sample=30, max_rank=50, progress=False)  # the live index: the same labels
    assert [p.query for p in live.pairs] == [p.query for p in labels.pairs]
    assert isinstance(adi_vector_index, VectorStoreIndex)
