"""haystack_deepretrieval: a Haystack query-rewriter component and a SearchBackend over Haystack retrieval.

Nothing heavy loads on import (Haystack itself imports torch): the names below load on first use.
Using ``DeepRetrievalQueryRewriter``, ``QueryFusionJoiner`` or ``HaystackSearch`` registers this package with
Haystack's deserialization allowlist, so pipeline YAML naming the components loads with ``Pipeline.loads``.
Framing ``fuse``: ``QueryFusionJoiner`` joins the documents of the user's query and of the rewrite.
Text-to-SQL: ``DeepRetrievalSQLWriter`` (question + schema -> SQL) and ``ReadOnlySQLQuery`` (runs it read-only).
Training without judgments: ``synthesize`` makes labels from a document store's own documents (``StoreDocuments``,
``SavedStoreDocuments``: a live store, or one saved with ``save_to_disk``, streamed).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .beir import beir_documents
    from .component import DeepRetrievalQueryRewriter
    from .fusion import QueryFusionJoiner
    from .literature import LiteratureSearchRetriever
    from .search import HaystackSearch
    from .sql import DeepRetrievalSQLWriter, ReadOnlySQLQuery
    from .stores import SavedStoreDocuments, StoreDocuments
    from .synthetic import synthesize

_LAZY = {
    "DeepRetrievalQueryRewriter": ("haystack_deepretrieval.component", "DeepRetrievalQueryRewriter"),
    "HaystackSearch": ("haystack_deepretrieval.search", "HaystackSearch"),
    "QueryFusionJoiner": ("haystack_deepretrieval.fusion", "QueryFusionJoiner"),
    "DeepRetrievalSQLWriter": ("haystack_deepretrieval.sql", "DeepRetrievalSQLWriter"),
    "ReadOnlySQLQuery": ("haystack_deepretrieval.sql", "ReadOnlySQLQuery"),
    "LiteratureSearchRetriever": ("haystack_deepretrieval.literature", "LiteratureSearchRetriever"),
    "beir_documents": ("haystack_deepretrieval.beir", "beir_documents"),
    "SavedStoreDocuments": ("haystack_deepretrieval.stores", "SavedStoreDocuments"),
    "StoreDocuments": ("haystack_deepretrieval.stores", "StoreDocuments"),
    "synthesize": ("haystack_deepretrieval.synthetic", "synthesize"),
    "train": ("deepretrieval_trainer.training.retrieval", "train"),
}

__all__ = ["DeepRetrievalQueryRewriter", "DeepRetrievalSQLWriter", "HaystackSearch", "LiteratureSearchRetriever",
           "QueryFusionJoiner", "ReadOnlySQLQuery", "SavedStoreDocuments", "StoreDocuments", "beir_documents",
           "synthesize", "train"]


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module, attribute = _LAZY[name]
    value = getattr(importlib.import_module(module), attribute)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
