"""Do LlamaIndex and Haystack give the same evaluation numbers as the core bm25s retriever for the same BM25 setup?

Raw queries of a collection's split through each retriever configuration, scored by ``deepretrieval eval``'s
own :func:`~deepretrieval_trainer.evaluation.evaluate.evaluate`; per configuration: nDCG@10, Recall@100, MRR, how many
queries rank exactly the same top 10 as the core ``BM25Search`` (bm25s, k1=0.9, b=0.4, English stop-words, no
stemming) and the mean top-10 overlap with it. Findings are explained in docs/evaluation.md.

    python benchmarks/retriever_agreement.py                          # SciFact dev (~3 min on 2 busy cores)
    python benchmarks/retriever_agreement.py --data ../shared/data/npl --split test
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from deepretrieval_trainer.evaluation.evaluate import evaluate
from deepretrieval_trainer.evaluation.sources import Source
from deepretrieval_trainer.retrieval.bm25 import BM25Search
from deepretrieval_trainer.retrieval.data import load_beir

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def configurations(path: Path, corpus: dict):
    """(label, SearchBackend factory) pairs, the reference first."""
    from haystack.components.retrievers.in_memory import InMemoryBM25Retriever
    from haystack.document_stores.in_memory import InMemoryDocumentStore

    from haystack_deepretrieval import HaystackSearch
    from haystack_deepretrieval.beir import beir_documents
    from llamaindex_deepretrieval import LlamaIndexSearch

    def haystack(algorithm: str, parameters: dict | None):
        store = InMemoryDocumentStore(bm25_algorithm=algorithm, bm25_parameters=parameters)
        store.write_documents(beir_documents(path))
        return HaystackSearch(retriever=InMemoryBM25Retriever(document_store=store))

    return [
        ("core bm25s (k1=0.9 b=0.4, stop-words, no stemming)", lambda: BM25Search(corpus)),
        ("llamaindex, same settings (k1=0.9 b=0.4, stop-words, no stemming)",
         lambda: LlamaIndexSearch.from_beir(path, k1=0.9, b=0.4, stemmer=None, language="en")),
        ("llamaindex, k1=0.9 b=0.4 + English stemmer",
         lambda: LlamaIndexSearch.from_beir(path, k1=0.9, b=0.4, stemmer="english", language="en")),
        ("llamaindex default (k1=1.5 b=0.75 + English stemmer)", lambda: LlamaIndexSearch.from_beir(path)),
        ("haystack BM25Okapi k1=0.9 b=0.4 (no stop-words)", lambda: haystack("BM25Okapi", {"k1": 0.9, "b": 0.4})),
        ("haystack default (BM25L)", lambda: haystack("BM25L", None)),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DATA / "scifact")
    parser.add_argument("--split", default="dev")
    args = parser.parse_args(argv)
    collection = load_beir(args.data, args.split)
    reference = None
    print(f"{args.data} [{args.split}], {len(collection.qrels)} queries, raw query text, K=1000\n")
    print("| retriever | nDCG@10 | R@100 | MRR | identical top-10 | top-10 overlap with core | max per-query nDCG@10 diff |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for label, factory in configurations(args.data, collection.corpus):
        result = evaluate(collection, factory(), [Source("raw")], progress=False).source("raw")
        if reference is None:
            reference = result
        same = sum(a.top10 == b.top10 for a, b in zip(result.outcomes, reference.outcomes, strict=True))
        overlap = sum(len(set(a.top10) & set(b.top10)) / max(len(b.top10), 1)
                      for a, b in zip(result.outcomes, reference.outcomes, strict=True)) / len(result.outcomes)
        diff = max(abs(a.metrics["ndcg@10"] - b.metrics["ndcg@10"])
                   for a, b in zip(result.outcomes, reference.outcomes, strict=True))
        means = result.means
        print(f"| {label} | {means['ndcg@10']:.4f} | {means['recall@100']:.4f} | {means['mrr']:.4f} | "
              f"{same}/{len(result.outcomes)} | {overlap:.1%} | {diff:.4f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
