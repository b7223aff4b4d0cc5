"""Literature search benchmark: the embedded model trained against the embedded Boolean (FTS5) engine.

NFCorpus train -> dev (topic = query text), MEDLINE (30 topics) as a zero-shot check. For each of raw query,
untrained base model and trained adapter it prints Recall@100, Recall@1000 and the format-valid rate (a
well-formed answer whose query the Boolean parser accepts), and the learning curve of the training run.

    python benchmarks/literature.py --steps 0                     # raw + base model only (no training)
    python benchmarks/literature.py --steps 40 --dev-queries 100  # the figures in docs/experiments/literature.md

Malformed Boolean queries get no results (recall 0); a rewrite that fails to parse falls back to the raw query,
as deployment does. Results go to ``--out`` (results.json, and the training run folder).
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import sys
import time
from pathlib import Path

from shared_data import DATA

from deepretrieval_trainer.literature.boolean import BooleanQueryError
from deepretrieval_trainer.literature.dataset import from_collection, training_rows
from deepretrieval_trainer.literature.fts5 import FTS5Search
from deepretrieval_trainer.retrieval.data import load_beir
from deepretrieval_trainer.retrieval.metrics import recall_at_k

logger = logging.getLogger("benchmarks.literature")


def evaluate(engine: FTS5Search, examples, texts: list[str], valid: list[bool]) -> dict[str, float]:
    results = engine.search_each(texts, 1000)
    rankings = [r if not isinstance(r, BooleanQueryError) else [] for r in results]
    boolean_ok = [not isinstance(r, BooleanQueryError) for r in results]
    n = len(examples)
    return {
        "recall@100": sum(recall_at_k(r, e.qrels, 100) for r, e in zip(rankings, examples, strict=True)) / n,
        "recall@1000": sum(recall_at_k(r, e.qrels, 1000) for r, e in zip(rankings, examples, strict=True)) / n,
        "format_valid": sum(v and b for v, b in zip(valid, boolean_ok, strict=True)) / n,
        "boolean_valid": sum(boolean_ok) / n,
        "queries": n,
    }


def rewrite_condition(engine, examples, adapter: str | None, max_new_tokens: int) -> tuple[dict, list[dict]]:
    from deepretrieval_trainer.rewriting.rewriters import LocalRewriter

    rewriter = LocalRewriter(adapter=adapter, task="literature", max_new_tokens=max_new_tokens, batch_size=8)
    start = time.perf_counter()
    results = rewriter.rewrite([e.query for e in examples])
    seconds = time.perf_counter() - start
    texts = [e.fields["topic"] if r.fell_back else r.query for r, e in zip(results, examples, strict=True)]
    figures = evaluate(engine, examples, texts, [not r.fell_back for r in results])
    figures["rewrite_s_per_query"] = seconds / len(examples)
    samples = [{"topic": e.fields["topic"], "rewrite": r.query, "fell_back": r.fell_back}
               for r, e in zip(results[:5], examples[:5], strict=True)]
    return figures, samples


def learning_curve(run_dir: Path) -> dict:
    metrics_file = run_dir / "metrics.jsonl"
    if not metrics_file.is_file():
        return {}
    rows = [json.loads(line) for line in metrics_file.read_text().splitlines() if line.strip()]
    reward_key = next((k for k in ("reward", "train/reward") if rows and k in rows[0]), None)
    valid_key = next((k for k in rows[0] if "valid_rate" in k), None) if rows else None
    rewards = [r.get(reward_key) for r in rows if reward_key and r.get(reward_key) is not None]
    fifth = max(len(rewards) // 5, 1)
    return {
        "steps": len(rows),
        "reward_first_fifth": sum(rewards[:fifth]) / fifth if rewards else None,
        "reward_last_fifth": sum(rewards[-fifth:]) / fifth if rewards else None,
        "reward_per_step": rewards,
        "format_valid_per_step": [r.get(valid_key) for r in rows] if valid_key else [],
        "curve_png": str(run_dir / "reward_curve.png"),
    }


def train(engine, train_examples, args) -> Path:
    from deepretrieval_trainer.training.config import TrainConfig
    from deepretrieval_trainer.training.retrieval import train as grpo_train

    config = TrainConfig(task="literature", run_dir=str(args.out / "run"), max_steps=args.steps,
                         save_steps=max(args.steps, 1), prompts_per_step=args.prompts_per_step,
                         num_generations=args.num_generations, max_completion_length=args.max_new_tokens,
                         learning_rate=args.learning_rate, reward_k=args.reward_k, seed=args.seed,
                         max_queries=args.train_queries, max_minutes=args.max_minutes,
                         torch_threads=args.torch_threads)
    return Path(grpo_train(engine, training_rows(train_examples), config))


def table(results: dict) -> str:
    lines = ["| collection | condition | Recall@100 | Recall@1000 | format-valid | queries |", "|---|---|---|---|---|---|"]
    for collection, conditions in results.items():
        for name, f in conditions.items():
            lines.append(f"| {collection} | {name} | {f['recall@100']:.3f} | {f['recall@1000']:.3f} | "
                         f"{f['format_valid']:.0%} | {f['queries']} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=40, help="GRPO steps (0: no training)")
    parser.add_argument("--dev-queries", type=int, default=100, help="NFCorpus dev topics rewritten by the models")
    parser.add_argument("--train-queries", type=int, default=None, help="limit the NFCorpus train topics")
    parser.add_argument("--prompts-per-step", type=int, default=2)
    parser.add_argument("--num-generations", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=96)
    parser.add_argument("--learning-rate", type=float, default=5e-5)
    parser.add_argument("--reward-k", type=int, default=1000, help="recall cutoff of the reward (corpus: 3,395 docs)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-minutes", type=float, default=None, help="stop training after this long")
    parser.add_argument("--torch-threads", type=int, default=None, help="torch threads (1 on a busy machine)")
    parser.add_argument("--adapter", help="evaluate this adapter instead of training one")
    parser.add_argument("--out", type=Path, default=Path("runs/literature-benchmark"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("deepretrieval_trainer.rewriting.rewriters", "httpx"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    args.out.mkdir(parents=True, exist_ok=True)

    nf_engine = FTS5Search.from_path(DATA / "nfcorpus", malformed="empty")
    med_engine = FTS5Search.from_path(DATA / "medline", malformed="empty")
    nf_train = from_collection(load_beir(DATA / "nfcorpus", "train", drop_unknown_docs=True))
    nf_dev_all = from_collection(load_beir(DATA / "nfcorpus", "dev"))
    nf_dev = random.Random(args.seed).sample(nf_dev_all, min(args.dev_queries, len(nf_dev_all)))
    medline = from_collection(load_beir(DATA / "medline", "test"))
    suites = {"nfcorpus-dev": (nf_engine, nf_dev), "medline (zero-shot)": (med_engine, medline)}

    results: dict[str, dict] = {name: {} for name in suites}
    results["nfcorpus-dev (all 324, raw only)"] = {}
    raw = [e.fields["topic"] for e in nf_dev_all]
    results["nfcorpus-dev (all 324, raw only)"]["raw query"] = evaluate(nf_engine, nf_dev_all, raw, [True] * len(raw))
    samples: dict[str, list] = {}
    for name, (engine, examples) in suites.items():
        texts = [e.fields["topic"] for e in examples]
        results[name]["raw query"] = evaluate(engine, examples, texts, [True] * len(texts))
        results[name]["base model"], samples[f"{name}/base"] = rewrite_condition(engine, examples, None,
                                                                                 args.max_new_tokens)
    print(table(results), flush=True)

    adapter, curve, train_s = args.adapter, {}, None
    if adapter is None and args.steps > 0:
        start = time.perf_counter()
        adapter = str(train(nf_engine, nf_train, args))
        train_s = time.perf_counter() - start
        curve = learning_curve(args.out / "run")
    if adapter:
        for name, (engine, examples) in suites.items():
            results[name]["trained adapter"], samples[f"{name}/adapter"] = rewrite_condition(
                engine, examples, adapter, args.max_new_tokens)
    report = {"command": " ".join(sys.argv), "results": results, "learning_curve": curve, "train_s": train_s,
              "adapter": adapter, "samples": samples}
    (args.out / "results.json").write_text(json.dumps(report, indent=2))
    print(table(results))
    if curve:
        print(f"training: {curve['steps']} steps in {train_s:.0f}s; mean reward first fifth "
              f"{curve['reward_first_fifth']}, last fifth {curve['reward_last_fifth']}; curve: {curve['curve_png']}")
    print(f"details: {args.out / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
