"""The ``synthesis`` section of a TrainConfig: how labels are made without judgments (:mod:`.synthetic`).

It is also every flag of ``deepretrieval synthesize``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, get_args

from ..common.errors import ConfigError
from ..common.fields import bounded_repr, check_fields

SynthesisMethod = Literal["crop", "doc2query"]
Headroom = Literal["none", "prf"]
# tasks whose labels are relevant documents, which synthetic labels give (text-to-SQL and literature search need gold
# SQL or a search engine's judged records)
SYNTHETIC_TASKS = ("retrieval", "dense", "qa", "steer")


@dataclass
class SynthesisConfig:
    """How ``labels: synthetic`` (and ``deepretrieval synthesize``) makes labels without judgments: pseudo-queries
    written from a sample of the index's own documents, each with its source document as the relevant one, kept
    where the raw pseudo-query ranks that document inside a window (:mod:`.synthetic`)."""

    # where the documents are: beir:PATH | llamaindex:PATH | haystack:PATH (SCHEME:PATH of a registered source);
    # "" = beir:<data.path>
    documents: str = ""
    # how a pseudo-query is written: crop (a span of the document, rarest words removed; no model) or doc2query (the
    # in-process model). crop: it costs no model time, and its labels trained the better adapter in
    # benchmarks/synthetic_labels.py (doc2query questions repeat their document's words, so on them feedback hurts)
    method: str = "crop"
    sample: int = 1000  # documents sampled (uniformly, in one streaming pass)
    queries_per_document: int = 1
    # The source document's rank under the raw pseudo-query must fall in [min_rank, max_rank] for the pair to be kept.
    # Rank 1: the query already finds its document first, so a rewrite can only tie or lose (under nDCG every sample of
    # the group scores about alike: nothing to learn). Beyond max_rank (by default the retrieval task's reward depth,
    # 100): the raw query and nearly every rewrite score 0, and the pseudo-query is likely not about its document.
    min_rank: int = 2
    max_rank: int = 100
    # a pseudo-query whose word set has a Jaccard similarity >= this with one kept before it is dropped (1.0: only
    # queries with the same words)
    dedup_jaccard: float = 0.8
    # prf: also keep a pair only where RM3 feedback through the same retriever (Pyserini's settings: 10 documents,
    # 10 terms, weight 0.5) ranks the source document strictly higher than the raw pseudo-query does. A pseudo-query
    # written from its own document matches it word for word, so added words mostly let other documents catch up; on
    # such labels GRPO learns to add nothing (docs/experiments/label-free.md). On the pairs kept, RM3's terms are
    # rewarded, as on real questions: with the steer task (the policy picks RM3's terms) the adapter then keeps them;
    # under fuse/expand, where it writes its own words, it measured no different. none: no check.
    headroom: str = "none"
    split: str = "synthetic"  # the qrels file written: qrels/<split>.tsv
    seed: int = 0
    min_words: int = 8  # shorter documents are skipped (counted)
    max_chars: int = 1000  # longer documents are cut to this before a query is written (counted)
    # doc2query only: the model (None: the embedded one), sampling temperature (0: greedy), batch, answer length
    model: str | None = None
    temperature: float = 0.0
    batch_size: int = 16
    max_new_tokens: int = 40

    def __post_init__(self) -> None:
        check_fields(self, prefix="synthesis.", error=ConfigError)
        if self.method not in get_args(SynthesisMethod):
            raise ConfigError(f"synthesis.method={bounded_repr(self.method)} is not supported: choose one of "
                              f"{list(get_args(SynthesisMethod))}")
        for name in ("sample", "queries_per_document", "min_rank", "max_rank", "min_words", "max_chars", "batch_size",
                     "max_new_tokens"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"synthesis.{name}={bounded_repr(value)} must be a positive integer")
        if self.headroom not in get_args(Headroom):
            raise ConfigError(f"synthesis.headroom={bounded_repr(self.headroom)} is not supported: choose one of "
                              f"{list(get_args(Headroom))} (prf: keep pairs where RM3 feedback ranks the document "
                              "higher than the raw pseudo-query)")
        if self.min_rank > self.max_rank:
            raise ConfigError(f"synthesis.min_rank={self.min_rank} is above max_rank={self.max_rank}: the rank window "
                              "is [min_rank, max_rank], e.g. 2 and 100")
        if not 0 < self.dedup_jaccard <= 1:
            raise ConfigError(f"synthesis.dedup_jaccard={self.dedup_jaccard!r} must be in (0, 1] (1: drop only "
                              "queries with the same words)")
        if not math.isfinite(self.temperature) or self.temperature < 0:
            raise ConfigError(f"synthesis.temperature={bounded_repr(self.temperature)} must be a number >= 0 (0: greedy)")
        if self.method == "doc2query" and self.queries_per_document > 1 and self.temperature == 0:
            raise ConfigError(f"synthesis.queries_per_document={self.queries_per_document} with temperature 0: greedy "
                              "decoding writes the same query each time; set synthesis.temperature (e.g. 0.7)")
        if self.documents and ":" not in self.documents:
            raise ConfigError(f"synthesis.documents={bounded_repr(self.documents)}: name the store as SCHEME:PATH, "
                              "e.g. beir:../shared/data/adi, llamaindex:storage/ or haystack:store.json")
        if not self.split or any(c in self.split for c in "/\\\0") or self.split.startswith("."):
            raise ConfigError(f"synthesis.split={bounded_repr(self.split)} names the file qrels/<split>.tsv: give a "
                              "plain name such as synthetic or train")
