"""llamaindex_deepretrieval: DeepRetrieval query rewriting inside LlamaIndex, and LlamaIndex retrievers as rewards.

- :class:`DeepRetrievalQueryTransform`: a ``BaseQueryTransform`` for ``TransformQueryEngine``/``TransformRetriever``.
- :class:`DeepRetrievalRetriever`: wraps any retriever, with a real async path.
- :class:`LlamaIndexSearch`: any retriever as the core ``SearchBackend`` the trainer's reward searches.
- :class:`DeepRetrievalSQLRetriever` / :class:`DeepRetrievalSQLQueryEngine`: text-to-SQL over a ``SQLDatabase``,
  where ``NLSQLRetriever`` / ``NLSQLTableQueryEngine`` go, read-only (``llamaindex_deepretrieval.sql``).
- :class:`LiteratureRetriever`: the literature-search engines (embedded FTS5, PubMed, ClinicalTrials.gov) as retrievers.
- ``train``: ``deepretrieval_trainer.training.retrieval.train``, imported on first use (it needs torch and TRL).

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
    "train",
]


def __getattr__(name: str) -> Any:
    if name in ("DeepRetrievalSQLRetriever", "DeepRetrievalSQLQueryEngine"):  # needs SQLAlchemy + sqlglot
        from . import sql

        return getattr(sql, name)
    if name == "train":
        from deepretrieval_trainer.training.retrieval import train

        return train
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
