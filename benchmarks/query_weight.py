"""How much weight should the user's own query keep beside a rewrite? The untrained embedded model's rewrites of every
judged dev query, searched through LlamaIndex BM25 as ``query x w + rewrite`` (framing ``expand``,
``query_weight`` w) for w = 1, 2, 3, paired against the raw query. No training: it picks the framing to train with.

    python benchmarks/query_weight.py nfcorpus scifact [--weights 1 2 3] [--cache DIR]

Rewrites are cached in --cache (one JSON file per collection), so re-runs only search. Not a test: a measurement,
recorded in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("collections", nargs="+")
    parser.add_argument("--weights", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--frameworks", nargs="+", default=["llamaindex"], choices=("llamaindex", "haystack"))
    parser.add_argument("--framings", nargs="+", default=["expand"], choices=("expand", "fuse"))
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--cache", default="/tmp/deepretrieval-query-weight")
    args = parser.parse_args()

    from deepretrieval_trainer.evaluation.evaluate import paired_t_test
    from deepretrieval_trainer.retrieval.data import load_beir
    from deepretrieval_trainer.retrieval.framing import fused_search, search_text
    from deepretrieval_trainer.retrieval.metrics import ndcg_at_k, recall_at_k
    from deepretrieval_trainer.rewriting.rewriters import LocalRewriter
    from deepretrieval_trainer.training.config import RetrieverConfig
    from deepretrieval_trainer.training.retrievers import build_search

    rewriter = LocalRewriter(dtype=args.dtype, batch_size=8, max_new_tokens=128)
    Path(args.cache).mkdir(parents=True, exist_ok=True)
    for name in args.collections:
        collection = load_beir(DATA / name, "dev", drop_unknown_docs=True)
        items = list(collection.judged_queries.items())
        cache = Path(args.cache) / f"{name}-base.json"
        if cache.is_file():
            rewrites = json.loads(cache.read_text())
        else:
            start = time.perf_counter()
            rewrites = [None if r.fell_back else r.query for r in rewriter.rewrite([q for _, q in items])]
            cache.write_text(json.dumps(rewrites))
            print(f"{name}: rewrote {len(items)} queries in {time.perf_counter() - start:.0f} s, "
                  f"{sum(r is None for r in rewrites)} fell back (searched as the raw query)")
        for framework in args.frameworks:
            search = build_search(RetrieverConfig(framework=framework, kind="bm25"), str(DATA / name))
            qrels = [collection.qrels[qid] for qid, _ in items]

            def score(runs: list[list[str]]) -> tuple[list[float], list[float]]:
                return ([ndcg_at_k(r, q, 10) for r, q in zip(runs, qrels)],
                        [recall_at_k(r, q, 100) for r, q in zip(runs, qrels)])

            queries = [q for _, q in items]
            raw_ndcg, raw_recall = score(search.search(queries, 100))
            print(f"{name} {framework} raw: nDCG@10 {sum(raw_ndcg) / len(items):.4f}, "
                  f"R@100 {sum(raw_recall) / len(items):.4f}")
            for framing in args.framings:
                for weight in args.weights:
                    if framing == "fuse":
                        runs = fused_search(search, queries, rewrites, 100, weight)
                    else:
                        runs = search.search([search_text(q, r, "expand", weight) if r else q
                                              for q, r in zip(queries, rewrites)], 100)
                    ndcg, recall = score(runs)
                    deltas = [a - b for a, b in zip(ndcg, raw_ndcg)]
                    wins, losses = sum(d > 1e-9 for d in deltas), sum(d < -1e-9 for d in deltas)
                    print(f"{name} {framework} {framing}, query_weight {weight}: nDCG@10 {sum(ndcg) / len(items):.4f} "
                          f"(vs raw {sum(deltas) / len(items):+.4f}, W/T/L {wins}/{len(items) - wins - losses}/"
                          f"{losses}, p={paired_t_test(ndcg, raw_ndcg)[1]:.3f}), R@100 {sum(recall) / len(items):.4f}")


if __name__ == "__main__":
    main()
