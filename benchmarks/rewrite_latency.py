"""Rewrite throughput and latency: a vLLM server vs the in-process transformers backend, same model and adapter.

For each concurrency level C: the vLLM path sends C requests at a time (asyncio, one connection pool); the
in-process path rewrites C queries per ``generate`` call (batch_size=C, its best case: LocalRewriter serializes
concurrent callers). Per-query latency is the time from sending a query until its rewrite is back. Queries are the
ADI test queries, repeated as needed. Prints a table (and --json writes the figures).

    python benchmarks/rewrite_latency.py --adapter RUN_DIR_OR_ADAPTER [--base-url URL --name NAME]

Without --base-url the script starts ``vllm serve`` itself (deepretrieval_trainer.rewriting.serve) and stops it at the end.
Without --adapter it makes a peft LoRA adapter (r=8, attention projections, identity initialization) in a temp dir.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from shared_data import DATA, machine_line

ROOT = Path(__file__).resolve().parents[1]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def summary(backend: str, concurrency: int, latencies: list[float], wall: float, fell_back: int) -> dict:
    return {"backend": backend, "concurrency": concurrency, "queries": len(latencies),
            "rewrites_per_s": len(latencies) / wall, "p50_s": statistics.median(latencies),
            "p95_s": percentile(latencies, 0.95), "wall_s": wall, "fell_back": fell_back}


async def run_served(rewriter, queries: list[str], concurrency: int) -> tuple[list[float], float, int]:
    gate = asyncio.Semaphore(concurrency)
    latencies: list[float] = []
    fell_back = 0

    async def one(query: str) -> None:
        nonlocal fell_back
        async with gate:
            start = time.perf_counter()
            result = (await rewriter.arewrite([query]))[0]
            latencies.append(time.perf_counter() - start)
            fell_back += result.fell_back

    start = time.perf_counter()
    await asyncio.gather(*(one(q) for q in queries))
    return latencies, time.perf_counter() - start, fell_back


def run_local(rewriter, queries: list[str], concurrency: int) -> tuple[list[float], float, int]:
    latencies: list[float] = []
    fell_back = 0
    start = time.perf_counter()
    for i in range(0, len(queries), concurrency):
        batch_start = time.perf_counter()
        results = rewriter.rewrite(queries[i : i + concurrency])
        latencies.extend([time.perf_counter() - batch_start] * len(results))
        fell_back += sum(r.fell_back for r in results)
    return latencies, time.perf_counter() - start, fell_back


def make_adapter(folder: Path) -> Path:
    sys.path.insert(0, str(ROOT))
    from tests.vllm_fixtures import make_peft_adapter

    return make_peft_adapter(folder)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--adapter", help="run folder or peft adapter (default: a fresh identity LoRA adapter)")
    parser.add_argument("--base-url", help="an already running server (default: start one)")
    parser.add_argument("--name", default="deepretrieval", help="the served adapter name")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--queries", type=int, nargs="+", default=[8, 64],
                        help="queries per concurrency level (default: 8 at C=1, 64 at C=32)")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--backends", nargs="+", default=["vllm", "local"], choices=["vllm", "local"])
    parser.add_argument("--dtypes", nargs="+", default=["bfloat16", "float32"], choices=["bfloat16", "float32"],
                        help="precisions to compare, each on both backends (default: bfloat16 float32)")
    parser.add_argument("--binds", nargs="+", default=["all"],
                        help="vLLM CPU core binding(s) to compare: 'all' (every core for the engine, what "
                             "deepretrieval serve sets) or 'auto' (vLLM's own: one core reserved for its scheduler)")
    parser.add_argument("--data", default=str(DATA / "adi"), help="a BEIR collection whose test queries are rewritten")
    parser.add_argument("--json", help="write the figures to this file")
    return parser.parse_args()


def run_vllm(args, adapter: Path, pool: list[str], dtype: str, bind: str) -> list[dict]:
    from deepretrieval_trainer.rewriting.openai_compat import OpenAIRewriter
    from deepretrieval_trainer.rewriting.serve import ServerConfig, VLLMServer

    rows, server, base_url = [], None, args.base_url
    if base_url is None:
        if bind == "all":
            os.environ.pop("VLLM_CPU_OMP_THREADS_BIND", None)  # deepretrieval serve's default: every allowed core
        else:
            os.environ["VLLM_CPU_OMP_THREADS_BIND"] = bind
        server = VLLMServer(ServerConfig(adapters={args.name: adapter}, port=8077, dtype=dtype)).start()
        print(f"vLLM ({dtype}, bind {bind}) started in {server.startup_s:.0f} s", file=sys.stderr)
        base_url = server.base_url
    try:
        for concurrency, count in zip(args.concurrency, args.queries, strict=True):
            queries = (pool * (count // len(pool) + 1))[:count]
            rewriter = OpenAIRewriter(args.name, base_url=base_url, max_tokens=args.max_tokens,
                                      max_concurrency=concurrency, timeout=600)
            asyncio.run(run_served(rewriter, queries[:2], concurrency))  # warm-up (first request is slow)
            row = summary(f"vllm {dtype} bind={bind}", concurrency,
                          *asyncio.run(run_served(rewriter, queries, concurrency)))
            rows.append(row)
            print(row, file=sys.stderr)
    finally:
        if server is not None:
            server.stop()
    return rows


def run_in_process(args, adapter: Path, pool: list[str], dtype: str) -> list[dict]:
    from deepretrieval_trainer.rewriting.rewriters import LocalRewriter

    rows = []
    local = LocalRewriter(adapter=adapter, max_new_tokens=args.max_tokens, batch_size=max(args.concurrency),
                          dtype=dtype)
    local.load()
    local.rewrite(pool[:2])  # warm-up
    for concurrency, count in zip(args.concurrency, args.queries, strict=True):
        local.batch_size = concurrency
        queries = (pool * (count // len(pool) + 1))[:count]
        rows.append(summary(f"in-process {dtype}", concurrency, *run_local(local, queries, concurrency)))
        print(rows[-1], file=sys.stderr)
    return rows


def main() -> int:
    args = parse_args()
    from deepretrieval_trainer.retrieval.data import load_beir
    from deepretrieval_trainer.rewriting.serve import find_adapter

    if len(args.queries) != len(args.concurrency):
        raise SystemExit("give one --queries count per --concurrency level")
    pool = list(load_beir(args.data, "test").queries.values())
    adapter = find_adapter(args.adapter) if args.adapter else make_adapter(Path(tempfile.mkdtemp()) / "adapter")
    rows = []
    for dtype in args.dtypes:
        if "vllm" in args.backends:
            for bind in args.binds:
                rows += run_vllm(args, adapter, pool, dtype, bind)
        if "local" in args.backends:
            rows += run_in_process(args, adapter, pool, dtype)
    print(machine_line())
    print("| backend | concurrency | queries | rewrites/s | p50 s | p95 s | fell back |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['backend']} | {r['concurrency']} | {r['queries']} | {r['rewrites_per_s']:.2f} | "
              f"{r['p50_s']:.2f} | {r['p95_s']:.2f} | {r['fell_back']} |")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
