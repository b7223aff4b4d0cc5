"""Evaluate query sources against your retriever on a BEIR-layout collection: raw queries, RM3 pseudo-relevance
feedback through the same retriever (`prf`, the free baseline), the untrained base model (`base`), a HyDE-prompted
baseline (`hyde`), trained adapters (`adapter:PATH`) and served models (`server:URL#MODEL`). Prints nDCG@10, Recall@10/100/1000 and MRR per source with per-query wins/ties/losses
versus raw and a paired t-test, and writes results.json (per query too), results.md and results.png.

With --task sql (text-to-SQL on a Spider-layout folder) the sources are gold, base, adapter:PATH and
server:URL#MODEL, and it prints execution accuracy per database with exact McNemar tests (docs/sql.md).

Examples:
  deepretrieval eval --data ../shared/data/scifact --split dev --source raw --source base \\
      --source trained=adapter:runs/deepretrieval --framework llamaindex
  deepretrieval eval --config train.yaml --source adapter:runs/deepretrieval --limit 50
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

logger = logging.getLogger(__name__)

FRAMEWORKS = ("llamaindex", "haystack", "bm25s")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("--config", help="a training config YAML: its data, retriever, model and task are the "
                                         "defaults here (the flags below override them)")
    parser.add_argument("--data", help="a BEIR-layout collection folder (corpus.jsonl, queries.jsonl, qrels/), or a "
                                       "BEIR dataset name to download into the cache (e.g. scifact)")
    parser.add_argument("--split", default="dev", help="the qrels split to evaluate on (default: dev)")
    parser.add_argument("--source", action="append", dest="sources", metavar="[NAME=]SPEC",
                        help="a query source, repeatable: raw, prf[:docs=N,terms=N,weight=W,stem=english|none], "
                             "base, hyde, adapter:PATH, server:URL#MODEL (default: raw, prf and base; raw is always "
                             "included as the baseline)")
    add_retriever_arguments(parser)
    parser.add_argument("--model", help="base model id or path for base/hyde/adapter (default: the config's, "
                                        "else the embedded SmolLM2)")
    parser.add_argument("--task", help="prompt kind of the rewriters (default: the config's, else retrieval)")
    parser.add_argument("--framing", choices=("replace", "expand", "fuse", "steer"),
                        help="search the rewrite alone (replace), after the query (expand), apart from the query "
                             "with the scores summed (fuse), or as RM3 over the candidate terms it keeps (steer, "
                             "--task steer) (default: the config's, else replace; an adapter's card wins)")
    parser.add_argument("--query-weight", type=int,
                        help="with expand, fuse or steer: how much the query counts beside the rewrite (default: the "
                             "config's, else 1; an adapter's card wins)")
    parser.add_argument("--feedback-docs", type=int,
                        help="show model sources the top N first-pass results of the raw query in the prompt "
                             "(default: the config's, else 0 = query-only; an adapter's run config wins)")
    parser.add_argument("--dtype", choices=("auto", "float32", "bfloat16"),
                        help="model precision (default: the config's, else auto = bfloat16 where the CPU/GPU has bf16 "
                             "units, float32 elsewhere)")
    parser.add_argument("--limit", type=int, help="evaluate only the first N judged queries of the split "
                                                  "(in queries.jsonl order); default: all")
    parser.add_argument("--out", help="output folder (default: runs/eval/<collection>-<split>); rewrites are "
                                      "cached there, so re-runs only search")
    parser.add_argument("--max-new-tokens", type=int, default=128, help="rewrite budget in tokens (default: 128)")
    parser.add_argument("--batch-size", type=int, default=32,
                        help="queries per generation batch (default: 32: 2.8x the queries/s of 8 on a 2-core CPU)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bars")


def add_retriever_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--framework", choices=FRAMEWORKS,
                        help="whose retriever to search (default: the config's, else llamaindex)")
    parser.add_argument("--retriever-kind", choices=("bm25", "storage", "pipeline"),
                        help="bm25 over the collection (default), a persisted LlamaIndex storage folder, "
                             "or a Haystack pipeline YAML")
    parser.add_argument("--retriever-path", help="the storage folder or pipeline YAML (kinds storage/pipeline)")


def _config(args: argparse.Namespace):
    from ..training.config import TrainConfig

    overrides: dict = {"retriever": {}, "data": {}}
    for flag, key in (("framework", "framework"), ("retriever_kind", "kind"), ("retriever_path", "path")):
        if getattr(args, flag, None):
            overrides["retriever"][key] = getattr(args, flag)
    if args.data:
        from ..retrieval.beir_download import resolve_collection

        overrides["data"]["path"] = str(resolve_collection(args.data))
    for flag in ("model", "task", "framing", "feedback_docs", "dtype", "query_weight"):
        if getattr(args, flag, None):
            overrides[flag] = getattr(args, flag)
    if args.config:
        return TrainConfig.from_yaml(args.config, **overrides)
    overrides["retriever"].setdefault("framework", "llamaindex")
    return TrainConfig.from_dict(overrides)


def run(args: argparse.Namespace) -> int:
    from ..evaluation.sources import parse_source
    from ..retrieval.data import load_beir
    from ..training.retrievers import build_search

    if _task(args) == "sql":  # text-to-SQL: execution accuracy on held-out databases (deepretrieval_trainer.sql)
        from ..sql.evaluate import run_from_args

        return run_from_args(args)
    config = _config(args)
    if not config.data.path:
        raise ValueError("no collection: pass --data FOLDER (a BEIR-layout folder) or a --config with data.path")
    collection = load_beir(config.data.path, args.split, drop_unknown_docs=config.data.drop_unknown_docs)
    out = Path(args.out) if args.out else Path("runs") / "eval" / f"{Path(config.data.path).name}-{args.split}"
    logger.info("building the %s %s retriever over %s", config.retriever.framework, config.retriever.kind,
                config.retriever.path or config.data.path)
    search = build_search(config.retriever, config.data.path)
    specs = args.sources or default_sources(search)
    sources = [parse_source(spec, model=config.model, task=config.task, max_new_tokens=args.max_new_tokens,
                            batch_size=args.batch_size, framing=config.framing, search=search,
                            feedback_docs=config.feedback_docs, dtype=config.dtype, query_weight=config.query_weight)
               for spec in specs]
    report_evaluation(collection, search, sources, out, retriever=_describe(config.retriever),
                      limit=args.limit, batch_size=args.batch_size, progress=not args.no_progress)
    return 0


def _task(args: argparse.Namespace) -> str | None:
    if args.task or not args.config:
        return args.task
    from ..training.config import TrainConfig

    return TrainConfig.from_yaml(args.config).task


def default_sources(search) -> list[str]:
    """raw, the free baseline (prf, where the retriever can return document text) and the untrained model."""
    return ["raw", *(["prf"] if callable(getattr(search, "search_documents", None)) else []), "base"]


def _describe(retriever) -> str:
    return f"{retriever.framework} {retriever.kind}" + (f" ({retriever.path})" if retriever.path else "")


def report_evaluation(collection, search, sources, out: Path, *, retriever: str, limit: int | None,
                      batch_size: int, progress: bool):
    """Evaluate, write the outputs, print the table and where they are; return the report."""
    from ..evaluation.evaluate import evaluate
    from ..evaluation.report import format_table, write_outputs

    report = evaluate(collection, search, sources, limit=limit, out_dir=out, retriever=retriever,
                      batch_size=batch_size, progress=progress)
    paths = write_outputs(report, out)
    print(format_table(report))
    print(f"\nresults: {paths['markdown']}  {paths['json']}\nchart:   {paths['chart']}")
    return report
