"""Does HaystackSearch give exactly the ranking (and nDCG@10) of calling the Haystack retriever directly?

Raw queries of a BEIR split through ``InMemoryBM25Retriever`` over an ``InMemoryDocumentStore`` (built by
``HaystackSearch.from_beir``: Document.id = BEIR id, content = title + text) for each of Haystack's BM25 algorithms:
nDCG@k from ``retriever.run`` directly, from ``HaystackSearch.search`` and ``asearch``, how many queries rank
identically, and the search times.

    python benchmarks/haystack_reproduction.py                      # SciFact dev (~2-4 min on a busy 2-core box)
    python benchmarks/haystack_reproduction.py --data ../shared/data/adi --split test
"""

from __future__ import annotations

import argparse
import asyncio
import time
from pathlib import Path

from deepretrieval_trainer.retrieval.data import load_beir
from deepretrieval_trainer.retrieval.metrics import mean_metric
from haystack_deepretrieval import HaystackSearch

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
ALGORITHMS = ("BM25L", "BM25Okapi", "BM25Plus")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DATA / "scifact")
    parser.add_argument("--split", default="dev")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--max-concurrency", type=int, default=4)
    args = parser.parse_args()
    collection = load_beir(args.data, args.split)
    qids, texts = list(collection.judged_queries), list(collection.judged_queries.values())
    print(f"{args.data.name} {args.split}: {len(texts)} judged queries, {len(collection.corpus)} documents, k={args.k}")
    print(f"{'algorithm':10} {'direct':>8} {'search':>8} {'asearch':>8} {'same':>9} {'search s':>9} {'asearch s':>10}")
    for algorithm in ALGORITHMS:
        search = HaystackSearch.from_beir(args.data, bm25_algorithm=algorithm, max_concurrency=args.max_concurrency)
        direct = [[d.id for d in search.retriever.run(query=q, top_k=args.k)["documents"]] for q in texts]
        start = time.perf_counter()
        ranked = search.search(texts, args.k)
        sync_s = time.perf_counter() - start
        start = time.perf_counter()
        aranked = asyncio.run(search.asearch(texts, args.k))
        async_s = time.perf_counter() - start
        scores = [mean_metric("ndcg", dict(zip(qids, run)), collection.qrels, args.k) for run in (direct, ranked, aranked)]
        same = sum(a == b == c for a, b, c in zip(direct, ranked, aranked))
        print(f"{algorithm:10} {scores[0]:8.4f} {scores[1]:8.4f} {scores[2]:8.4f} {same:>4}/{len(texts):<4} "
              f"{sync_s:9.2f} {async_s:10.2f}")


if __name__ == "__main__":
    main()
