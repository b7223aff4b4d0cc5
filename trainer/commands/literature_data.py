"""Literature-search datasets (JSONL: id, topic or P/I/C/O, relevant ids, optional pub_date).

`convert` turns a BEIR collection split into one (topic = the query text); `check` validates a file and prints
its counts."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    convert = actions.add_parser("convert", help="write a BEIR collection split as a literature JSONL file")
    convert.add_argument("collection", help="a BEIR collection folder, e.g. ../shared/data/nfcorpus")
    convert.add_argument("--split", required=True, help="the qrels split to convert (e.g. train, dev, test)")
    convert.add_argument("-o", "--output", required=True, help="the JSONL file to write")
    convert.add_argument("--drop-unknown-docs", action="store_true",
                         help="ignore judgments of documents missing from the corpus (NFCorpus needs it)")
    check = actions.add_parser("check", help="validate a literature JSONL file and print its counts")
    check.add_argument("file", help="the JSONL file to validate")


def run(args: argparse.Namespace) -> int:
    from ..literature.dataset import from_collection, load_literature, write_literature
    from ..retrieval.data import load_beir

    if args.action == "convert":
        collection = load_beir(args.collection, args.split, drop_unknown_docs=args.drop_unknown_docs)
        count = write_literature(args.output, from_collection(collection))
        print(f"wrote {count} topics from {collection.path} ({args.split}) to {args.output}")
        return 0
    examples = load_literature(args.file)
    pico = sum(1 for e in examples if set(e.fields) - {"topic"})
    dated = sum(1 for e in examples if e.pub_date)
    relevant = sum(len(e.relevant) for e in examples)
    print(f"{args.file}: {len(examples)} topics ({pico} with PICO fields, {dated} with pub_date), "
          f"{relevant} relevant ids ({relevant / len(examples):.1f} per topic)")
    return 0
