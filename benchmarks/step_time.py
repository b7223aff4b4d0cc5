"""Where a CPU GRPO step goes, and what each precision/sampling setting buys, side by side in ONE run.

Each setting trains the CPU recipe (TrainConfig's defaults: 2 prompts x 8 samples x 128 new tokens, LoRA r16) on
SciFact train through LlamaIndex BM25 for ``--steps`` steps from the same seed, in a fresh child process (so its peak
RSS is its own), one after another. Printed per setting: step time split into generation / reward (search) / the
rest (log-probs, loss, backward, optimizer), peak RSS, samples (completions) trained on per minute, and the
format-valid rate and mean reward over the same steps, so a speed-up bought with learning shows. A setting that
changes the samples per step (``prompts_per_step=4``) is compared by samples per minute, not by step time. The
first step (model load, first sample) is reported apart.

    python benchmarks/step_time.py --settings float32:trl bfloat16:trl bfloat16:merged bfloat16:lean --steps 6

A setting is DTYPE:SAMPLER[:KEY=VALUE,...] with DTYPE a TrainConfig dtype and SAMPLER ``trl`` (TRL samples through
the peft model), ``merged`` (the merged twin through transformers' generate(), generation.py) or ``lean`` (the
merged twin through generation.lean_generate); extra TrainConfig fields may follow, e.g.
``bfloat16:merged:gradient_checkpointing=true``. Not a test: a measurement, recorded in docs/experiments/cpu-speed.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from shared_data import DATA, machine_line


def parse_setting(spec: str) -> dict:
    import yaml

    dtype, sampler, *rest = spec.split(":", 2)
    fields = {"dtype": dtype, "sampler": sampler}
    for item in (rest[0].split(",") if rest else []):
        key, _, value = item.partition("=")
        fields[key] = yaml.safe_load(value)
    return fields


def worker(spec: str, steps: int, out: Path, threads: int | None, collection: str) -> None:
    """Train one setting (in this child process) and write its metrics rows to ``out``."""
    import logging

    from deepretrieval_trainer.retrieval.data import load_beir
    from deepretrieval_trainer.training.config import RetrieverConfig, TrainConfig
    from deepretrieval_trainer.training.retrieval import train
    from deepretrieval_trainer.training.retrievers import build_search
    from deepretrieval_trainer.training.run_dir import RunDir

    logging.basicConfig(level=logging.WARNING)
    path = DATA / collection
    run_dir = out / "run"
    config = TrainConfig(run_dir=str(run_dir), max_steps=steps, save_steps=10_000, seed=0, torch_threads=threads,
                         **parse_setting(spec))
    search = build_search(RetrieverConfig(framework="llamaindex", kind="bm25"), str(path))
    train(search, load_beir(path, "train"), config)
    rows = RunDir(run_dir).read_metrics()
    info = json.loads((run_dir / "run.json").read_text())
    samples = config.prompts_per_step * config.num_generations
    (out / "result.json").write_text(json.dumps({"rows": rows, "precision": info.get("precision"),
                                                 "samples_per_step": samples}, default=float))


def summarize(spec: str, rows: list[dict], rss_kb: int, samples_per_step: int) -> dict:
    def mean(key, part):
        values = [r[key] for r in part if isinstance(r.get(key), (int, float))]
        return sum(values) / len(values) if values else float("nan")

    later = rows[1:] or rows
    step_s = mean("step_s", later)
    return {
        "setting": spec, "steps": len(rows), "first_step_s": rows[0]["step_s"] if rows else None,
        "step_s": step_s, "generation_s": mean("time/generation_s", later),
        "rewards_s": mean("time/rewards_s", later), "rss_after_step1_gb": rows[0].get("peak_rss_gb") if rows else None, "search_s": mean("search/time_s", later),
        "backward_s": mean("time/backward_s", later), "completion_len": mean("completions/mean_length", later),
        "valid_rate": mean("format/valid_rate", rows), "reward": mean("reward", rows),
        "peak_rss_gb": rss_kb / 2**20, "samples_per_step": samples_per_step,
        "samples_per_min": samples_per_step * 60 / step_s,
    }


def run_setting(spec: str, args: argparse.Namespace, root: Path) -> dict:
    out = root / spec.replace(":", "_").replace(",", "_").replace("=", "-")
    out.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, __file__, "--worker", spec, "--steps", str(args.steps), "--out", str(out),
               "--collection", args.collection]
    if args.torch_threads:
        command += ["--torch-threads", str(args.torch_threads)]
    child = subprocess.Popen(command)
    _, status, usage = os.wait4(child.pid, 0)
    if status != 0:
        raise SystemExit(f"setting {spec} failed (status {status})")
    result = json.loads((out / "result.json").read_text())
    return summarize(spec, result["rows"], usage.ru_maxrss, result["samples_per_step"])


def print_table(results: list[dict]) -> None:
    base = results[0]
    print(f"\n{'setting':34} {'step s':>7} {'vs 1st':>6} {'gen s':>6} {'reward s':>8} {'rest s':>6} {'len':>5} "
          f"{'RSS GB':>6} {'valid':>6} {'reward':>7} {'samples/min':>11} {'vs 1st':>6}  (steps 2..N; valid/reward over all N)")
    for r in results:
        print(f"{r['setting']:34} {r['step_s']:7.1f} {base['step_s'] / r['step_s']:5.2f}x {r['generation_s']:6.1f} "
              f"{r['rewards_s']:8.2f} {r['backward_s']:6.1f} {r['completion_len']:5.0f} {r['peak_rss_gb']:6.1f} "
              f"{r['valid_rate']:6.2f} {r['reward']:7.3f} {r['samples_per_min']:11.1f} "
              f"{r['samples_per_min'] / base['samples_per_min']:5.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--settings", nargs="+", default=["float32:trl", "bfloat16:trl", "bfloat16:merged", "bfloat16:lean"])
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--collection", default="scifact")
    parser.add_argument("--torch-threads", type=int, default=None)
    parser.add_argument("--out", default=None, help="folder for the runs and results.json (default: a temp folder)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.steps, Path(args.out), args.torch_threads, args.collection)
        return
    root = Path(args.out or tempfile.mkdtemp(prefix="deepretrieval-step-time-"))
    print(f"{machine_line()}; runs in {root}", flush=True)
    results = []
    for spec in args.settings:
        results.append(run_setting(spec, args, root))
        print(json.dumps(results[-1]), flush=True)
    print_table(results)
    (root / "results.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
