"""Training labels made from a Haystack document store's own documents (the core's
:func:`deepretrieval_trainer.training.synthetic.synthesize`, with Haystack's documents and retriever)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from haystack import Pipeline

from deepretrieval_trainer.training.synthesis_config import SynthesisConfig
from deepretrieval_trainer.training.synthetic import SyntheticLabels
from deepretrieval_trainer.training.synthetic import synthesize as synthesize_labels

from .search import HaystackSearch
from .stores import SavedStoreDocuments, StoreDocuments


def synthesize(store: Any, *, retriever: Any = None, out: str | Path | None = None,
               config: SynthesisConfig | None = None, filters: dict[str, Any] | None = None,
               id_meta_key: str | None = None, dtype: str = "auto", progress: bool = True,
               **settings: Any) -> SyntheticLabels:
    """Pseudo-queries from ``store``'s documents, kept where ``retriever`` ranks their document inside the window.

    ``store``: a live ``DocumentStore`` (``filters`` narrow what ``filter_documents`` returns), or the path of a JSON
    file ``InMemoryDocumentStore.save_to_disk`` wrote (streamed). ``retriever``: what to filter through (and then
    train against): a retriever component, a ``Pipeline`` or a ``HaystackSearch``; default an
    ``InMemoryBM25Retriever`` over the store (the saved one loaded). ``settings``: :class:`SynthesisConfig` fields
    (``method``, ``sample``, ``min_rank``, ...). ``out``: also write the label folder there. Returns the labels:
    ``labels.rows`` is what ``train(search, rows, config)`` takes.
    """
    if isinstance(store, (str, Path)):
        documents: Any = SavedStoreDocuments(store, id_meta_key=id_meta_key)
    else:
        documents = StoreDocuments(store, filters=filters, id_meta_key=id_meta_key)
    search = _search(store, retriever, id_meta_key)
    return synthesize_labels(search, documents, config, out=out, dtype=dtype, progress=progress, **settings)


def _search(store: Any, retriever: Any, id_meta_key: str | None) -> HaystackSearch:
    if isinstance(retriever, HaystackSearch):
        return retriever
    if isinstance(retriever, Pipeline):
        return HaystackSearch(pipeline=retriever, id_meta_key=id_meta_key)
    if retriever is not None:
        return HaystackSearch(retriever=retriever, id_meta_key=id_meta_key)
    if isinstance(store, (str, Path)):
        return HaystackSearch.from_store(store, id_meta_key=id_meta_key)
    from haystack.components.retrievers.in_memory import InMemoryBM25Retriever
    from haystack.document_stores.in_memory import InMemoryDocumentStore

    if isinstance(store, InMemoryDocumentStore):
        return HaystackSearch(retriever=InMemoryBM25Retriever(document_store=store), id_meta_key=id_meta_key)
    raise TypeError(f"{type(store).__name__}: pass retriever= (the retriever or pipeline you serve over it)")
