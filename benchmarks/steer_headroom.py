"""How much can choosing among a query's RM3 candidate terms gain, before any training? (framing ``steer``)

For each query of a split, through one framework's BM25: the raw query, RM3 (every candidate kept), random halves of
the candidates (the mean, the best of 8 and of 64: no model), and, with ``--samples N``, N answers of the untrained
embedded model under the corpus-steered prompt at ``--temperature`` (a GRPO group): their mean, their best, and the
share of queries whose samples all score alike (a uniform group teaches GRPO nothing). nDCG at ``--k``, paired
against raw and RM3.

    python benchmarks/steer_headroom.py --collection nfcorpus --split train --limit 100 --samples 8
    python benchmarks/steer_headroom.py --collection scifact --framework haystack
"""

from __future__ import annotations

import argparse
import random
import time

import numpy as np
from shared_data import DATA, machine_line
from scipy import stats

from deepretrieval_trainer.retrieval.data import load_beir
from deepretrieval_trainer.retrieval.metrics import ndcg_at_k
from deepretrieval_trainer.retrieval.prf import steered_query
from deepretrieval_trainer.rewriting.tasks import get_task
from deepretrieval_trainer.training.config import RetrieverConfig
from deepretrieval_trainer.training.retrievers import build_search


def paired(ours: np.ndarray, theirs: np.ndarray) -> str:
    delta = ours - theirs
    if not delta.any():
        return "+0.0000 (identical)"
    return f"{delta.mean():+.4f} (p={stats.ttest_rel(ours, theirs).pvalue:.3f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--collection", default="nfcorpus")
    parser.add_argument("--split", default="dev")
    parser.add_argument("--framework", choices=("llamaindex", "haystack", "bm25s"), default="llamaindex")
    parser.add_argument("--limit", type=int, default=0, help="queries (0: all judged ones; a sample of --seed)")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--samples", type=int, default=0, help="answers of the untrained model per query (0: none)")
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    path = DATA / args.collection
    collection = load_beir(path, args.split, drop_unknown_docs=True)
    qids = list(collection.judged_queries)
    if args.limit:
        qids = sorted(random.Random(args.seed).sample(qids, min(args.limit, len(qids))))
    queries = [collection.judged_queries[q] for q in qids]
    search = build_search(RetrieverConfig(framework=args.framework, kind="bm25"), str(path))
    task = get_task("steer")
    first = search.search_documents(queries, task.feedback.docs)
    offered = [task.feedback.candidates(hits) for hits in first]

    def score(texts: list[str], ids: list[str]) -> np.ndarray:
        found = search.search(texts, args.k)
        return np.array([ndcg_at_k(ranking, collection.qrels[q], args.k) for ranking, q in zip(found, ids)])

    print(f"{args.collection} {args.split} via {args.framework}: {len(queries)} queries, nDCG@{args.k}; "
          f"{machine_line()}")
    raw = score(queries, qids)
    rm3 = score([steered_query(q, " ".join(c.forms.values()), c) for q, c in zip(queries, offered)], qids)
    print(f"raw {raw.mean():.4f}   RM3 {rm3.mean():.4f} {paired(rm3, raw)} vs raw")
    rng = random.Random(args.seed)
    halves = np.stack([score([steered_query(q, " ".join(rng.sample(list(c.forms.values()), len(c.forms) // 2)), c)
                              for q, c in zip(queries, offered)], qids) for _ in range(64)])
    for label, values in (("mean of random halves", halves.mean(axis=0)), ("best of 8", halves[:8].max(axis=0)),
                          ("best of 64", halves.max(axis=0))):
        print(f"{label:22} {values.mean():.4f}  vs raw {paired(values, raw)}  vs RM3 {paired(values, rm3)}")
    if not args.samples:
        return
    from deepretrieval_trainer.rewriting.rewriters import LocalRewriter

    rewriter = LocalRewriter(task=task, temperature=args.temperature, max_new_tokens=args.max_new_tokens,
                             batch_size=64)
    repeated_q = [q for q in queries for _ in range(args.samples)]
    repeated_hits = [h for h in first for _ in range(args.samples)]
    start = time.perf_counter()
    results = rewriter.rewrite(repeated_q, repeated_hits)
    seconds = time.perf_counter() - start
    texts = [r.query if r.fell_back else steered_query(r.original, r.query, offered[i // args.samples])
             for i, r in enumerate(results)]
    groups = score(texts, [q for q in qids for _ in range(args.samples)]).reshape(-1, args.samples)
    uniform = float((groups.max(axis=1) - groups.min(axis=1) < 1e-12).mean())
    fell_back = sum(r.fell_back for r in results) / len(results)
    print(f"untrained model, {args.samples} samples at temperature {args.temperature} ({len(results) / seconds:.1f} "
          f"answers/s, {fell_back:.1%} fell back): sample mean {groups.mean():.4f}, uniform groups {uniform:.0%}")
    best = groups.max(axis=1)
    print(f"best of the group      {best.mean():.4f}  vs raw {paired(best, raw)}  vs RM3 {paired(best, rm3)}")


if __name__ == "__main__":
    main()
