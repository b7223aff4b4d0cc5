"""A retriever wrapper that rewrites the query first, with a real async path.

LlamaIndex's ``TransformRetriever`` has no ``_aretrieve``: its async call runs the sync transform and the sync
retriever. :class:`DeepRetrievalRetriever` awaits the rewriter's ``arewrite`` and the wrapped retriever's
``aretrieve``, so a served rewriter (vLLM) does not block the event loop.
"""

from __future__ import annotations

from typing import List, Optional

from llama_index.core.base.base_retriever import BaseRetriever
from llama_index.core.callbacks.base import CallbackManager
from llama_index.core.prompts.mixin import PromptMixinType
from llama_index.core.schema import NodeWithScore, QueryBundle

from deepretrieval_trainer.rewriters import Rewriter
from deepretrieval_trainer.tasks import Task

from .transform import DeepRetrievalQueryTransform, Mode


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
        callback_manager: Optional[CallbackManager] = None,
        verbose: bool = False,
    ) -> None:
        if not isinstance(retriever, BaseRetriever):
            raise TypeError(f"retriever={retriever!r} is not a llama_index BaseRetriever; pass the retriever to wrap")
        self.retriever = retriever
        self.query_transform = DeepRetrievalQueryTransform(rewriter=rewriter, mode=mode, task=task)
        super().__init__(callback_manager=callback_manager, verbose=verbose)

    def _get_prompt_modules(self) -> PromptMixinType:
        return {"query_transform": self.query_transform}

    def _retrieve(self, query_bundle: QueryBundle) -> List[NodeWithScore]:
        return self.retriever.retrieve(self.query_transform.run(query_bundle))

    async def _aretrieve(self, query_bundle: QueryBundle) -> List[NodeWithScore]:
        return await self.retriever.aretrieve(await self.query_transform.arun(query_bundle))
