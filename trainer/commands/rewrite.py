"""Rewrite queries with a local model (the embedded SmolLM2 by default) and an optional LoRA adapter.
Prints the original and the rewritten query, or the fallback and its reason."""

from __future__ import annotations

import argparse

from ..rewriting.tasks import TASKS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("queries", nargs="+", metavar="QUERY", help="the query text(s) to rewrite")
    parser.add_argument("--task", default="retrieval", choices=sorted(TASKS), help="prompt kind (default: retrieval)")
    parser.add_argument("--adapter", help="a peft LoRA adapter folder (a training run's adapter/)")
    parser.add_argument("--model", help="a transformers model id or path (default: the embedded SmolLM2)")
    parser.add_argument("--max-new-tokens", type=int, default=128, help="generation budget (default: 128)")
    parser.add_argument("--temperature", type=float, default=0.0, help="0 is greedy (default)")
    parser.add_argument("--dtype", choices=("auto", "float32", "bfloat16"),
                        help="model precision (default: auto = bfloat16 where the CPU/GPU has bf16 "
                             "units, float32 elsewhere)")
    parser.add_argument("--show-completion", action="store_true", help="also print the raw model text")


def run(args: argparse.Namespace) -> int:
    from ..rewriting.rewriters import LocalRewriter

    rewriter = LocalRewriter(
        args.model, adapter=args.adapter, task=args.task, max_new_tokens=args.max_new_tokens,
        temperature=args.temperature, dtype=args.dtype or "auto",
    )
    for result in rewriter.rewrite(args.queries):
        print(f"original:  {result.original}")
        if result.fell_back:
            print(f"rewritten: (fallback to the original) reason: {result.reason}")
        else:
            print(f"rewritten: {result.query}")
        if args.show_completion:
            print(f"completion: {result.completion!r}")
        print(f"latency:   {result.latency_s:.2f}s")
    return 0
