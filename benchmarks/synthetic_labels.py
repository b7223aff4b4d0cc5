"""Labels without judgments: which way of writing pseudo-queries makes the better training labels?

For one collection searched through one framework's BM25 (the retriever the reward searches), and each method
(``crop``: a span of the document with its rarest words removed, no model; ``doc2query``: the embedded model, in-process,
bf16 where the CPU has it), this synthesizes labels from a uniform sample of the collection's documents
(deepretrieval_trainer.training.synthetic) and measures:
- throughput: pseudo-queries written per minute (the writing alone; reading and searching are timed apart),
- the share of written pairs the filter keeps (source document within the rank window, near-duplicates dropped),
- the rank distribution of the source documents under the raw pseudo-queries.
With ``--train`` it then trains an adapter on each method's labels (the flags and defaults of
benchmarks/learning_curve.py) and evaluates raw, RM3 (prf), the untrained base model and the trained adapter on the
collection's REAL judged queries (``--eval-split``: dev where the collection has one, else test), with paired tests.
Not a test: a measurement, run by hand.

    python benchmarks/synthetic_labels.py --collection scifact --framework llamaindex --methods crop doc2query \
        --sample 500 --out /tmp/synth
    python benchmarks/synthetic_labels.py --collection scifact --framework haystack --methods crop doc2query \
        --sample 2000 --train --steps 200 --max-minutes 40 --eval-queries 0 --torch-threads 1 --out /tmp/synth-train
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import time
from pathlib import Path

from shared_data import DATA, machine_line
from learning_curve import add_training_arguments, build_search, evaluate_run, print_result, train_config

METHODS = ("crop", "doc2query")


def synthesize_one(method: str, search, args: argparse.Namespace) -> tuple[dict, Path]:
    """Labels by ``method`` into OUT/labels-<collection>-<framework>-<method> (made again), and their figures."""
    from deepretrieval_trainer.common.errors import DataError
    from deepretrieval_trainer.training.synthesis_config import SynthesisConfig
    from deepretrieval_trainer.training.label_folder import read_report
    from deepretrieval_trainer.training.synthetic import synthesize

    out = Path(args.out) / f"labels-{args.collection}-{args.framework}-{method}"
    if out.exists():
        shutil.rmtree(out)
    config = SynthesisConfig(method=method, sample=args.sample, queries_per_document=args.queries_per_document,
                             min_rank=args.min_rank, max_rank=args.max_rank, seed=args.seed,
                             batch_size=args.batch_size, temperature=args.synthesis_temperature,
                             max_new_tokens=args.synthesis_max_new_tokens, headroom=args.headroom)
    start = time.perf_counter()
    try:
        labels = synthesize(search, f"beir:{DATA / args.collection}", config, out=out, dtype=args.dtype,
                            progress=not args.quiet)
        r, examples = labels.report, labels.examples(5)
    except DataError as exc:  # no pair kept: the report is still written, and is the measurement
        print(f"\n{method}: {exc}")
        r, examples = read_report(out), []
    wall = time.perf_counter() - start
    figures = {
        "method": method, "collection": args.collection, "framework": args.framework, "sampled":
        r["documents"]["sampled"], "written": r["written"], "not_written": r["not_written"], "kept": r["kept"],
        "kept_share": r["kept_share"], "dropped": r["dropped"], "rank_distribution": r["rank_distribution"],
        "queries_per_minute": r["timings"]["queries_per_minute"], "write_s": r["timings"]["write_s"],
        "search_s": r["timings"]["search_s"], "wall_s": round(wall, 2), "model": r["method"].get("model"),
        "dtype": r["method"].get("dtype"), "examples": examples, "labels": str(out),
    }
    return figures, out


def print_figures(f: dict) -> None:
    model = f" ({f['model']}, {f['dtype']})" if f["model"] else ""
    print(f"\n== {f['method']}{model} on {f['collection']} via {f['framework']}: {f['written']} pseudo-queries from "
          f"{f['sampled']} documents, {f['queries_per_minute']:.0f}/min written ({f['write_s']:.1f} s), searched "
          f"in {f['search_s']:.1f} s")
    print(f"kept {f['kept']} ({100 * f['kept_share']:.1f}%); dropped {f['dropped']}; not written {f['not_written']}")
    print("rank of the source document under the raw pseudo-query: "
          + ", ".join(f"{label}: {count}" for label, count in f["rank_distribution"].items()))
    for line in f["examples"]:
        print(f"  {line}")


def train_one(method: str, labels: Path, search, args: argparse.Namespace) -> dict:
    """An adapter trained on the labels in ``labels``, evaluated on the collection's judged queries."""
    from deepretrieval_trainer.training.retrieval import train
    from deepretrieval_trainer.training.synthetic_run import training_labels

    run_dir = Path(args.out) / f"run-{args.collection}-{args.framework}-{method}"
    config = train_config(args, run_dir, labels=str(labels))
    rows = training_labels(config, search, progress=not args.quiet)  # synthesis.json copied into the run folder
    start = time.perf_counter()
    adapter = train(search, rows, config)
    train_s = time.perf_counter() - start
    name = f"{args.collection}-{args.framework}-{method}"
    return {"collection": f"{args.collection} ({method} labels)", "framework": args.framework,
            "adapter": str(adapter), "train_wall_s": train_s,
            **evaluate_run(args.collection, args.framework, search, config, adapter, args, split=args.eval_split,
                           name=name)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--collection", default="scifact")
    parser.add_argument("--framework", choices=("llamaindex", "haystack", "bm25s"), default="llamaindex")
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument("--sample", type=int, default=500, help="documents sampled per method")
    parser.add_argument("--queries-per-document", type=int, default=1)
    parser.add_argument("--min-rank", type=int, default=2)
    parser.add_argument("--max-rank", type=int, default=100)
    parser.add_argument("--headroom", choices=("none", "prf"), default="none",
                        help="prf: keep only pairs where RM3 ranks the source document higher than the raw query")
    parser.add_argument("--batch-size", type=int, default=16, help="doc2query: documents per generation batch")
    parser.add_argument("--synthesis-temperature", type=float, default=0.0, help="doc2query: 0 is greedy")
    parser.add_argument("--synthesis-max-new-tokens", type=int, default=40)
    parser.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16"))
    parser.add_argument("--train", action="store_true", help="also train on each method's labels and evaluate")
    parser.add_argument("--eval-split", default=None, help="the real judged split to evaluate on (default: dev, "
                                                            "else test)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument("--out", default="/tmp/deepretrieval-synthetic-labels")
    add_training_arguments(parser)
    args = parser.parse_args()
    args.eval_queries = args.eval_queries or None
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.torch_threads:
        import torch

        torch.set_num_threads(args.torch_threads)
    if args.eval_split is None:
        args.eval_split = "dev" if (DATA / args.collection / "qrels" / "dev.tsv").is_file() else "test"
    Path(args.out).mkdir(parents=True, exist_ok=True)
    search = build_search(args.framework, DATA / args.collection)
    results = {"machine": machine_line(), "synthesis": [], "training": []}
    for method in args.methods:
        figures, labels = synthesize_one(method, search, args)
        figures["machine"] = machine_line()
        print_figures(figures)
        results["synthesis"].append(figures)
        if args.train and figures["kept"]:
            result = train_one(method, labels, search, args)
            print_result(result)
            results["training"].append(result)
        (Path(args.out) / "results.json").write_text(json.dumps(results, indent=1, default=str))
    print(f"\n{machine_line()}; results: {Path(args.out) / 'results.json'}")


if __name__ == "__main__":
    main()
