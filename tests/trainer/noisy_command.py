"""A command for tests/trainer/test_cli.py that triggers the real library warnings a demo run used to print."""

from __future__ import annotations

import argparse
import warnings


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True)


def run(args: argparse.Namespace) -> int:
    import torch
    from transformers import TrainingArguments

    # transformers' FutureWarning about its deprecated `gradient_checkpointing` (what TRL's GRPOConfig passes)
    TrainingArguments(output_dir=args.out, gradient_checkpointing=False, report_to="none")
    # torch's UserWarning: the HF trainer's DataLoader asks for pinned memory on a machine without an accelerator
    if not torch.accelerator.is_available():
        list(torch.utils.data.DataLoader([1, 2], pin_memory=True))
    warnings.warn("a warning of our own still shows", UserWarning)
    return 0
