"""Do the trainer's search backends rank exactly as the frameworks' own retrievers, and how do the frameworks' BM25s
differ from each other?

The reward searches a rewrite through a SearchBackend and the deployed component searches through the framework's
retriever, so what is trained is what is served only if the two rank alike. Raw queries of a BEIR split:

1. ``llamaindex``: ``LlamaIndexSearch.from_beir`` (llama-index-retrievers-bm25 ``BM25Retriever``) in three BM25
   settings; per setting, nDCG@k of ``retriever.retrieve`` called directly, of ``search`` and of ``asearch``, how
   many queries rank identically on all three paths, and the seconds ``search`` and ``asearch`` took.
2. ``haystack``: the same for ``HaystackSearch.from_beir`` (``InMemoryBM25Retriever``, ``retriever.run`` directly)
   for each of Haystack's BM25 algorithms.
3. ``agreement``: the frameworks' BM25s and the core ``BM25Search`` (bm25s, k1=0.9, b=0.4, English stop-words, no
   stemming), each scored by ``deepretrieval eval``'s own ``evaluate`` at K=1000: nDCG@10, Recall@100, MRR, how many
   queries rank the same top 10 as the core, the mean top-10 overlap with it and the largest per-query nDCG@10 gap.
   The findings are explained in docs/experiments/fidelity.md.

    python benchmarks/fidelity.py --data ../shared/data/scifact                # SciFact dev (~2 min on 2 cores)
    python benchmarks/fidelity.py --data ../shared/data/adi --split test       # seconds
    python benchmarks/fidelity.py --sections agreement --data ../shared/data/npl --split test
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from shared_data import DATA

from deepretrieval_trainer.retrieval.data import Collection, load_beir
from deepretrieval_trainer.retrieval.metrics import mean_metric

# LlamaIndexSearch.from_beir keyword arguments (its defaults: English stemmer and stop-words)
LLAMAINDEX_SETTINGS = {
    "defaults (k1=1.5 b=0.75, stemmed)": {},
    "k1=0.9 b=0.4, stemmed": {"k1": 0.9, "b": 0.4},
    "k1=0.9 b=0.4, no stemming": {"k1": 0.9, "b": 0.4, "stemmer": None},
}
HAYSTACK_ALGORITHMS = ("BM25L", "BM25Okapi", "BM25Plus")  # BM25L is InMemoryDocumentStore's default
SECTIONS = ("llamaindex", "haystack", "agreement")


def llamaindex_direct(search, query: str, k: int) -> list[str]:
    """The ranking of LlamaIndexSearch's BM25Retriever called directly, as a LlamaIndex user would."""
    search.retriever.similarity_top_k = k
    return [n.node.ref_doc_id or n.node.node_id for n in search.retriever.retrieve(query)]


def haystack_direct(search, query: str, k: int) -> list[str]:
    """The ranking of HaystackSearch's InMemoryBM25Retriever run directly, as a Haystack pipeline would."""
    return [d.id for d in search.retriever.run(query=query, top_k=k)["documents"]]


def llamaindex_backends(path: Path, concurrency: dict):
    """(label, LlamaIndexSearch) per BM25 setting."""
    from llamaindex_deepretrieval import LlamaIndexSearch

    for label, settings in LLAMAINDEX_SETTINGS.items():
        yield label, LlamaIndexSearch.from_beir(path, **concurrency, **settings)


def haystack_backends(path: Path, concurrency: dict):
    """(label, HaystackSearch) per BM25 algorithm."""
    from haystack_deepretrieval import HaystackSearch

    for algorithm in HAYSTACK_ALGORITHMS:
        label = algorithm + (" (default)" if algorithm == "BM25L" else "")
        yield label, HaystackSearch.from_beir(path, bm25_algorithm=algorithm, **concurrency)


def reproduction_table(collection: Collection, backends: Iterable, direct: Callable[..., list[str]], k: int) -> None:
    """One row per backend: nDCG@k direct / search / asearch, identical rankings, search and asearch seconds."""
    qids, texts = list(collection.judged_queries), list(collection.judged_queries.values())
    print(f"{'setting':36} {'direct':>8} {'search':>8} {'asearch':>8} {'same':>9} {'search s':>9} {'asearch s':>10}")
    for label, search in backends:
        direct_runs = [direct(search, query, k) for query in texts]
        start = time.perf_counter()
        searched = search.search(texts, k)
        search_s = time.perf_counter() - start
        start = time.perf_counter()
        asearched = asyncio.run(search.asearch(texts, k))
        asearch_s = time.perf_counter() - start
        scores = [mean_metric("ndcg", dict(zip(qids, run, strict=True)), collection.qrels, k)
                  for run in (direct_runs, searched, asearched)]
        same = sum(a == b == c for a, b, c in zip(direct_runs, searched, asearched, strict=True))
        print(f"{label:36} {scores[0]:8.4f} {scores[1]:8.4f} {scores[2]:8.4f} {same:>4}/{len(texts):<4} "
              f"{search_s:9.2f} {asearch_s:10.2f}", flush=True)


def agreement_backends(path: Path, corpus: dict):
    """(label, SearchBackend factory) pairs, the core's bm25s first: the reference the others are compared with."""
    from haystack_deepretrieval import HaystackSearch
    from llamaindex_deepretrieval import LlamaIndexSearch

    from deepretrieval_trainer.retrieval.bm25 import BM25Search

    return [
        ("core bm25s (k1=0.9 b=0.4, stop-words, no stemming)", lambda: BM25Search(corpus)),
        ("llamaindex, same settings (k1=0.9 b=0.4, stop-words, no stemming)",
         lambda: LlamaIndexSearch.from_beir(path, k1=0.9, b=0.4, stemmer=None, language="en")),
        ("llamaindex, k1=0.9 b=0.4 + English stemmer",
         lambda: LlamaIndexSearch.from_beir(path, k1=0.9, b=0.4, stemmer="english", language="en")),
        ("llamaindex default (k1=1.5 b=0.75 + English stemmer)", lambda: LlamaIndexSearch.from_beir(path)),
        ("haystack BM25Okapi k1=0.9 b=0.4 (no stop-words)",
         lambda: HaystackSearch.from_beir(path, bm25_algorithm="BM25Okapi", bm25_parameters={"k1": 0.9, "b": 0.4})),
        ("haystack default (BM25L)", lambda: HaystackSearch.from_beir(path)),
    ]


def agreement_table(collection: Collection, path: Path) -> None:
    """The markdown table of how each BM25 agrees with the core's, at evaluate's K=1000."""
    from deepretrieval_trainer.evaluation.evaluate import evaluate
    from deepretrieval_trainer.evaluation.sources import Source

    print("| retriever | nDCG@10 | R@100 | MRR | identical top-10 | top-10 overlap with core "
          "| max per-query nDCG@10 diff |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    reference = None
    for label, factory in agreement_backends(path, collection.corpus):
        result = evaluate(collection, factory(), [Source("raw")], progress=False).source("raw")
        if reference is None:
            reference = result
        pairs = list(zip(result.outcomes, reference.outcomes, strict=True))
        same = sum(a.top10 == b.top10 for a, b in pairs)
        overlap = sum(len(set(a.top10) & set(b.top10)) / max(len(b.top10), 1) for a, b in pairs) / len(pairs)
        diff = max(abs(a.metrics["ndcg@10"] - b.metrics["ndcg@10"]) for a, b in pairs)
        means = result.means
        print(f"| {label} | {means['ndcg@10']:.4f} | {means['recall@100']:.4f} | {means['mrr']:.4f} | "
              f"{same}/{len(pairs)} | {overlap:.1%} | {diff:.4f} |", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DATA / "scifact",
                        help="a BEIR collection folder (default: SciFact in $DEEPRETRIEVAL_DATA or ../shared/data)")
    parser.add_argument("--split", default="dev")
    parser.add_argument("--k", type=int, default=10, help="ranking depth of the reproduction tables (default 10)")
    parser.add_argument("--max-concurrency", type=int, default=None,
                        help="asearch's concurrent searches (default: each backend's own, LlamaIndexSearch 8, "
                             "HaystackSearch 4)")
    parser.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    args = parser.parse_args(argv)
    collection = load_beir(args.data, args.split)
    concurrency = {} if args.max_concurrency is None else {"max_concurrency": args.max_concurrency}
    print(f"{args.data.name} {args.split}: {len(collection.judged_queries)} judged queries, "
          f"{len(collection.corpus)} documents, k={args.k}")
    if "llamaindex" in args.sections:
        print("\nLlamaIndexSearch against BM25Retriever.retrieve")
        reproduction_table(collection, llamaindex_backends(args.data, concurrency), llamaindex_direct, args.k)
    if "haystack" in args.sections:
        print("\nHaystackSearch against InMemoryBM25Retriever.run")
        reproduction_table(collection, haystack_backends(args.data, concurrency), haystack_direct, args.k)
    if "agreement" in args.sections:
        print(f"\nThe BM25s against the core's: {len(collection.qrels)} queries, raw query text, K=1000\n")
        agreement_table(collection, args.data)
    return 0


if __name__ == "__main__":
    sys.exit(main())
