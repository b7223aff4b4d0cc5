"""The ``deepretrieval`` command.

Each subcommand lives beside the code it drives, as a pair of functions ``add_arguments(parser)`` and
``run(args) -> int`` in the module named in :data:`COMMANDS`. Modules import heavy libraries only inside ``run``.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
import warnings

from .common.errors import TrainingError

# name -> (module holding add_arguments/run, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "prepare-model": ("deepretrieval_trainer.commands.prepare_model", "convert the embedded model into a plain checkpoint"),
    "rewrite": ("deepretrieval_trainer.commands.rewrite", "rewrite one or more queries with the local model"),
    "literature-data": ("deepretrieval_trainer.commands.literature_data", "convert or check a literature-search dataset (JSONL)"),
    "serve": ("deepretrieval_trainer.commands.serve", "serve a trained adapter with vLLM (LoRA by model name)"),
    "eval": ("deepretrieval_trainer.commands.eval", "compare raw, base, HyDE, adapter and served rewrites on a collection"),
    "train": ("deepretrieval_trainer.commands.train", "train a query rewriter (LoRA, GRPO) against your retriever"),
    "synthesize": ("deepretrieval_trainer.commands.synthesize", "make training labels from your index's own documents (no judgments)"),
    "demo": ("deepretrieval_trainer.commands.demo", "index a collection, train an adapter for a bounded time, compare before/after"),
}


# Library notices a user of the command cannot act on, hidden for the command's duration (never at import, so library
# users still see them): the deprecation FutureWarnings transformers, TRL and peft raise about arguments they pass
# among themselves (TRL's GRPOConfig sets transformers' deprecated `gradient_checkpointing`), and torch's note that
# pinned memory is unused on a machine without an accelerator (the HF trainer's DataLoader asks for it). Every other
# warning still shows.
QUIET_WARNINGS: tuple[dict, ...] = (
    {"category": FutureWarning, "module": r"(transformers|trl|peft|accelerate)(\.|$)"},
    {"category": UserWarning, "message": r"'pin_memory' argument is set as true but no accelerator is found"},
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="deepretrieval",
        description="Query rewriters trained by RL against your own LlamaIndex or Haystack retriever.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (module_name, help_text) in COMMANDS.items():
        module = importlib.import_module(module_name)
        sub = subparsers.add_parser(name, help=help_text, description=(module.__doc__ or help_text).strip())
        module.add_arguments(sub)
        sub.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    level = logging.DEBUG if args.verbose else logging.INFO
    handler = logging.StreamHandler()
    handler.setLevel(level)  # bm25s sets its own logger to DEBUG at import: its debug lines show only with -v
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", handlers=[handler])
    if not args.verbose:
        # transformers' per-model "Loading weights" bars (read when transformers is imported, which happens later)
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    try:
        with warnings.catch_warnings():
            for rule in QUIET_WARNINGS:
                warnings.filterwarnings("ignore", **rule)
            return int(args._run(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a file or folder the command could not use (permissions, a read-only disk): it is named
        logging.getLogger(__name__).debug("the failing call", exc_info=True)
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except TrainingError as exc:  # the message names the cause and the checkpoint --resume continues from
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
