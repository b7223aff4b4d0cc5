"""What the retriever is sent for a rewrite: the one function the reward, the evaluation and both plugins call.

- ``replace`` (the paper's): the rewrite alone.
- ``expand``: the original query, repeated ``query_weight`` times, then the rewrite. The user's own words are always
  searched, so an expansion adds terms instead of replacing them; repeating the query (as query2doc does) keeps its
  terms dominant. A bm25s-based retriever (LlamaIndex ``BM25Retriever``, the core ``BM25Search``) counts a repeated
  query token once per repetition, so ``query_weight`` weights the original terms against the expansion's; Haystack's
  ``InMemoryBM25Retriever`` counts each distinct query token once, so there the repetition changes nothing.

Measured with the untrained embedded model on the dev splits through LlamaIndex BM25 (docs/benchmarks.md): expansion
at weight 1 was level with the raw query on SciFact and +0.009 nDCG@10 on NFCorpus; at weight 3, +0.011 and +0.012.
"""

from __future__ import annotations

FRAMINGS = ("replace", "expand")


def check_framing(framing: str, query_weight: int = 1) -> None:
    if framing not in FRAMINGS:
        raise ValueError(f"framing={framing!r}: choose one of {list(FRAMINGS)}")
    if not isinstance(query_weight, int) or isinstance(query_weight, bool) or query_weight < 1:
        raise ValueError(f"query_weight={query_weight!r} must be a whole number >= 1 (how many times the original "
                         "query is searched beside the rewrite)")
    if framing == "replace" and query_weight != 1:
        raise ValueError(f"query_weight={query_weight} only applies to framing='expand' (replace searches the "
                         "rewrite alone): set framing='expand' or query_weight=1")


def search_text(original: str, rewrite: str, framing: str = "replace", query_weight: int = 1) -> str:
    """The text to search for ``rewrite`` of ``original`` under ``framing``."""
    if framing == "expand":
        return " ".join([original] * query_weight + [rewrite])
    return rewrite
