"""The free baseline: RM3 pseudo-relevance feedback vs raw queries, through `deepretrieval eval` itself.

For each collection and framework this runs ``deepretrieval eval --source raw --source prf... --framework F`` (the
CLI, in-process), then reads the per-query metrics of its ``results.json`` and prints, per source, nDCG@10 and
Recall@100 with the paired t-test against raw on each (the CLI's table has the test on nDCG@10 only).

    python benchmarks/prf_baseline.py                      # SciFact dev + NFCorpus dev, LlamaIndex + Haystack
    python benchmarks/prf_baseline.py --collections scifact --frameworks llamaindex --sources prf prf:docs=3
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from shared_data import DATA

from deepretrieval_trainer.cli import main as cli
from deepretrieval_trainer.evaluation.evaluate import paired_t_test

SOURCES = ["prf", "prf:docs=5", "prf:docs=3", "prf:docs=10,weight=0.7"]


def paired(per_query: dict, name: str, metric: str) -> tuple[float, float | None]:
    ours = [row["metrics"][metric] for row in per_query[name]]
    raw = [row["metrics"][metric] for row in per_query["raw"]]
    return sum(ours) / len(ours), (paired_t_test(ours, raw)[1] if name != "raw" else None)


def run(collection: str, framework: str, sources: list[str], out: Path) -> list[str]:
    argv = ["eval", "--data", str(DATA / collection), "--split", "dev", "--framework", framework, "--out", str(out),
            "--no-progress", "--source", "raw", *[arg for spec in sources for arg in ("--source", spec)]]
    if cli(argv) != 0:
        raise SystemExit(f"deepretrieval {' '.join(argv)} failed")
    results = json.loads((out / "results.json").read_text(encoding="utf-8"))
    rows = []
    for summary in results["summary"]:
        name = summary["name"]
        ndcg, p_ndcg = paired(results["per_query"], name, "ndcg@10")
        recall, p_recall = paired(results["per_query"], name, "recall@100")
        cost = summary["mean_rewrite_latency_s"] * 1000 + summary["mean_search_latency_s"] * 1000
        rows.append(f"| {collection} dev ({results['queries']}) | {framework} | {name} | {ndcg:.4f} | "
                    f"{_p(p_ndcg)} | {recall:.4f} | {_p(p_recall)} | {cost:.1f} |")
    return rows


def _p(value: float | None) -> str:
    return "-" if value is None else f"{value:.3g}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--collections", nargs="+", default=["scifact", "nfcorpus"])
    parser.add_argument("--frameworks", nargs="+", default=["llamaindex", "haystack"])
    parser.add_argument("--sources", nargs="+", default=SOURCES)
    parser.add_argument("--out", default="runs/prf-baseline", help="where each eval writes its folder")
    args = parser.parse_args(argv)
    rows = ["| split | framework | source | nDCG@10 | p vs raw | R@100 | p vs raw | ms/query (first pass + search) |",
            "|---|---|---|---:|---:|---:|---:|---:|"]
    for collection in args.collections:
        for framework in args.frameworks:
            rows += run(collection, framework, args.sources, Path(args.out) / f"{collection}-{framework}")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
