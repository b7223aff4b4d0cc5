"""``QueryFusionJoiner``: the deployment side of the trainer's ``fuse`` framing in a Haystack pipeline.

Under ``framing: fuse`` the user's query and the model's rewrite are searched separately through the same retriever,
and each document's scores are summed, the query's times ``query_weight``. In a pipeline: one retriever gets the
user's query, a second one (same store, same settings) the rewriter's ``query`` output, and this component joins
their documents with the core's :func:`deepretrieval_trainer.retrieval.framing.fuse_scores` (the ranking ``fuse_hits`` gives
the reward), so the served ranking is the one the reward scored.

The two lists arrive on two named inputs, ``query_documents`` and ``rewrite_documents``. Haystack's
``DocumentJoiner(join_mode="merge", weights=[...])`` takes one variadic input whose lists come in the order their
senders ran, not the order of the connections: under ``Pipeline.run`` retrievers ready at the same time run in the
order of their names (a rewrite retriever named ``a_rewrite`` silently takes the query's weight), under
``Pipeline.run_async`` the first to answer comes first.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from haystack import Document, component, default_from_dict, default_to_dict

from deepretrieval_trainer.retrieval.framing import check_framing, fuse_scores
from deepretrieval_trainer.retrieval.search import DocumentHit

from . import serialization as _serialization  # noqa: F401 - registers this package with the YAML allowlist

# Haystack 3 imports only allowlisted modules when it loads a pipeline: register ours, the supported way.

@component
class QueryFusionJoiner:
    """Ranks the documents of the user's query and of the rewrite by ``query_weight`` x the query's score + the
    rewrite's score (a document missing from one list counts 0 there), as training's ``fuse`` framing does."""

    def __init__(self, *, query_weight: int = 1, top_k: int | None = None) -> None:
        """
        :param query_weight: the weight of the user's query's scores, as the adapter was trained
            (``TrainConfig.query_weight`` of a run with ``framing: fuse``).
        :param top_k: the most documents to return (None: all of them). Give each retriever a ``top_k`` of at
            least ``deepretrieval_trainer.retrieval.framing.FUSION_DEPTH`` (100), the depth training fuses.
        """
        check_framing("fuse", query_weight)
        _check_top_k(top_k)
        self.query_weight = query_weight
        self.top_k = top_k

    @component.output_types(documents=list[Document])
    def run(self, query_documents: list[Document], rewrite_documents: list[Document],
            top_k: int | None = None) -> dict[str, list[Document]]:
        """Fuse the two rankings.

        :param query_documents: the retriever's documents for the user's query.
        :param rewrite_documents: the same retriever's documents for the rewrite (the rewriter's ``query`` output,
            which is the user's query on fallback: the fused ranking is then the query's own).
        :param top_k: overrides the init value for this call.
        :returns: ``documents``: best first, each carrying its fused score (the query's document where both lists
            hold it).
        """
        _check_top_k(top_k)
        query_kept = _first_of_each_id(query_documents, "query_documents")
        rewrite_kept = _first_of_each_id(rewrite_documents, "rewrite_documents")
        scores = fuse_scores([DocumentHit(d.id, score=d.score) for d in query_kept],
                             [DocumentHit(d.id, score=d.score) for d in rewrite_kept], self.query_weight)
        limit = self.top_k if top_k is None else top_k
        ranked = list(scores)[:limit]  # limit None: every document
        found = {**{d.id: d for d in rewrite_kept}, **{d.id: d for d in query_kept}}  # the query's document wins
        return {"documents": [dataclasses.replace(found[doc_id], score=scores[doc_id]) for doc_id in ranked]}

    def to_dict(self) -> dict[str, Any]:
        return default_to_dict(self, query_weight=self.query_weight, top_k=self.top_k)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> QueryFusionJoiner:
        return default_from_dict(cls, data)


def _first_of_each_id(documents: list[Document], name: str) -> list[Document]:
    """The documents in order, each id at its first rank (as ``HaystackSearch`` reads a ranking for the reward),
    after checking each has a score."""
    if documents is None:
        raise ValueError(f"{name} is None: connect a retriever's documents to QueryFusionJoiner.{name}")
    kept: dict[str, Document] = {}
    for document in documents:
        if document.score is None:
            raise ValueError(
                f"document {document.id!r} in {name} came back without a score: QueryFusionJoiner sums the "
                "retrievers' scores (framing 'fuse'), so connect retrievers that return them (e.g. "
                "InMemoryBM25Retriever, an embedding retriever), or serve an adapter trained with framing 'expand' "
                "through the rewriter's search_query output instead")
        kept.setdefault(document.id, document)
    return list(kept.values())


def _check_top_k(top_k: Any) -> None:
    if top_k is not None and (not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 1):
        raise ValueError(f"top_k={top_k!r} must be a whole number >= 1, or None to return every document")
