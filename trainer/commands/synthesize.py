"""Make training labels without judgments: pseudo-queries from your index's own documents.

    deepretrieval synthesize --documents beir:../shared/data/adi --out labels/adi
    deepretrieval synthesize --documents llamaindex:storage/ --out labels/mine --method doc2query --sample 500
    deepretrieval synthesize --documents haystack:store.json --out labels/mine --min-rank 2 --max-rank 50

A sample of the documents (read in one streaming pass) each gets a pseudo-query: --method crop (a span of the
document with its rarest words removed; no model) or doc2query (written by the in-process model). Each raw
pseudo-query is searched through the retriever (by default the documents' own index: llamaindex:PATH loads the
persisted index, haystack:PATH BM25 over the saved store, beir:PATH the --retriever-framework's BM25), and the pair is
kept when its source document ranks within [--min-rank, --max-rank]; near-duplicate queries are dropped. OUT gets
queries.jsonl and qrels/<split>.tsv (BEIR layout), synthesis.json (how they were made) and candidates.jsonl (every
query written, with its rank). Train on them with `deepretrieval train --labels OUT`.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging

from ..training.config import RetrieverConfig
from ..training.synthesis_config import SynthesisConfig
from .train import _add_fields

logger = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="the folder to write the labels to (new, or empty)")
    parser.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16"),
                        help="doc2query: the model's precision (auto: bf16 where the machine has it)")
    parser.add_argument("--torch-threads", type=int, default=None, metavar="INT",
                        help="doc2query: torch threads (1 on a busy shared CPU; default torch's own)")
    parser.add_argument("--show", type=int, default=5, metavar="N", help="print N kept pairs (default 5)")
    _add_fields(parser.add_argument_group("synthesis (every synthesis.* field of a TrainConfig)"), SynthesisConfig)
    _add_fields(parser.add_argument_group("retriever section (default: the documents' own index)"), RetrieverConfig,
                prefix="retriever_")


def settings(args: argparse.Namespace, cls: type, prefix: str = "") -> dict:
    return {f.name: getattr(args, prefix + f.name) for f in dataclasses.fields(cls)
            if getattr(args, prefix + f.name, None) is not None}


def run(args: argparse.Namespace) -> int:
    from ..common.errors import ConfigError, DataError
    from ..retrieval.documents import open_documents
    from ..training.label_folder import prepare_out
    from ..training.retrievers import build_search
    from ..training.synthetic import synthesize
    from ..training.synthetic_run import documents_retriever

    config = SynthesisConfig(**settings(args, SynthesisConfig))
    if not config.documents:
        raise ConfigError("--documents is required: beir:PATH (a BEIR folder), llamaindex:PATH (a persisted index "
                          "folder) or haystack:PATH (a store saved with save_to_disk)")
    source = open_documents(config.documents)
    prepare_out(args.out, getattr(source, "root", None))  # a bad --out fails before the index is built
    if next(iter(source), None) is None:  # so does an empty store, or one without text
        raise DataError(f"{source.name}: holds no documents; index your documents first, or name the store that "
                        "holds them")
    given = settings(args, RetrieverConfig, "retriever_")
    retriever, path = documents_retriever(RetrieverConfig(**given) if given else None, config.documents)
    search = build_search(retriever, path)
    if config.method == "doc2query" and args.torch_threads:
        import torch

        torch.set_num_threads(args.torch_threads)
    labels = synthesize(search, source, config, out=args.out, dtype=args.dtype)
    report = labels.report
    print(f"\n{labels.summary()}")
    print(f"\nrank of the source document under the raw pseudo-query (kept: {config.min_rank}..{config.max_rank}):")
    total = max(sum(report["rank_distribution"].values()), 1)
    for label, count in report["rank_distribution"].items():
        print(f"  {label:>16} {count:7d}  {'#' * round(40 * count / total)}")
    if "headroom" in report:
        from ..training.synthetic import NO_HEADROOM

        print(f"headroom (prf): {report['dropped'].get(NO_HEADROOM, 0)} of {report['headroom']['checked']} pairs in "
              f"the window dropped, RM3 ranking their document no higher; RM3 rank of the kept ones: "
              + ", ".join(f"{label}: {count}" for label, count in report["headroom"]["kept_rank_distribution"].items()
                          if count))
    if report["documents"]["skipped"]:
        print(f"documents left out: {report['documents']['skipped']}")
    if report["not_written"]:
        print(f"no query written: {report['not_written']}")
    timings = report["timings"]
    print(f"{report['written']} pseudo-queries written in {timings['write_s']:.1f} s "
          f"({timings['queries_per_minute'] or 0:.0f}/min), searched in {timings['search_s']:.1f} s"
          + (f", RM3 in {timings['prf_s']:.1f} s" if "prf_s" in timings else ""))
    if args.show > 0:
        print("\nkept pairs:")
        for line in labels.examples(args.show):
            print(f"  {line}")
    print(f"\nlabels: {args.out} (queries.jsonl, qrels/{config.split}.tsv, synthesis.json)")
    print(f"train on them: deepretrieval train --labels {args.out} --run-dir runs/NAME")
    return 0
