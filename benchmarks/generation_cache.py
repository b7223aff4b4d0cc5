"""In-process greedy rewriting with HF generate's cache settings: the default dynamic KV cache, a static cache, and a
static cache with torch.compile (inductor on CPU), each in its own run of this script (so compile state never leaks).

LocalRewriter (bf16 by default here, batch 8, 128 new tokens, the given adapter merged) rewrites the first N judged
SciFact dev queries; the first batch (load, warm-up, compilation) is timed apart from the rest.

    python benchmarks/generation_cache.py dynamic|static|compile [--queries 32] [--adapter RUN_OR_ADAPTER]

Not a test: a measurement, recorded in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("mode", choices=["dynamic", "static", "compile"])
    parser.add_argument("--queries", type=int, default=32)
    parser.add_argument("--adapter", default=None)
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    import torch

    from deepretrieval_trainer.retrieval.data import load_beir
    from deepretrieval_trainer.rewriting.rewriters import LocalRewriter

    torch.set_num_threads(args.threads)
    queries = list(load_beir(DATA / "scifact", "dev").judged_queries.values())[: args.queries]
    rewriter = LocalRewriter(adapter=args.adapter, batch_size=8, max_new_tokens=128, dtype=args.dtype)
    rewriter.load()
    config = rewriter._model.generation_config
    if args.mode in ("static", "compile"):
        config.cache_implementation = "static"
    if args.mode == "compile":
        from transformers import CompileConfig

        compile_config = CompileConfig(fullgraph=True, dynamic=False)
        compile_config._compile_all_devices = True  # transformers auto-compiles on accelerators only otherwise
        config.compile_config = compile_config
    start = time.perf_counter()
    rewriter.rewrite(queries[:8])
    first = time.perf_counter() - start
    start = time.perf_counter()
    rewriter.rewrite(queries[8:])
    rest = time.perf_counter() - start
    print(f"{args.mode}: first batch {first:.1f} s; then {len(queries) - 8} queries at "
          f"{(len(queries) - 8) / rest:.2f} queries/s")


if __name__ == "__main__":
    main()
