"""Does LlamaIndexSearch give exactly the ranking (and nDCG@10) of calling the LlamaIndex retriever directly?

Raw queries of a BEIR split through ``BM25Retriever`` (llama-index-retrievers-bm25, built by
``LlamaIndexSearch.from_beir``) in three BM25 settings: per setting, nDCG@10 from ``retriever.retrieve`` directly,
from ``LlamaIndexSearch.search`` and ``asearch``, how many queries rank identically, and the search time.

    python benchmarks/llamaindex_reproduction.py                      # SciFact dev (~30 s)
    python benchmarks/llamaindex_reproduction.py --data ../shared/data/adi --split test
"""

from __future__ import annotations

import argparse
import asyncio
import time
from pathlib import Path

from deepretrieval_trainer.retrieval.data import load_beir
from deepretrieval_trainer.retrieval.metrics import mean_metric
from llamaindex_deepretrieval import LlamaIndexSearch

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
SETTINGS = {
    "defaults (k1=1.5 b=0.75, stemmed)": {},
    "k1=0.9 b=0.4, stemmed": {"k1": 0.9, "b": 0.4},
    "k1=0.9 b=0.4, no stemming": {"k1": 0.9, "b": 0.4, "stemmer": None},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DATA / "scifact")
    parser.add_argument("--split", default="dev")
    parser.add_argument("--k", type=int, default=10)
    args = parser.parse_args()
    collection = load_beir(args.data, args.split)
    qids, texts = list(collection.judged_queries), list(collection.judged_queries.values())
    print(f"{args.data.name} {args.split}: {len(texts)} judged queries, {len(collection.corpus)} documents, k={args.k}")
    print(f"{'setting':36} {'direct':>8} {'search':>8} {'asearch':>8} {'same':>9} {'search s':>9}")
    for label, settings in SETTINGS.items():
        search = LlamaIndexSearch.from_beir(args.data, **settings)
        retriever = search.retriever
        retriever.similarity_top_k = args.k
        direct = [[n.node.ref_doc_id or n.node.node_id for n in retriever.retrieve(q)] for q in texts]
        start = time.perf_counter()
        ranked = search.search(texts, args.k)
        elapsed = time.perf_counter() - start
        aranked = asyncio.run(search.asearch(texts, args.k))
        scores = [mean_metric("ndcg", dict(zip(qids, run)), collection.qrels, args.k) for run in (direct, ranked, aranked)]
        same = sum(a == b == c for a, b, c in zip(direct, ranked, aranked))
        print(f"{label:36} {scores[0]:8.4f} {scores[1]:8.4f} {scores[2]:8.4f} {same:>4}/{len(texts):<4} {elapsed:9.2f}")


if __name__ == "__main__":
    main()
