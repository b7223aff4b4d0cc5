"""Ranking metrics over one ranked list of document ids and graded relevance judgments (qrels).

``qrels`` maps doc id -> relevance grade; grades <= 0 are not relevant. Definitions follow trec_eval
(nDCG with linear gain, ideal ranking from all judged documents).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence


def _relevant(qrels: Mapping[str, float]) -> set[str]:
    return {doc for doc, grade in qrels.items() if grade > 0}


def recall_at_k(ranking: Sequence[str], qrels: Mapping[str, float], k: int) -> float:
    relevant = _relevant(qrels)
    if not relevant:
        return 0.0
    return len(relevant.intersection(ranking[:k])) / len(relevant)


def hit_at_k(ranking: Sequence[str], qrels: Mapping[str, float], k: int) -> float:
    return 1.0 if first_hit_rank(ranking[:k], qrels) is not None else 0.0


def first_hit_rank(ranking: Sequence[str], qrels: Mapping[str, float]) -> int | None:
    """1-based rank of the first relevant document, or None."""
    relevant = _relevant(qrels)
    for rank, doc in enumerate(ranking, start=1):
        if doc in relevant:
            return rank
    return None


def mrr(ranking: Sequence[str], qrels: Mapping[str, float], k: int | None = None) -> float:
    rank = first_hit_rank(ranking[:k] if k else ranking, qrels)
    return 1.0 / rank if rank else 0.0


def ndcg_at_k(ranking: Sequence[str], qrels: Mapping[str, float], k: int) -> float:
    gains = sorted((g for g in qrels.values() if g > 0), reverse=True)[:k]
    ideal = sum(g / math.log2(i + 2) for i, g in enumerate(gains))
    if ideal == 0:
        return 0.0
    dcg = sum(max(qrels.get(doc, 0.0), 0.0) / math.log2(i + 2) for i, doc in enumerate(ranking[:k]))
    return dcg / ideal


def mean_metric(name: str, run: Mapping[str, Sequence[str]], qrels: Mapping[str, Mapping[str, float]], k: int) -> float:
    """Mean of ``name`` (recall, ndcg, hit, mrr) over the queries of ``qrels`` (missing runs score 0)."""
    fn = METRICS[name]
    if not qrels:
        raise ValueError("qrels are empty: nothing to average")
    return sum(fn(run.get(qid, []), rel, k) for qid, rel in qrels.items()) / len(qrels)


METRICS = {"recall": recall_at_k, "ndcg": ndcg_at_k, "hit": hit_at_k, "mrr": mrr}
