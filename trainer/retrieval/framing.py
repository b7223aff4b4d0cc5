"""What the retriever is sent for a rewrite: the one function the reward, the evaluation and both plugins call.

- ``replace`` (the paper's): the rewrite alone.
- ``expand``: the original query, repeated ``query_weight`` times, then the rewrite. The user's own words are always
  searched, so an expansion adds terms instead of replacing them; repeating the query (as query2doc does) keeps its
  terms dominant. A bm25s-based retriever (LlamaIndex ``BM25Retriever``, the core ``BM25Search``) counts a repeated
  query token once per repetition, so ``query_weight`` weights the original terms against the expansion's; Haystack's
  ``InMemoryBM25Retriever`` counts each distinct query token once, so there the repetition changes nothing.
- ``fuse``: the original query and the rewrite are searched separately through the same retriever, and each document's
  scores are summed, the original's times ``query_weight`` (:func:`fuse_hits`; deployed by LlamaIndex's
  ``DeepRetrievalRetriever(mode="fuse")`` and Haystack's ``QueryFusionJoiner``). It weights the user's words in any
  retriever that returns scores, including those that count a repeated token once (Haystack's in-memory BM25) and
  dense ones.
- ``steer``: for the corpus-steered task, whose prompt shows the candidate terms RM3 mines from the query's first pass
  and whose answer keeps some of them: RM3 restricted to the kept terms (:func:`~.prf.steered_query`), the original
  query's weight ``query_weight / (query_weight + 1)``. Keeping every candidate is RM3; keeping none, the raw query.

Measured with the untrained embedded model on the dev splits through LlamaIndex BM25: expansion at weight 1 was level
with the raw query on SciFact and +0.009 nDCG@10 on NFCorpus; at weight 3, +0.011 and +0.012
(docs/experiments/retrieval-recipes.md#how-much-weight-should-the-users-query-keep-beside-the-rewrite). Through
Haystack's in-memory BM25 on NFCorpus dev, ``expand`` lost 0.009 to the raw query at any weight, and ``fuse`` at
weight 3 gained 0.012, p=0.005
(docs/experiments/retrieval-recipes.md#which-framing-keeps-the-users-words-weighted-through-haystack-before-training).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from .prf import Candidates, steered_query
from .search import DocumentHit, DocumentSearch, document_search

FRAMINGS = ("replace", "expand", "fuse", "steer")
# how many documents each of the two searches under ``fuse`` returns before their scores are summed: a document
# ranked past the cut-off of one list counts 0 there, so the cut-off must be well below the depth that is scored
FUSION_DEPTH = 100


def check_framing(framing: str, query_weight: int = 1) -> None:
    if framing not in FRAMINGS:
        raise ValueError(f"framing={framing!r}: choose one of {list(FRAMINGS)}")
    if not isinstance(query_weight, int) or isinstance(query_weight, bool) or query_weight < 1:
        raise ValueError(f"query_weight={query_weight!r} must be a whole number >= 1 (how many times the original "
                         "query is searched beside the rewrite)")
    if framing == "replace" and query_weight != 1:
        raise ValueError(f"query_weight={query_weight} only applies to framing 'expand', 'fuse' or 'steer' (replace "
                         "searches the rewrite alone): set one of those framings, or query_weight=1")


_WORD = re.compile(r"\w+")


def new_words(original: str, rewrite: str) -> set[str]:
    """The words (case-folded runs of letters and digits) of ``rewrite`` that ``original`` lacks. Empty: the rewrite
    is an echo or a subset of the user's query, which under ``expand`` or ``fuse`` only re-weights the user's own
    words (an exact echo ranks as the raw query does). Surface forms, not the retriever's stems."""
    return set(_WORD.findall(rewrite.casefold())) - set(_WORD.findall(original.casefold()))


def search_text(original: str, rewrite: str, framing: str = "replace", query_weight: int = 1,
                candidates: Candidates | None = None) -> str:
    """The text to search for ``rewrite`` of ``original`` under ``framing`` (under ``fuse``, the rewrite's own search:
    the original is searched beside it, :func:`fuse_hits`; under ``steer``, RM3 restricted to the ``candidates`` of
    the first pass that the rewrite keeps, :func:`~deepretrieval_trainer.retrieval.prf.steered_query`)."""
    if framing == "steer":
        if candidates is None:
            raise ValueError("framing 'steer' weights the first pass's candidate terms that the answer keeps: pass "
                             "candidates= (Feedback.candidates of the query's first-pass documents)")
        return steered_query(original, rewrite, candidates, query_weight)
    if framing == "expand":
        return " ".join([original] * query_weight + [rewrite])
    return rewrite


def fuse_scores(original: Sequence[DocumentHit], rewrite: Sequence[DocumentHit],
                query_weight: int = 1) -> dict[str, float]:
    """The ``fuse`` scores, best first: ``query_weight`` x the original query's score + the rewrite's score for each
    document (a document missing from one list counts 0 there); equal sums keep the original's order, then the
    rewrite's."""
    scores: dict[str, float] = {}
    for weight, hits in ((query_weight, original), (1, rewrite)):
        for hit in hits:
            if hit.score is None:
                raise ValueError(f"document {hit.doc_id!r} came back without a score: framing 'fuse' sums the "
                                 "retriever's scores, so use a retriever that returns them, or framing 'expand'")
            scores[hit.doc_id] = scores.get(hit.doc_id, 0.0) + weight * hit.score
    return dict(sorted(scores.items(), key=lambda item: -item[1]))


def fuse_hits(original: Sequence[DocumentHit], rewrite: Sequence[DocumentHit], query_weight: int = 1) -> list[str]:
    """The ``fuse`` ranking: document ids by :func:`fuse_scores`, best first."""
    return list(fuse_scores(original, rewrite, query_weight))


def fused_search(search: object, originals: Sequence[str], rewrites: Sequence[str | None], k: int,
                 query_weight: int = 1, depth: int | None = None) -> list[list[str]]:
    """The ``fuse`` rankings (at most ``k`` ids) of each original query with its rewrite (None: the model gave none,
    and the original's own ranking is what deployment falls back to), through one ``DocumentSearch``. Each list is
    ``depth`` deep (default: ``k``, at least :data:`FUSION_DEPTH`, as the reward searches); the evaluation passes
    ``FUSION_DEPTH``, the depth the deployed retrievers fuse at, whatever deeper ``k`` it scores."""
    searcher: DocumentSearch = document_search(search, purpose="framing 'fuse'")
    depth = max(k, FUSION_DEPTH) if depth is None else depth
    asked = [r for r in rewrites if r is not None]
    hits = searcher.search_documents(list(originals) + asked, depth)
    first, found = hits[: len(originals)], iter(hits[len(originals):])
    return [([h.doc_id for h in raw] if rewrite is None else fuse_hits(raw, next(found), query_weight))[:k]
            for raw, rewrite in zip(first, rewrites, strict=True)]
