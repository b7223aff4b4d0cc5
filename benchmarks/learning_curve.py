"""Does GRPO learn? Embedded SmolLM2-135M + LoRA trained against a framework's BM25 retriever, evaluated on dev.

For each (collection, framework): train on the train split through the framework's own BM25 retriever
(LlamaIndex BM25Retriever or Haystack InMemoryBM25Retriever), then score raw queries, the untrained base model's
rewrites and the trained adapter's rewrites on the first ``--eval-queries`` judged dev queries (nDCG@10,
Recall@100). Prints per-run figures (reward first/last fifth, format-valid rate, step-time split) and writes JSON
plus one PNG of the reward curves. Not a test: a measurement, run by hand, recorded in
docs/experiments/retrieval-recipes.md.

    python benchmarks/learning_curve.py --runs scifact:llamaindex scifact:haystack nfcorpus:llamaindex \
        --steps 40 --eval-queries 100 --out /tmp/lc --png docs/img/learning_curve.png

The defaults are TrainConfig's (the CPU recipe that reached >=95% format-valid rewrites: 2 prompts x 8 samples,
128 new tokens, lr 5e-4), framing included: ``replace``, the paper's, where the trained adapter beat the base model
on SciFact dev through both frameworks (both in docs/experiments/retrieval-recipes.md). ``--framing expand`` searches
query + rewrite (the demo's framing).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import time
from pathlib import Path

from shared_data import DATA

DROP_UNKNOWN = {"nfcorpus"}  # its preprocessed corpus lacks 238 train-only documents
PAIRED_METRICS = ("ndcg@10", "recall@100")  # the headline metric, and the one nearest the nDCG@100 training reward


def build_search(framework: str, path: Path):
    """BM25 over the collection through the named framework (the CLI's own builder)."""
    from deepretrieval_trainer.training.config import RetrieverConfig
    from deepretrieval_trainer.training.retrievers import build_search as build

    return build(RetrieverConfig(framework=framework, kind="bm25"), str(path))


def fifth_means(values: list[float]) -> tuple[float, float]:
    n = max(len(values) // 5, 1)
    return sum(values[:n]) / n, sum(values[-n:]) / n


def summarize_training(rows: list[dict]) -> dict:
    def col(key):
        return [r[key] for r in rows if isinstance(r.get(key), (int, float))]

    first, last = fifth_means(col("reward"))
    # rewrite minus raw query, same prompts: does the rewrite (as searched) beat the user's query in training?
    gain = [r["retrieval/rewrite_reward"] - r["retrieval/raw_query_reward"] for r in rows
            if isinstance(r.get("retrieval/rewrite_reward"), (int, float))
            and isinstance(r.get("retrieval/raw_query_reward"), (int, float))]
    gain_first, gain_last = fifth_means(gain) if gain else (float("nan"), float("nan"))
    valid_first, valid_last = fifth_means(col("format/valid_rate"))
    no_new = col("retrieval/no_new_words_rate")  # runs before this metric existed have none
    no_new_first, no_new_last = fifth_means(no_new) if no_new else (float("nan"), float("nan"))
    step = sum(col("step_s")) / max(len(col("step_s")), 1)
    split = {name: sum(col(key)) / max(len(col(key)), 1) for name, key in
             (("generation_s", "time/generation_s"), ("search_s", "search/time_s"),
              ("rewards_s", "time/rewards_s"), ("backward_s", "time/backward_s"))}
    return {"steps": len(rows), "reward_first_fifth": first, "reward_last_fifth": last,
            "valid_first_fifth": valid_first, "valid_last_fifth": valid_last,
            "valid_max": max(col("format/valid_rate"), default=0.0), "gain_over_raw_first_fifth": gain_first,
            "gain_over_raw_last_fifth": gain_last, "no_new_words_first_fifth": no_new_first,
            "no_new_words_last_fifth": no_new_last, "mean_step_s": step, **split,
            "search_share": split["search_s"] / step if step else None}


def run_one(collection: str, framework: str, args: argparse.Namespace) -> dict:
    from deepretrieval_trainer.retrieval.data import load_beir
    from deepretrieval_trainer.training.retrieval import train

    path = DATA / collection
    drop = collection in DROP_UNKNOWN
    search = build_search(framework, path)
    run_dir = Path(args.out) / f"{collection}-{framework}"
    config = train_config(args, run_dir, data={"path": str(path), "split": "train", "drop_unknown_docs": drop})
    start = time.perf_counter()
    adapter = train(search, load_beir(path, "train", drop_unknown_docs=drop), config)
    train_s = time.perf_counter() - start
    return {"collection": collection, "framework": framework, "adapter": str(adapter), "train_wall_s": train_s,
            **evaluate_run(collection, framework, search, config, adapter, args)}


def train_config(args: argparse.Namespace, run_dir: Path, **values):
    """The TrainConfig the flags of :func:`add_training_arguments` say (``--set`` wins over the named flags)."""
    from deepretrieval_trainer.training.config import TrainConfig

    fields = dict(
        run_dir=str(run_dir), resume=True, max_steps=args.steps, max_minutes=args.max_minutes, save_steps=10,
        learning_rate=args.lr, num_generations=args.num_generations, prompts_per_step=args.prompts_per_step,
        max_completion_length=args.max_completion_length, temperature=args.temperature, framing=args.framing,
        query_weight=args.query_weight, beta=args.beta, reward_k=args.reward_k, torch_threads=args.torch_threads,
        seed=args.seed, **values,
    )
    return TrainConfig(**{**fields, **extra_fields(args.set)})


def evaluate_run(collection: str, framework: str, search, config, adapter: Path, args: argparse.Namespace, *,
                 split: str = "dev", name: str | None = None) -> dict:
    """Raw, RM3, the untrained base model and the trained adapter on the judged queries of ``split`` (the first
    ``--eval-queries``), paired tests of trained vs each, and the run's training summary and curve. The report goes
    to ``OUT/eval-<name>`` (default: the collection's name)."""
    from deepretrieval_trainer.evaluation.evaluate import compare, evaluate
    from deepretrieval_trainer.evaluation.sources import parse_source
    from deepretrieval_trainer.retrieval.data import load_beir
    from deepretrieval_trainer.training.run_dir import RunDir

    dev = load_beir(DATA / collection, split, drop_unknown_docs=collection in DROP_UNKNOWN)
    sources = [parse_source(s, task=config.task, feedback_docs=config.feedback_docs, framing=config.framing,
                            query_weight=config.query_weight, search=search, max_new_tokens=args.eval_max_new_tokens,
                            batch_size=args.eval_batch)
               for s in ("raw", "prf", "base", f"trained=adapter:{adapter}")]
    start = time.perf_counter()
    out_dir = Path(args.out) / f"eval-{name or collection}"
    report = evaluate(dev, search, sources, limit=args.eval_queries, out_dir=out_dir, retriever=f"{framework} bm25",
                      progress=False, batch_size=args.eval_batch)
    eval_s = time.perf_counter() - start
    rows = RunDir(config.run_dir).read_metrics()
    trained = report.source("trained")
    versus = {f"{name} {metric}": dataclasses.asdict(compare(trained, report.source(name), metric))
              for name in ("raw", "prf", "base") for metric in PAIRED_METRICS}
    return {
        "eval_wall_s": eval_s, "eval_queries": report.queries, "training": summarize_training(rows),
        "eval": {s.name: {"ndcg@10": s.means["ndcg@10"], "recall@100": s.means["recall@100"],
                          "fallback_rate": s.fallback_rate, "no_new_words_rate": s.no_new_words_rate}
                 for s in report.sources},
        "trained_vs": versus, "config": config.to_dict(), "curve": rows,
    }


def extra_fields(items: list[str]) -> dict:
    """``--set FIELD=VALUE ...`` as TrainConfig keyword arguments (values parsed as YAML)."""
    import yaml

    fields = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--set {item!r}: write FIELD=VALUE, e.g. unusable_reward=raw")
        fields[key.strip()] = yaml.safe_load(value)
    return fields


def print_result(result: dict) -> None:
    t = result["training"]
    print(f"\n== {result['collection']} via {result['framework']}: {t['steps']} steps, "
          f"train {result['train_wall_s'] / 60:.1f} min, eval {result['eval_wall_s'] / 60:.1f} min "
          f"({result['eval_queries']} dev queries)")
    print(f"reward first/last fifth: {t['reward_first_fifth']:.3f} -> {t['reward_last_fifth']:.3f}; format-valid "
          f"{t['valid_first_fifth']:.2f} -> {t['valid_last_fifth']:.2f} (max {t['valid_max']:.2f})")
    print(f"retrieval reward of the rewrite minus the raw query's, first/last fifth: "
          f"{t['gain_over_raw_first_fifth']:+.3f} -> {t['gain_over_raw_last_fifth']:+.3f}")
    if "no_new_words_first_fifth" in t:
        print(f"sampled rewrites adding no word to the query, first/last fifth: "
              f"{t['no_new_words_first_fifth']:.2f} -> {t['no_new_words_last_fifth']:.2f}")
    print(f"step {t['mean_step_s']:.1f}s = generation {t['generation_s']:.1f}s + rewards {t['rewards_s']:.2f}s "
          f"(search {t['search_s']:.2f}s, {100 * (t['search_share'] or 0):.1f}%) + backward {t['backward_s']:.1f}s")
    print(f"{'source':10} {'nDCG@10':>8} {'R@100':>8} {'fallback':>9} {'no-new-words':>13}")
    for name, m in result["eval"].items():
        no_new = m.get("no_new_words_rate")
        print(f"{name:10} {m['ndcg@10']:8.4f} {m['recall@100']:8.4f} {m['fallback_rate']:9.2f} "
              f"{'-' if no_new is None else f'{no_new:.2f}':>13}")
    for name, c in result.get("trained_vs", {}).items():
        p = "-" if c["p_value"] is None else f"{c['p_value']:.3f}"
        print(f"trained vs {name}: wins/ties/losses {c['wins']}/{c['ties']}/{c['losses']}, "
              f"mean delta {c['mean_delta']:+.4f}, paired t-test p={p}")


def add_training_arguments(parser: argparse.ArgumentParser) -> None:
    """The training and evaluation flags (the defaults are TrainConfig's)."""
    from deepretrieval_trainer.training.config import TrainConfig

    defaults = TrainConfig()  # the training defaults are the measured CPU recipe: use them as they are
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--max-minutes", type=float, default=None, help="stop each training run after this long")
    parser.add_argument("--eval-queries", type=int, default=100, help="first N judged dev queries (0: all)")
    parser.add_argument("--eval-max-new-tokens", type=int, default=defaults.max_completion_length)
    parser.add_argument("--eval-batch", type=int, default=32,
                        help="queries per generation batch in the evaluation (default 32: 2.8x the rewrites/s of 8)")
    parser.add_argument("--lr", type=float, default=defaults.learning_rate)
    parser.add_argument("--num-generations", type=int, default=defaults.num_generations)
    parser.add_argument("--prompts-per-step", type=int, default=defaults.prompts_per_step)
    parser.add_argument("--max-completion-length", type=int, default=defaults.max_completion_length)
    parser.add_argument("--temperature", type=float, default=defaults.temperature)
    parser.add_argument("--framing", choices=("replace", "expand", "fuse", "steer"), default=defaults.framing)
    parser.add_argument("--seed", type=int, default=0, help="the training seed (sampling, data order, LoRA init)")
    parser.add_argument("--query-weight", type=int, default=defaults.query_weight,
                        help="expand: times the query is searched beside the rewrite")
    parser.add_argument("--beta", type=float, default=defaults.beta, help="KL coefficient (0: no reference model)")
    parser.add_argument("--reward-k", type=int, default=None)
    parser.add_argument("--set", nargs="*", default=[], metavar="FIELD=VALUE",
                        help="any TrainConfig field (YAML value), e.g. unusable_reward=raw format_invalid=0; "
                             "it wins over the named flag for the same field")
    parser.add_argument("--torch-threads", type=int, default=None,
                        help="torch threads (default: torch's own; 1 when other work shares the cores)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", nargs="+", default=["scifact:llamaindex"], help="COLLECTION:FRAMEWORK ...")
    add_training_arguments(parser)
    parser.add_argument("--out", default="/tmp/deepretrieval-learning-curve")
    parser.add_argument("--png", default=None, help="also write the reward curves of all runs here")
    parser.add_argument("--plot-only", nargs="+", default=None, help="only draw --png from these results.json files")
    args = parser.parse_args()
    if args.plot_only:
        plot(args.png, [Path(f) for f in args.plot_only])
        return
    args.eval_queries = args.eval_queries or None
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    Path(args.out).mkdir(parents=True, exist_ok=True)
    results = []
    for spec in args.runs:
        collection, framework = spec.split(":")
        result = run_one(collection, framework, args)
        print_result(result)
        results.append(result)
        (Path(args.out) / "results.json").write_text(json.dumps(results, indent=1, default=str))
    if args.png:
        plot(args.png, [Path(args.out) / "results.json"])


def plot(png: str, result_files: list[Path]) -> None:
    """One PNG with the reward curves of every run in the given results.json files."""
    from deepretrieval_trainer.training.run_dir import plot_curves

    results = [r for f in result_files for r in json.loads(Path(f).read_text())]
    plot_curves({f"{r['collection']}/{r['framework']}": r["curve"] for r in results}, png)
    print(f"curves: {png}")


if __name__ == "__main__":
    main()
