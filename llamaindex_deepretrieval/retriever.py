"""A retriever wrapper that rewrites the query first, with a real async path.

LlamaIndex's ``TransformRetriever`` has no ``_aretrieve``: its async call runs the sync transform and the sync
retriever. :class:`DeepRetrievalRetriever` awaits the rewriter's ``arewrite`` and the wrapped retriever's
``aretrieve``, so a served rewriter (vLLM) does not block the event loop.

With a task whose prompt shows the query's first-pass results (``task.feedback``: an adapter trained with
``feedback_docs``), the wrapped retriever first retrieves the raw query, its documents become prompt text exactly
as in training (:meth:`LlamaIndexSearch.hits`, then ``Feedback.text``), and then retrieves the rewrite. Give it a
``similarity_top_k`` of at least the feedback's ``docs`` (training's first pass runs at the retriever's own top-k).

``mode="fuse"`` (an adapter trained with ``framing: fuse``): the wrapped retriever retrieves the user's query and the
rewrite apart, each at least :data:`~deepretrieval_trainer.retrieval.framing.FUSION_DEPTH` deep as in training, and each
document's scores are summed, the query's times ``query_weight`` (:func:`deepretrieval_trainer.retrieval.framing.fuse_hits`,
the reward's own function). The result is cut at ``top_k`` (default: the wrapped retriever's ``similarity_top_k``),
each node carrying its fused score; on a fallback it is the user's query's own ranking.
"""

from __future__ import annotations

import logging
from typing import List, Literal, Optional, get_args

from llama_index.core.base.base_retriever import BaseRetriever
from llama_index.core.callbacks.base import CallbackManager
from llama_index.core.prompts.mixin import PromptMixinType
from llama_index.core.schema import NodeWithScore, QueryBundle

from deepretrieval_trainer.retrieval.framing import FUSION_DEPTH, check_framing, fuse_scores
from deepretrieval_trainer.rewriting.rewriters import Rewriter
from deepretrieval_trainer.rewriting.tasks import Task

from .search import LlamaIndexSearch
from .transform import DeepRetrievalQueryTransform, trained_mode

logger = logging.getLogger(__name__)

RetrieverMode = Literal["replace", "expand", "embed", "fuse", "steer"]


class DeepRetrievalRetriever(BaseRetriever):
    """Rewrites each query with ``rewriter`` (see :class:`DeepRetrievalQueryTransform` for ``mode`` and ``task``;
    ``fuse`` is described in the module docstring), then asks ``retriever``. ``mode`` and ``query_weight`` default
    to how the adapter was trained (``rewriter.card``), ``fuse`` included, else ``replace`` and 1."""

    def __init__(
        self,
        retriever: BaseRetriever,
        *,
        rewriter: Rewriter,
        mode: RetrieverMode | None = None,
        task: str | Task | None = None,
        query_weight: int | None = None,
        top_k: Optional[int] = None,
        id_key: Optional[str] = None,
        title_key: Optional[str] = "title",
        callback_manager: Optional[CallbackManager] = None,
        verbose: bool = False,
    ) -> None:
        """``id_key``/``title_key``: how the first pass of a feedback task (and ``fuse``) reads documents (as
        ``LlamaIndexSearch``). ``top_k``: under ``fuse``, how many fused results to return."""
        if not isinstance(retriever, BaseRetriever):
            raise TypeError(f"retriever={retriever!r} is not a llama_index BaseRetriever; pass the retriever to wrap")
        mode, query_weight = trained_mode(rewriter, mode, query_weight, fuse=True)
        if mode not in get_args(RetrieverMode):
            raise ValueError(f"mode={mode!r}: choose one of {get_args(RetrieverMode)}")
        if top_k is not None and (not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 1):
            raise ValueError(f"top_k={top_k!r} must be a positive integer (or None: the wrapped retriever's own)")
        if top_k is not None and mode != "fuse":
            raise ValueError(f"top_k={top_k} cuts the fused ranking of mode='fuse'; other modes return what the "
                             "wrapped retriever returns: set its similarity_top_k instead")
        self.fuse = mode == "fuse"
        if self.fuse:
            check_framing("fuse", query_weight)
        self.retriever = retriever
        self.query_weight = query_weight
        self.top_k = top_k
        self.query_transform = (DeepRetrievalQueryTransform.for_fusion(rewriter, task) if self.fuse
                                else DeepRetrievalQueryTransform(rewriter=rewriter, mode=mode, task=task,
                                                                 query_weight=query_weight))
        self.first_pass = LlamaIndexSearch(retriever, id_key=id_key, title_key=title_key)  # reads nodes
        feedback = self.query_transform.task.feedback
        own_top_k = getattr(retriever, "similarity_top_k", None)
        if feedback is not None and isinstance(own_top_k, int) and own_top_k < feedback.docs:
            logger.warning("the wrapped retriever returns %d results but the prompt shows %d first-pass documents; "
                           "raise its similarity_top_k to match training", own_top_k, feedback.docs)
        super().__init__(callback_manager=callback_manager, verbose=verbose)

    @property
    def mode(self) -> str:
        return "fuse" if self.fuse else self.query_transform.mode

    def _get_prompt_modules(self) -> PromptMixinType:
        return {"query_transform": self.query_transform}

    def _retrieve(self, query_bundle: QueryBundle) -> List[NodeWithScore]:
        if self.fuse:
            [raw] = self.first_pass.retrieve_nodes([query_bundle], FUSION_DEPTH)
            rewritten = self.query_transform.run(query_bundle, self._metadata(raw))
            found = None if rewritten is query_bundle else self.first_pass.retrieve_nodes([rewritten], FUSION_DEPTH)[0]
            return self._fused(raw, found)
        metadata = self._metadata(self.retriever.retrieve(query_bundle) if self._feedback else None)
        return self.retriever.retrieve(self.query_transform.run(query_bundle, metadata))

    async def _aretrieve(self, query_bundle: QueryBundle) -> List[NodeWithScore]:
        if self.fuse:
            [raw] = await self.first_pass.aretrieve_nodes([query_bundle], FUSION_DEPTH)
            rewritten = await self.query_transform.arun(query_bundle, self._metadata(raw))
            found = (None if rewritten is query_bundle
                     else (await self.first_pass.aretrieve_nodes([rewritten], FUSION_DEPTH))[0])
            return self._fused(raw, found)
        metadata = self._metadata(await self.retriever.aretrieve(query_bundle) if self._feedback else None)
        return await self.retriever.aretrieve(await self.query_transform.arun(query_bundle, metadata))

    def _fused(self, raw: List[NodeWithScore], rewrite: Optional[List[NodeWithScore]]) -> List[NodeWithScore]:
        """``raw`` and ``rewrite`` fused as the reward fuses them (each document at its best chunk), cut at top_k;
        ``rewrite=None`` (the rewriter fell back): the user's query's own ranking."""
        top_k = self.top_k or getattr(self.retriever, "similarity_top_k", None) or FUSION_DEPTH
        best: dict = {}
        for node in raw + (rewrite or []):  # each document's first (best) chunk, the raw query's when both hold it
            best.setdefault(self.first_pass.doc_id(node.node), node)
        if rewrite is None:
            ranking = self.first_pass.ranking(raw, top_k)
            return [best[doc_id] for doc_id in ranking]
        hits = [self.first_pass.hits(nodes, FUSION_DEPTH) for nodes in (raw, rewrite)]
        scores = fuse_scores(hits[0], hits[1], self.query_weight)
        return [NodeWithScore(node=best[doc_id].node, score=score) for doc_id, score in list(scores.items())[:top_k]]

    @property
    def _feedback(self) -> bool:
        return self.query_transform.task.feedback is not None

    def _metadata(self, nodes: Optional[List[NodeWithScore]]) -> dict:
        if nodes is None or not self._feedback:
            return {}
        return {"first_pass": self.first_pass.hits(nodes, self.query_transform.task.feedback.docs)}
