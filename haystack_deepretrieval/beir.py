"""BEIR collections as Haystack documents: ``Document.id`` = the BEIR doc id, ``content`` = title + text."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

from haystack import Document, Pipeline
from haystack.document_stores.types import DuplicatePolicy

from deepretrieval_trainer.retrieval.data import load_corpus

logger = logging.getLogger(__name__)


def beir_documents(path: str | Path) -> list[Document]:
    """The documents of a BEIR collection folder (``corpus.jsonl``), with the title also in ``meta["title"]``."""
    return [
        Document(id=doc_id, content=f"{doc['title']} {doc['text']}".strip(), meta={"title": doc["title"]})
        for doc_id, doc in load_corpus(path).items()
    ]


def document_stores(pipeline: Pipeline) -> Iterator[tuple[str, object]]:
    """``(component name, document store)`` for every component of ``pipeline`` holding a ``document_store``."""
    seen: set[int] = set()
    for name, instance in pipeline.walk():
        store = getattr(instance, "document_store", None)
        if store is not None and id(store) not in seen:
            seen.add(id(store))
            yield name, store


def write_beir_documents(pipeline: Pipeline, path: str | Path) -> int:
    """Write a BEIR corpus into every document store of a (lexical) retrieval pipeline; returns how many stores.

    Documents already there (same id) are kept. Embedding retrievers need documents with embeddings: index those
    with a ``DocumentEmbedder`` + ``DocumentWriter`` pipeline instead.
    """
    embedding = [name for name, instance in pipeline.walk() if "query_embedding" in instance.__haystack_input__]
    if embedding:
        raise ValueError(
            f"components {embedding} retrieve by embedding, and BEIR documents are written without embeddings; "
            "index the corpus with a DocumentEmbedder + DocumentWriter pipeline into the same store instead"
        )
    stores = list(document_stores(pipeline))
    if not stores:
        raise ValueError("the pipeline has no component with a document_store: there is nothing to write to")
    documents = beir_documents(path)
    for name, store in stores:
        written = store.write_documents(documents, policy=DuplicatePolicy.SKIP)
        logger.info("wrote %d of %d documents from %s into %s's store", written, len(documents), path, name)
    return len(stores)
