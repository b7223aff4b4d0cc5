"""A retriever wrapper that rewrites the query first, with a real async path.

LlamaIndex's ``TransformRetriever`` has no ``_aretrieve``: its async call runs the sync transform and the sync
retriever. :class:`DeepRetrievalRetriever` awaits the rewriter's ``arewrite`` and the wrapped retriever's
``aretrieve``, so a served rewriter (vLLM) does not block the event loop.

With a task whose prompt shows the query's first-pass results (``task.feedback``: an adapter trained with
``feedback_docs``), the wrapped retriever first retrieves the raw query, its documents become prompt text exactly
as in training (:meth:`LlamaIndexSearch.hits`, then ``Feedback.text``), and then retrieves the rewrite. Give it a
``similarity_top_k`` of at least the feedback's ``docs`` (training's first pass runs at the retriever's own top-k).
"""

from __future__ import annotations

import logging
from typing import List, Optional

from llama_index.core.base.base_retriever import BaseRetriever
from llama_index.core.callbacks.base import CallbackManager
from llama_index.core.prompts.mixin import PromptMixinType
from llama_index.core.schema import NodeWithScore, QueryBundle

from deepretrieval_trainer.rewriters import Rewriter
from deepretrieval_trainer.tasks import Task

from .search import LlamaIndexSearch
from .transform import DeepRetrievalQueryTransform, Mode

logger = logging.getLogger(__name__)


class DeepRetrievalRetriever(BaseRetriever):
    """Rewrites each query with ``rewriter`` (see :class:`DeepRetrievalQueryTransform` for ``mode`` and ``task``),
    then asks ``retriever``."""

    def __init__(
        self,
        retriever: BaseRetriever,
        *,
        rewriter: Rewriter,
        mode: Mode = "replace",
        task: str | Task | None = None,
        query_weight: int = 1,
        id_key: Optional[str] = None,
        title_key: Optional[str] = "title",
        callback_manager: Optional[CallbackManager] = None,
        verbose: bool = False,
    ) -> None:
        """``id_key``/``title_key``: how the first pass of a feedback task reads documents (as ``LlamaIndexSearch``)."""
        if not isinstance(retriever, BaseRetriever):
            raise TypeError(f"retriever={retriever!r} is not a llama_index BaseRetriever; pass the retriever to wrap")
        self.retriever = retriever
        self.query_transform = DeepRetrievalQueryTransform(rewriter=rewriter, mode=mode, task=task,
                                                           query_weight=query_weight)
        self.first_pass = LlamaIndexSearch(retriever, id_key=id_key, title_key=title_key)  # reads nodes, never searches
        feedback = self.query_transform.task.feedback
        top_k = getattr(retriever, "similarity_top_k", None)
        if feedback is not None and isinstance(top_k, int) and top_k < feedback.docs:
            logger.warning("the wrapped retriever returns %d results but the prompt shows %d first-pass documents; "
                           "raise its similarity_top_k to match training", top_k, feedback.docs)
        super().__init__(callback_manager=callback_manager, verbose=verbose)

    def _get_prompt_modules(self) -> PromptMixinType:
        return {"query_transform": self.query_transform}

    def _retrieve(self, query_bundle: QueryBundle) -> List[NodeWithScore]:
        metadata = self._metadata(self.retriever.retrieve(query_bundle) if self._feedback else None)
        return self.retriever.retrieve(self.query_transform.run(query_bundle, metadata))

    async def _aretrieve(self, query_bundle: QueryBundle) -> List[NodeWithScore]:
        metadata = self._metadata(await self.retriever.aretrieve(query_bundle) if self._feedback else None)
        return await self.retriever.aretrieve(await self.query_transform.arun(query_bundle, metadata))

    @property
    def _feedback(self) -> bool:
        return self.query_transform.task.feedback is not None

    def _metadata(self, nodes: Optional[List[NodeWithScore]]) -> dict:
        if nodes is None:
            return {}
        return {"first_pass": self.first_pass.hits(nodes, self.query_transform.task.feedback.docs)}
