"""Would a validation split of the TRAIN databases choose the training step? Greedy execution accuracy of the base
model and of named checkpoints on an even spread of the train databases' questions harder than ``easy`` (never
trained on under the easy curriculum, and never on a held-out database).

    python benchmarks/sql_validation_probe.py --out /tmp/sql-val --questions 64 \\
        s38=adapter:RUN/checkpoints/checkpoint-38 s146=adapter:RUN/checkpoints/checkpoint-146

A probe, not a result: it prints the table and the paired tests. Recorded in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
from pathlib import Path

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "spider"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sources", nargs="+", metavar="NAME=SPEC",
                        help="e.g. s38=adapter:RUN/checkpoints/checkpoint-38")
    parser.add_argument("--out", required=True, help="answers are cached in OUT/generations")
    parser.add_argument("--data", default=str(DATA))
    parser.add_argument("--questions", type=int, default=64)
    parser.add_argument("--torch-threads", type=int, default=2)
    args = parser.parse_args(argv)

    import torch

    from deepretrieval_trainer.sql.evaluate import evaluate_sql, format_sql_table, parse_sql_source, write_sql_outputs
    from deepretrieval_trainer.sql.hardness import hardness
    from deepretrieval_trainer.sql.spider import load_sql_examples

    torch.set_num_threads(args.torch_threads)
    collection = load_sql_examples(args.data, "train")
    harder = [e for e in collection.examples if hardness(e.gold_sql) != "easy"]
    stride = len(harder) / min(args.questions, len(harder))
    collection.examples = [harder[int(i * stride)] for i in range(min(args.questions, len(harder)))]
    sources = [parse_sql_source(s, max_new_tokens=128, batch_size=8) for s in ["base", *args.sources]]
    report = evaluate_sql(collection, sources, out_dir=args.out, progress=False)
    write_sql_outputs(report, args.out)
    print(format_sql_table(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
