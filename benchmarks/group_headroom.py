"""Does a label set leave GRPO room to learn to expand? The untrained model's own groups, before any training.

For each query of a label set (a folder `deepretrieval synthesize` wrote, searched against --collection's corpus) or
of a split of --collection, two independent groups of --samples answers of the untrained embedded model under the
training prompt and temperature, each scored as the trainer's reward scores it (nDCG@10 of the rewrite searched with
--framing and --query-weight through the framework's BM25). It prints, per group: the raw query's reward, the
samples' mean and best minus it, the share of uniform groups (they teach GRPO nothing), of parsable answers and of
answers that add a word, and the mean gain over raw of the answers that add one. Where that gain is negative, an
answer that echoes the query (which scores as raw does) beats the average expansion, and GRPO drifts towards echoing.

The first group is a filter's draw: keep a query where its best answer (or at least two answers) beats raw. The
second, drawn apart, says what the kept queries would teach; on the same draw the filter would only select noise.
With --labels and --keep-to FOLDER it writes the pairs the first group's best answer keeps as a new label folder
(train on it with `deepretrieval train --labels FOLDER`; its synthesis.json says how they were filtered).

    python benchmarks/group_headroom.py --collection nfcorpus --split train --limit 200
    python benchmarks/group_headroom.py --collection nfcorpus --labels labels/nfcorpus --limit 200
    python benchmarks/group_headroom.py --collection nfcorpus --labels labels/nfcorpus --limit 0 --keep-to labels/kept
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import numpy as np
from shared_data import DATA, machine_line

from deepretrieval_trainer.retrieval.data import load_beir
from deepretrieval_trainer.retrieval.framing import new_words
from deepretrieval_trainer.rewriting.rewriters import LocalRewriter
from deepretrieval_trainer.training.config import RetrieverConfig
from deepretrieval_trainer.training.label_folder import CANDIDATES, read_rows, write_folder
from deepretrieval_trainer.training.retrievers import build_search
from deepretrieval_trainer.training.rewards import RetrievalReward


def write_kept(source: Path, report: dict, out: Path, qrels: dict[str, dict[str, float]], kept: list[str],
               rule: dict) -> None:
    """``source``'s label folder reduced to the ``kept`` query ids, written by the trainer's own label-folder writer;
    the filter is recorded in synthesis.json, and candidates.jsonl gives the checked pairs it dropped their verdict."""
    if out.exists():
        raise SystemExit(f"{out}: exists; name a new folder for the kept labels")
    wanted, dropped = set(kept), set(qrels) - set(kept)
    verdict = "model filter: no untrained answer of the first group beats the raw pseudo-query"
    with open(source / "queries.jsonl", encoding="utf-8") as lines:
        records = [record for record in map(json.loads, lines) if record["_id"] in wanted]
    with open(source / CANDIDATES, encoding="utf-8") as lines:
        candidates = [{**c, "verdict": verdict} if c.get("query_id") in dropped else c for c in map(json.loads, lines)]
    report = {**report, "kept": len(kept),
              "model_filter": {**rule, "checked": len(qrels), "kept": len(kept), "from": str(source)}}
    write_folder(out, queries=records, qrels=[(q, doc) for q in kept for doc in qrels[q]],
                 candidates=candidates, report=report, split=str(report.get("split") or "synthetic"))


def row(name: str, rewards: np.ndarray, raw: np.ndarray, ok: np.ndarray, adds: np.ndarray) -> str:
    gain = rewards - raw[:, None]
    uniform = (rewards.max(1) - rewards.min(1) < 1e-9).mean()
    added = gain[adds].mean() if adds.any() else float("nan")
    wins = (gain[adds] > 1e-9).mean() if adds.any() else float("nan")
    return (f"| {name} | {len(raw)} | {raw.mean():.4f} | {gain.mean():+.4f} | {(rewards.max(1) - raw).mean():+.4f} | "
            f"{uniform:.2f} | {ok.mean():.2f} | {adds.mean():.2f} | {added:+.4f} | {wins:.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--collection", default="nfcorpus", help="the corpus searched (a folder under the data)")
    parser.add_argument("--labels", type=Path, help="a label folder from `deepretrieval synthesize` (default: --split)")
    parser.add_argument("--split", default="train")
    parser.add_argument("--framework", choices=("llamaindex", "haystack", "bm25s"), default="haystack")
    parser.add_argument("--framing", choices=("replace", "expand", "fuse"), default="fuse")
    parser.add_argument("--query-weight", type=int, default=3)
    parser.add_argument("--limit", type=int, default=200, help="queries (a sample of --seed; 0: all)")
    parser.add_argument("--samples", type=int, default=8, help="answers per group (the training num_generations)")
    parser.add_argument("--temperature", type=float, default=0.8, help="the training temperature")
    parser.add_argument("--max-new-tokens", type=int, default=128, help="the training max_completion_length")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep-to", type=Path, help="with --labels: write the pairs the filter keeps to this folder")
    args = parser.parse_args()
    if args.keep_to is not None and args.labels is None:
        parser.error("--keep-to filters a label folder: pass --labels too")

    path = DATA / args.collection
    if args.labels is not None:
        rows, report = read_rows(args.labels)
        texts = {row["query_id"]: row["query"] for row in rows}
        qrels = {row["query_id"]: row["qrels"] for row in rows}
    else:
        collection = load_beir(path, args.split, drop_unknown_docs=True)
        texts, qrels = collection.judged_queries, collection.qrels
    qids = sorted(texts)
    if args.limit:
        qids = random.Random(args.seed).sample(qids, min(args.limit, len(qids)))
    queries = [texts[q] for q in qids]
    judged = [qrels[q] for q in qids]
    search = build_search(RetrieverConfig(framework=args.framework, kind="bm25"), str(path))
    reward = RetrievalReward(search=search, task="retrieval", framing=args.framing, query_weight=args.query_weight)
    rewriter = LocalRewriter(task="retrieval", temperature=args.temperature, max_new_tokens=args.max_new_tokens,
                             batch_size=args.batch_size)
    n, size = len(qids), args.samples
    import torch

    torch.manual_seed(args.seed)
    start = time.perf_counter()
    answers = rewriter._complete([rewriter.task.messages(q) for q in queries for _ in range(2 * size)])
    seconds = time.perf_counter() - start
    repeated = [q for q in queries for _ in range(2 * size)]
    rewards = np.array(reward(answers, repeated, [j for j in judged for _ in range(2 * size)])).reshape(n, 2, size)
    logged: dict[str, float] = {}
    raw = np.array(reward(["<answer>" + json.dumps({"query": q}) + "</answer>" for q in queries], queries, judged,
                          log_metric=logged.__setitem__))
    assert abs(logged["retrieval/raw_query_reward"] - raw.mean()) < 1e-9  # the echo searches as the raw query does
    parsed = [rewriter.task.parse(a) for a in answers]
    ok = np.array([p.ok for p in parsed]).reshape(n, 2, size)
    adds = np.array([p.ok and bool(new_words(q, p.query)) for p, q in zip(parsed, repeated)]).reshape(n, 2, size)

    source = str(args.labels) if args.labels is not None else f"{args.collection} {args.split}"
    print(f"{source}: {n} queries, {args.framework} BM25, framing {args.framing} x{args.query_weight}, "
          f"temperature {args.temperature}, 2 groups of {size}; generation {seconds:.0f} s "
          f"({seconds / len(answers):.2f} s an answer)")
    print(machine_line())
    print("| queries | n | raw | mean − raw | best − raw | uniform | parsable | adds a word | gain of adding | "
          "adding beats raw |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    first, second = rewards[:, 0], rewards[:, 1]
    beats = first - raw[:, None] > 1e-9
    print(row("all, first group", first, raw, ok[:, 0], adds[:, 0]))
    print(row("all, second group", second, raw, ok[:, 1], adds[:, 1]))
    for name, keep in (("first group's best beats raw", beats.any(1)), ("two of the first group beat raw",
                                                                         beats.sum(1) >= 2)):
        if keep.any():
            print(row(f"kept where {name}: second group", second[keep], raw[keep], ok[keep, 1], adds[keep, 1]))
        if (~keep).any():
            print(row("dropped there: second group", second[~keep], raw[~keep], ok[~keep, 1], adds[~keep, 1]))
    if args.keep_to is not None:
        kept = [q for q, keep in zip(qids, beats.any(1)) if keep]
        rule = {"rule": f"the best of {size} untrained answers beats the raw pseudo-query", "framework": args.framework,
                "framing": args.framing, "query_weight": args.query_weight, "temperature": args.temperature,
                "seed": args.seed}
        write_kept(args.labels, report, args.keep_to, {q: qrels[q] for q in qids}, kept, rule)
        print(f"kept {len(kept)} of {n} pairs: {args.keep_to}")


if __name__ == "__main__":
    main()
