"""Training labels made from a LlamaIndex index's own documents (the core's
:func:`deepretrieval_trainer.training.synthetic.synthesize`, with LlamaIndex's documents and retriever)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from llama_index.core.base.base_retriever import BaseRetriever

from deepretrieval_trainer.training.synthesis_config import SynthesisConfig
from deepretrieval_trainer.training.synthetic import SyntheticLabels
from deepretrieval_trainer.training.synthetic import synthesize as synthesize_labels

from .documents import index_documents
from .search import LlamaIndexSearch


def synthesize(index: Any, *, retriever: BaseRetriever | LlamaIndexSearch | None = None,
               out: str | Path | None = None, config: SynthesisConfig | None = None, id_key: Optional[str] = None,
               embed_model: Any = None, dtype: str = "auto", progress: bool = True, **settings: Any) -> SyntheticLabels:
    """Pseudo-queries from ``index``'s documents, kept where ``retriever`` ranks their document inside the window.

    ``index``: a folder written by ``StorageContext.persist`` or ``BM25Retriever.persist``, a live index, or nodes.
    ``retriever``: what to filter through (and then train against); default: the folder loaded as
    ``LlamaIndexSearch.from_storage(index, embed_model=...)`` (a vector index needs the ``embed_model`` it was built
    with), or ``index.as_retriever()``. ``settings``: :class:`SynthesisConfig` fields (``method``, ``sample``,
    ``min_rank``, ...). ``out``: also write the label folder there. Returns the labels: ``labels.rows`` is what
    ``train(search, rows, config)`` takes.
    """
    documents = index_documents(index, id_key=id_key)
    search = _search(index, retriever, id_key, embed_model)
    return synthesize_labels(search, documents, config, out=out, dtype=dtype, progress=progress, **settings)


def _search(index: Any, retriever: Any, id_key: Optional[str], embed_model: Any) -> LlamaIndexSearch:
    if isinstance(retriever, LlamaIndexSearch):
        return retriever
    if isinstance(retriever, BaseRetriever):
        return LlamaIndexSearch(retriever, id_key=id_key)
    if retriever is not None:
        raise TypeError(f"retriever={type(retriever).__name__}: pass a LlamaIndex BaseRetriever or a LlamaIndexSearch")
    if isinstance(index, (str, Path)):
        return LlamaIndexSearch.from_storage(index, id_key=id_key, embed_model=embed_model)
    if hasattr(index, "as_retriever"):
        return LlamaIndexSearch(index.as_retriever(), id_key=id_key)
    raise TypeError("nodes alone have no retriever: pass retriever= (the one you serve)")
