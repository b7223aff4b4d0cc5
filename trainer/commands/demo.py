"""The whole story in one command, on the embedded defaults (SmolLM2-135M + LoRA, BM25 through LlamaIndex, CPU):
build a BM25 index over a BEIR collection, train a query-rewriting adapter against it with GRPO for a bounded
time, then evaluate on the dev split: the raw query, RM3 pseudo-relevance feedback through the same retriever (the
free baseline), the untrained model and the trained adapter, and say plainly whether the adapter beat the raw query.
Re-running continues the same run (it resumes from its checkpoint).

The search query is the original query, three times, then the rewrite (``framing: expand``, ``query_weight: 3``):
the user's words keep their weight and the model's terms are added to them (docs/training.md has the figures).
By default training stops after --minutes 10 or --steps 200, whichever comes first, and the evaluation uses the
first 150 judged dev queries (--limit), so the demo takes about 15 minutes on 2 CPU cores. NFCorpus is the
collection where the gain is real (docs/results.md#retrieval-quality): on SciFact the raw query is already strong.

Examples:
  deepretrieval demo --data ../shared/data/nfcorpus
  deepretrieval demo --data scifact          # downloads BEIR's scifact.zip into the cache first (needs internet)
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from .eval import add_retriever_arguments

logger = logging.getLogger(__name__)

# the demo's training recipe on top of TrainConfig's CPU defaults: reward on nDCG@10 (the metric the user is judged
# by, not the task's nDCG@100), and groups whose samples all scored alike left out of the loss; the best NFCorpus
# result measured (docs/experiments/retrieval-recipes.md#does-dropping-uniform-groups-help-on-nfcorpus-the-demo-recipe)
DEMO_RECIPE = {"framing": "expand", "query_weight": 3, "beta": 0.04, "reward_k": 10, "drop_uniform_groups": True}
# queries per generation batch when the demo rewrites its dev queries: decoding on a CPU is bound by per-step
# overhead, so 32 rewrote 2.8x as many untrained NFCorpus queries per second as 8, at the same nDCG@10 within noise
# (docs/experiments/cpu-speed.md#how-does-rewriting-throughput-grow-with-the-generation-batch)
EVAL_BATCH = 32


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("--data", required=True,
                        help="a BEIR-layout collection folder, or a BEIR dataset name to download (e.g. scifact)")
    parser.add_argument("--minutes", type=float, default=10.0, help="training time bound (default: 10)")
    parser.add_argument("--steps", type=int, default=200, help="training step bound (default: 200)")
    parser.add_argument("--limit", type=int, default=150,
                        help="evaluate on the first N judged queries of the eval split (default: 150; 0 = all)")
    parser.add_argument("--train-split", help="qrels split to train on (default: train, else the eval split)")
    parser.add_argument("--eval-split", help="qrels split to evaluate on (default: dev, else test)")
    parser.add_argument("--run-dir", help="run folder (default: <cache>/runs/demo-<collection>); re-running resumes")
    parser.add_argument("--model", help="base model id or path (default: the embedded SmolLM2-135M)")
    add_retriever_arguments(parser)
    parser.add_argument("--dtype", choices=("auto", "float32", "bfloat16"),
                        help="model precision (default: auto = bfloat16 where the CPU/GPU has bf16 "
                             "units, float32 elsewhere)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bars")


def _splits(path: Path, train: str | None, evaluate: str | None) -> tuple[str, str]:
    from ..common.errors import DataError
    from ..retrieval.data import available_splits

    splits = available_splits(path)
    evaluate = evaluate or next((s for s in ("dev", "test") if s in splits), None)
    train = train or ("train" if "train" in splits else evaluate)
    for name, split in (("--eval-split", evaluate), ("--train-split", train)):
        if split not in splits:
            raise DataError(f"{path}: no qrels split for {name} ({split!r}); splits here are {splits}")
    if train == evaluate:
        logger.warning("training and evaluating on the same split (%s): the trained numbers are optimistic", train)
    return train, evaluate


def run(args: argparse.Namespace) -> int:
    from ..common.models import cache_dir
    from ..evaluation.sources import parse_source
    from ..retrieval.beir_download import resolve_collection
    from ..retrieval.data import load_beir
    from ..training.config import TrainConfig
    from ..training.retrieval import train
    from ..training.retrievers import build_search
    from .eval import report_evaluation

    if args.minutes <= 0 or args.steps < 1 or args.limit < 0:
        raise ValueError(f"--minutes {args.minutes}, --steps {args.steps}, --limit {args.limit}: give minutes > 0, "
                         "steps >= 1 and limit >= 0")
    path = resolve_collection(args.data)
    train_split, eval_split = _splits(path, args.train_split, args.eval_split)
    run_dir = Path(args.run_dir) if args.run_dir else cache_dir() / "runs" / f"demo-{path.name}"
    retriever = {"framework": args.framework or "llamaindex", "kind": args.retriever_kind or "bm25",
                 "path": args.retriever_path or ""}
    config = TrainConfig.from_dict({
        "model": args.model, "run_dir": str(run_dir), "resume": (run_dir / "checkpoints").is_dir(),
        "max_steps": args.steps, "max_minutes": args.minutes, "save_steps": 10, "dtype": args.dtype or "auto",
        **DEMO_RECIPE,
        "data": {"path": str(path), "split": train_split, "drop_unknown_docs": True}, "retriever": retriever,
    })
    print(f"collection: {path} (train on {train_split!r}, evaluate on {eval_split!r})\nrun folder: {run_dir}")
    search = build_search(config.retriever, str(path))
    adapter = train(search, load_beir(path, train_split, drop_unknown_docs=True), config)
    collection = load_beir(path, eval_split, drop_unknown_docs=True)
    sources = [parse_source(spec, model=args.model, framing=config.framing, query_weight=config.query_weight,
                            dtype=config.dtype, search=search, batch_size=EVAL_BATCH)
               for spec in ("raw", "prf", "base", f"trained=adapter:{adapter}")]
    retriever_text = f"{config.retriever.framework} {config.retriever.kind}"
    report = report_evaluation(collection, search, sources, run_dir / "eval", retriever=retriever_text,
                               limit=args.limit or None, batch_size=EVAL_BATCH, progress=not args.no_progress)
    print("\n" + verdict(report))
    print(f"adapter: {adapter}\nreward curve: {run_dir / 'reward_curve.png'}\n"
          f"serve it: deepretrieval serve --adapter {adapter}   (see {run_dir / 'README.md'})")
    return 0


def verdict(report) -> str:
    """One plain sentence per baseline: did the trained adapter beat it on nDCG@10, paired over the same queries?"""
    from ..evaluation.evaluate import compare

    trained = report.source("trained")
    lines = []
    for name in ("raw", "prf", "base"):
        c = compare(trained, report.source(name), "ndcg@10")
        significant = c.p_value is not None and c.p_value < 0.05
        outcome = ("beat" if c.mean_delta > 0 and significant else "did NOT beat" if c.mean_delta <= 0
                   else "was above, not significantly,")
        lines.append(f"trained {outcome} {name}: nDCG@10 {c.mean_delta:+.4f} over {report.queries} queries "
                     f"(wins/ties/losses {c.wins}/{c.ties}/{c.losses}, paired t-test p="
                     f"{'-' if c.p_value is None else f'{c.p_value:.3f}'})")
    return "\n".join(lines)
