"""A LlamaIndex query transform that rewrites the query with a DeepRetrieval rewriter.

Modes decide where the rewrite goes in the :class:`QueryBundle`:

- ``replace``: the rewrite becomes ``query_str`` (and the embedding text): for BM25 / keyword retrievers.
- ``expand``: ``query_str`` is ``"original rewrite"``; the embedding strings are both (vector retrievers average them).
- ``embed``: ``query_str`` stays the original; only ``custom_embedding_strs`` is the rewrite: for vector retrievers
  whose downstream synthesis should still see the user's words.
- ``steer`` (the corpus-steered task): ``query_str`` is RM3 over the first-pass candidate terms the answer keeps
  (framing ``steer``, :func:`deepretrieval_trainer.retrieval.prf.steered_query`); the embedding text stays the
  original query.

On any failure the original bundle comes back unchanged and a warning says why (see :mod:`.events`).

A task whose prompt shows the query's first-pass results (``task.feedback``, see
:mod:`deepretrieval_trainer.rewriting.feedback`) needs them in ``metadata["first_pass"]`` (``DocumentHit`` objects, or the
``NodeWithScore`` list a retriever returned): :class:`~llamaindex_deepretrieval.retriever.DeepRetrievalRetriever`
passes them from the retriever it wraps.
"""

from __future__ import annotations

import dataclasses
import logging
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

Mode = Literal["replace", "expand", "embed", "steer"]
MODES: tuple[str, ...] = get_args(Mode)
logger = logging.getLogger(__name__)

SYSTEM_PROMPT = "system_prompt"
USER_PROMPT = "user_prompt"


class DeepRetrievalQueryTransform(BaseQueryTransform):
    """Rewrites ``query_str`` with ``rewriter`` (any core :class:`Rewriter`, e.g. ``LocalRewriter`` or a served one).

    ``mode`` and ``query_weight`` default to how the adapter was trained, read from its card (``rewriter.card``:
    ``LocalRewriter(adapter=...)`` reads it from the adapter folder), else ``replace`` and 1.

    ``task`` (a name or :class:`Task`), when given, becomes the rewriter's task. The task's system and user templates
    are the transform's prompts (``system_prompt``, ``user_prompt``): ``update_prompts`` changes the task the
    rewriter uses. ``query_weight`` (``expand`` only): how many times the original query precedes the rewrite in
    ``query_str``, as the adapter was trained (``TrainConfig.query_weight``; deepretrieval_trainer.retrieval.framing).
    """

    def __init__(self, *, rewriter: Rewriter, mode: Mode | None = None, task: str | Task | None = None,
                 query_weight: int | None = None) -> None:
        super().__init__()
        self._setup(rewriter, *trained_mode(rewriter, mode, query_weight, fuse=False), task)

    @classmethod
    def for_fusion(cls, rewriter: Rewriter, task: str | Task | None = None) -> DeepRetrievalQueryTransform:
        """The rewrite half of ``DeepRetrievalRetriever(mode="fuse")``: ``replace`` (the rewrite alone), whatever
        the card says, since the retriever searches the query beside it and fuses the two."""
        transform = cls.__new__(cls)
        BaseQueryTransform.__init__(transform)
        transform._setup(rewriter, "replace", 1, task)
        return transform

    def _setup(self, rewriter: Rewriter, mode: str, query_weight: int, task: str | Task | None) -> None:
        if mode == "fuse":
            raise ValueError("mode='fuse' searches the query and the rewrite apart and sums their scores, which one "
                             "QueryBundle cannot carry: wrap your retriever in DeepRetrievalRetriever(retriever, "
                             "rewriter=..., mode='fuse', query_weight=...) instead")
        if mode not in MODES:
            raise ValueError(f"mode={mode!r}: choose one of {MODES} ('replace' for BM25, 'embed' or 'expand' for vectors)")
        check_framing(mode if mode in ("expand", "steer") else "replace", query_weight)
        if not callable(getattr(rewriter, "rewrite", None)) or not callable(getattr(rewriter, "arewrite", None)):
            raise TypeError(
                f"rewriter={rewriter!r} has no rewrite()/arewrite(); pass a deepretrieval_trainer rewriter "
                "such as LocalRewriter"
            )
        if task is not None:
            rewriter.task = get_task(task)
        if mode == "steer" and getattr(rewriter.task.feedback, "field", None) != "terms":
            raise ValueError(f"mode='steer' weights the candidate terms a corpus-steered prompt shows, and task "
                             f"{rewriter.task.name!r} shows none: use task='steer' (an adapter trained so), or another mode")
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
        return self._apply(query_bundle, rewrite_query(self.rewriter, query_bundle.query_str, self.mode, hits), hits)

    async def arun(self, query_bundle_or_str: QueryType, metadata: Optional[Dict] = None) -> QueryBundle:
        """The async form of :meth:`run`: the rewrite awaits the rewriter's ``arewrite``."""
        query_bundle = _bundle(query_bundle_or_str)
        hits = self._first_pass(metadata or {})
        return self._apply(query_bundle, await arewrite_query(self.rewriter, query_bundle.query_str, self.mode, hits),
                           hits)

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

    def _apply(self, query_bundle: QueryBundle, result: RewriteResult,
               hits: Optional[List[DocumentHit]] = None) -> QueryBundle:
        if result.fell_back:
            return query_bundle
        rewrite = result.query
        if self.mode == "steer":  # RM3 over the candidate terms the answer keeps; vector retrievers embed the query
            candidates = self.task.feedback.candidates(hits or [])
            fields = {"query_str": search_text(query_bundle.query_str, rewrite, "steer", self.query_weight, candidates),
                      "custom_embedding_strs": [query_bundle.query_str]}
        elif self.mode == "replace":
            fields: dict[str, Any] = {"query_str": rewrite, "custom_embedding_strs": [rewrite]}
        elif self.mode == "expand":
            fields = {"query_str": search_text(query_bundle.query_str, rewrite, "expand", self.query_weight),
                      "custom_embedding_strs": [query_bundle.query_str, rewrite]}
        else:
            fields = {"custom_embedding_strs": [rewrite]}
        # A precomputed embedding belongs to the old text: drop it so the retriever embeds the new one.
        return dataclasses.replace(query_bundle, embedding=None, **fields)


def trained_mode(rewriter: Rewriter, mode: str | None, query_weight: int | None, *, fuse: bool) -> tuple[str, int]:
    """``mode`` and ``query_weight`` as given, else as the adapter's card says it was trained (its framing is the
    mode of the same name), else ``replace`` and 1; ``fuse=False`` where the caller cannot fuse (one QueryBundle)."""
    card = getattr(rewriter, "card", None)
    if card is None:
        return mode or "replace", 1 if query_weight is None else query_weight
    if mode is None:
        if card.framing == "fuse" and not fuse:
            raise ValueError("the adapter was trained with framing 'fuse' (its card): the query and the rewrite are "
                             "searched apart, which one QueryBundle cannot carry; wrap your retriever in "
                             "DeepRetrievalRetriever(retriever, rewriter=...) instead, which fuses as trained")
        mode = card.framing
    weight = query_weight if query_weight is not None else card.query_weight if mode == card.framing else 1
    if mode != card.framing or (mode in ("expand", "fuse") and weight != card.query_weight):
        logger.warning("the adapter was trained with framing %s, query_weight %d (its card); serving it with mode %s, "
                       "query_weight %d, as asked", card.framing, card.query_weight, mode, weight)
    return mode, weight


def _bundle(query_bundle_or_str: QueryType) -> QueryBundle:
    if isinstance(query_bundle_or_str, str):
        return QueryBundle(query_str=query_bundle_or_str, custom_embedding_strs=[query_bundle_or_str])
    return query_bundle_or_str
