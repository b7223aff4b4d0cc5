"""A LlamaIndex query transform that rewrites the query with a DeepRetrieval rewriter.

Modes decide where the rewrite goes in the :class:`QueryBundle`:

- ``replace``: the rewrite becomes ``query_str`` (and the embedding text): for BM25 / keyword retrievers.
- ``expand``: ``query_str`` is ``"original rewrite"``; the embedding strings are both (vector retrievers average them).
- ``embed``: ``query_str`` stays the original; only ``custom_embedding_strs`` is the rewrite: for vector retrievers
  whose downstream synthesis should still see the user's words.

On any failure the original bundle comes back unchanged and a warning says why (see :mod:`.events`).

A task whose prompt shows the query's first-pass results (``task.feedback``, see
:mod:`deepretrieval_trainer.rewriting.feedback`) needs them in ``metadata["first_pass"]`` (``DocumentHit`` objects, or the
``NodeWithScore`` list a retriever returned): :class:`~llamaindex_deepretrieval.retriever.DeepRetrievalRetriever`
passes them from the retriever it wraps.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Dict, List, Literal, Optional, get_args

from llama_index.core.indices.query.query_transform.base import BaseQueryTransform
from llama_index.core.prompts import PromptTemplate
from llama_index.core.prompts.mixin import PromptDictType
from llama_index.core.schema import QueryBundle, QueryType

from deepretrieval_trainer.retrieval.framing import check_framing, search_text
from deepretrieval_trainer.retrieval.search import DocumentHit
from deepretrieval_trainer.rewriting.rewriters import Rewriter, RewriteResult
from deepretrieval_trainer.rewriting.tasks import Task, get_task

from .events import arewrite_query, rewrite_query

Mode = Literal["replace", "expand", "embed"]
MODES: tuple[str, ...] = get_args(Mode)
SYSTEM_PROMPT = "system_prompt"
USER_PROMPT = "user_prompt"


class DeepRetrievalQueryTransform(BaseQueryTransform):
    """Rewrites ``query_str`` with ``rewriter`` (any core :class:`Rewriter`, e.g. ``LocalRewriter`` or a served one).

    ``task`` (a name or :class:`Task`), when given, becomes the rewriter's task. The task's system and user templates
    are the transform's prompts (``system_prompt``, ``user_prompt``): ``update_prompts`` changes the task the
    rewriter uses. ``query_weight`` (``expand`` only): how many times the original query precedes the rewrite in
    ``query_str``, as the adapter was trained (``TrainConfig.query_weight``; deepretrieval_trainer.retrieval.framing).
    """

    def __init__(self, *, rewriter: Rewriter, mode: Mode = "replace", task: str | Task | None = None,
                 query_weight: int = 1) -> None:
        super().__init__()
        if mode == "fuse":
            raise ValueError("mode='fuse' searches the query and the rewrite apart and sums their scores, which one "
                             "QueryBundle cannot carry: wrap your retriever in DeepRetrievalRetriever(retriever, "
                             "rewriter=..., mode='fuse', query_weight=...) instead")
        if mode not in MODES:
            raise ValueError(f"mode={mode!r}: choose one of {MODES} ('replace' for BM25, 'embed' or 'expand' for vectors)")
        check_framing("expand" if mode == "expand" else "replace", query_weight)
        if not callable(getattr(rewriter, "rewrite", None)) or not callable(getattr(rewriter, "arewrite", None)):
            raise TypeError(
                f"rewriter={rewriter!r} has no rewrite()/arewrite(); pass a deepretrieval_trainer rewriter "
                "such as LocalRewriter"
            )
        if task is not None:
            rewriter.task = get_task(task)
        self.rewriter = rewriter
        self.mode = mode
        self.query_weight = query_weight

    @property
    def task(self) -> Task:
        return self.rewriter.task

    def _get_prompts(self) -> PromptDictType:
        return {SYSTEM_PROMPT: PromptTemplate(self.task.system), USER_PROMPT: PromptTemplate(self.task.user)}

    def _update_prompts(self, prompts: PromptDictType) -> None:
        changes = {}
        if SYSTEM_PROMPT in prompts:
            changes["system"] = prompts[SYSTEM_PROMPT].get_template()
        if USER_PROMPT in prompts:
            changes["user"] = prompts[USER_PROMPT].get_template()
        if changes:
            # Task validates the templates (the user template must keep "{query}").
            self.rewriter.task = dataclasses.replace(self.task, **changes)

    def _run(self, query_bundle: QueryBundle, metadata: Dict) -> QueryBundle:
        hits = self._first_pass(metadata)
        return self._apply(query_bundle, rewrite_query(self.rewriter, query_bundle.query_str, self.mode, hits))

    async def arun(self, query_bundle_or_str: QueryType, metadata: Optional[Dict] = None) -> QueryBundle:
        """The async form of :meth:`run`: the rewrite awaits the rewriter's ``arewrite``."""
        query_bundle = _bundle(query_bundle_or_str)
        hits = self._first_pass(metadata or {})
        return self._apply(query_bundle, await arewrite_query(self.rewriter, query_bundle.query_str, self.mode, hits))

    def _first_pass(self, metadata: Dict) -> Optional[List[DocumentHit]]:
        if self.task.feedback is None:
            return None
        found = metadata.get("first_pass")
        if found is None:
            raise ValueError(f"task {self.task.name!r} shows the query's first-pass results: pass them as "
                             "metadata={'first_pass': retriever.retrieve(query)}, or use DeepRetrievalRetriever")
        if all(isinstance(hit, DocumentHit) for hit in found):
            return list(found)
        from .search import node_hits

        return node_hits(found, self.task.feedback.docs)

    def _apply(self, query_bundle: QueryBundle, result: RewriteResult) -> QueryBundle:
        if result.fell_back:
            return query_bundle
        rewrite = result.query
        if self.mode == "replace":
            fields: dict[str, Any] = {"query_str": rewrite, "custom_embedding_strs": [rewrite]}
        elif self.mode == "expand":
            fields = {"query_str": search_text(query_bundle.query_str, rewrite, "expand", self.query_weight),
                      "custom_embedding_strs": [query_bundle.query_str, rewrite]}
        else:
            fields = {"custom_embedding_strs": [rewrite]}
        # A precomputed embedding belongs to the old text: drop it so the retriever embeds the new one.
        return dataclasses.replace(query_bundle, embedding=None, **fields)


def _bundle(query_bundle_or_str: QueryType) -> QueryBundle:
    if isinstance(query_bundle_or_str, str):
        return QueryBundle(query_str=query_bundle_or_str, custom_embedding_strs=[query_bundle_or_str])
    return query_bundle_or_str
