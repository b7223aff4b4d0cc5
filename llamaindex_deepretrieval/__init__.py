"""llamaindex_deepretrieval: DeepRetrieval query rewriting inside LlamaIndex, and LlamaIndex retrievers as rewards.

- :class:`DeepRetrievalQueryTransform`: a ``BaseQueryTransform`` for ``TransformQueryEngine``/``TransformRetriever``.
- :class:`DeepRetrievalRetriever`: wraps any retriever, with a real async path.
- :class:`LlamaIndexSearch`: any retriever as the core ``SearchBackend`` the trainer's reward searches.
- :class:`DeepRetrievalSQLRetriever` / :class:`DeepRetrievalSQLQueryEngine`: text-to-SQL over a ``SQLDatabase``,
  where ``NLSQLRetriever`` / ``NLSQLTableQueryEngine`` go, read-only (``llamaindex_deepretrieval.sql``).
- :class:`LiteratureRetriever`: the literature-search engines (embedded FTS5, PubMed, ClinicalTrials.gov) as retrievers.
- ``train``: ``deepretrieval_trainer.training.retrieval.train``, imported on first use (it needs torch and TRL).
- ``synthesize``: training labels made from an index's own documents (``llamaindex_deepretrieval.synthetic``), and
  ``index_documents``: those documents as a core document source, streamed from a persisted folder.

Imports nothing heavy: torch, transformers and TRL load only when a rewriter or ``train`` runs.
"""

from typing import Any

from .events import QueryRewriteEvent
from .literature import LiteratureRetriever
from .retriever import DeepRetrievalRetriever
from .search import LlamaIndexSearch
from .transform import DeepRetrievalQueryTransform

__all__ = [
    "DeepRetrievalQueryTransform", "DeepRetrievalRetriever", "DeepRetrievalSQLQueryEngine", "DeepRetrievalSQLRetriever",
    "LiteratureRetriever", "LlamaIndexSearch", "QueryRewriteEvent",
    "index_documents", "synthesize", "train",
]


def __getattr__(name: str) -> Any:
    if name in ("DeepRetrievalSQLRetriever", "DeepRetrievalSQLQueryEngine"):  # needs SQLAlchemy + sqlglot
        from . import sql

        return getattr(sql, name)
    if name in ("synthesize", "index_documents"):
        from . import documents, synthetic

        return getattr(synthetic if name == "synthesize" else documents, name)
    if name == "train":
        from deepretrieval_trainer.training.retrieval import train

        return train
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
