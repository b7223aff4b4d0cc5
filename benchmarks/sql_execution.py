"""Text-to-SQL benchmark: execution accuracy of the untrained embedded model, a GRPO-trained adapter and the gold SQL
on Spider databases never seen in training, with exact McNemar tests, and the reward's share of the step time.

    python benchmarks/sql_execution.py --out /tmp/sql-bench --max-minutes 40 --torch-threads 1

Trains on the ``train`` split's databases (``deepretrieval_trainer.sql.spider.TRAIN_DATABASES``), evaluates on the
``dev`` split's (``EVAL_DATABASES``). With ``--validation-databases``, those train databases are kept out of
training, the base model and every kept checkpoint (``--set save_steps=5 save_total_limit=20``) answer their
questions, and the best on them (ties: the earliest step; not a checkpoint that gives one query shape to over half
of them) is the adapter evaluated on dev, so the step is chosen without looking at dev. The run folder is OUT/run
(re-running resumes or reuses it), the evaluation OUT/eval (answers are cached there, so ``--eval-only`` or a re-run
only executes). Not a test: a measurement, recorded in docs/experiments/sql-recipes.md.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
from pathlib import Path

from learning_curve import extra_fields  # the same --set parsing; benchmarks/ is sys.path[0] when run as a script
from shared_data import SPIDER

from deepretrieval_trainer.sql.hardness import HARDNESS


def reward_share(run: Path) -> dict:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    steps = [r for r in rows if isinstance(r.get("step_s"), float)]
    if not steps:
        return {}
    mean = {key: statistics.fmean(r.get(key, 0.0) for r in steps)
            for key in ("step_s", "time/generation_s", "time/rewards_s", "execution/time_s", "time/backward_s")}
    fifth = max(len(rows) // 5, 1)
    first, last = rows[:fifth], rows[-fifth:]

    def average(part, key):
        return round(statistics.fmean(r.get(key, 0.0) for r in part), 3)

    return {"steps": len(rows), "mean_s": {k: round(v, 3) for k, v in mean.items()},
            "reward_share_of_step": round(mean["time/rewards_s"] / mean["step_s"], 5),
            "first_fifth": {k: average(first, k) for k in ("reward", "format/valid_rate", "execution/accuracy")},
            "last_fifth": {k: average(last, k) for k in ("reward", "format/valid_rate", "execution/accuracy")}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="output folder (run/ and eval/ go in it)")
    parser.add_argument("--data", default=str(SPIDER),
                        help="Spider-layout folder (default: spider in $DEEPRETRIEVAL_DATA or ../shared/data)")
    parser.add_argument("--max-minutes", type=float, default=40.0, help="training time limit (default 40)")
    parser.add_argument("--max-steps", type=int, default=400, help="step limit (the time limit usually ends it)")
    parser.add_argument("--prompts-per-step", type=int, default=2)
    parser.add_argument("--num-generations", type=int, default=8)
    parser.add_argument("--max-completion-length", type=int, default=96, help="training budget in tokens")
    parser.add_argument("--max-new-tokens", type=int, default=128, help="evaluation budget in tokens")
    parser.add_argument("--learning-rate", type=float, default=5e-4)
    parser.add_argument("--torch-threads", type=int, default=1)
    parser.add_argument("--max-hardness", choices=HARDNESS, default=None,
                        help="train only on examples at most this hard by Spider's rules (evaluation: all of dev)")
    parser.add_argument("--drop-table-counts", action="store_true",
                        help="train without the examples a whole-table count answers (evaluation: all of dev)")
    parser.add_argument("--validation-databases", nargs="+", default=[], metavar="DB_ID",
                        help="train databases to keep out of training: every checkpoint is scored on their questions "
                             "(at most --max-hardness, less those whose gold result is empty or all zeros) and the "
                             "best not collapsed to one query shape is the one evaluated on dev")
    parser.add_argument("--eval-only", action="store_true", help="evaluate OUT/run's adapter without training")
    parser.add_argument("--train-only", action="store_true", help="train, evaluate nothing (then run with --eval-only)")
    parser.add_argument("--skip-trained", action="store_true", help="evaluate gold and base only (before training)")
    parser.add_argument("--set", nargs="*", default=[], metavar="FIELD=VALUE",
                        help="any TrainConfig field (YAML value), e.g. 'reward_tiers=[[1.0, 1.0]]' reward_floor=-0.5; "
                             "it wins over the named flag for the same field")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    import torch

    from deepretrieval_trainer.sql.evaluate import evaluate_sql, format_sql_table, parse_sql_source, write_sql_outputs
    from deepretrieval_trainer.sql.spider import load_sql_examples
    from deepretrieval_trainer.sql.train import (
        choice_reason,
        choose_on_validation,
        train_sql,
        training_collection,
        validation_collection,
    )
    from deepretrieval_trainer.training.config import TrainConfig

    torch.set_num_threads(args.torch_threads)
    out = Path(args.out)
    run = out / "run"
    fields = dict(task="sql", run_dir=str(run), resume=run.exists(), max_steps=args.max_steps,
                  max_minutes=args.max_minutes, save_steps=10, prompts_per_step=args.prompts_per_step,
                  num_generations=args.num_generations, max_completion_length=args.max_completion_length,
                  learning_rate=args.learning_rate, torch_threads=args.torch_threads,
                  data={"path": args.data, "split": "train", "max_hardness": args.max_hardness,
                        "drop_table_counts": args.drop_table_counts,
                        "validation_databases": args.validation_databases})
    config = TrainConfig(**{**fields, **extra_fields(args.set)})
    validation = validation_collection(config) if args.validation_databases else None  # its errors first
    if not args.eval_only and not args.skip_trained:
        train_sql(training_collection(config), config)
    if args.train_only:
        return 0
    trained = None if args.skip_trained else run
    if validation is not None and not args.skip_trained:
        choice = choose_on_validation(config, run, collection=validation, max_new_tokens=args.max_new_tokens)
        print(format_sql_table(choice.report))
        print(json.dumps({k: v for k, v in choice.to_dict().items() if k != "databases"}, indent=1))
        trained = choice.checkpoint  # None: the base model won on validation, so there is no adapter to evaluate
        if trained is None:
            print(f"validation chose the base model ({choice_reason(choice)}): no trained adapter is evaluated "
                  "on dev")
    specs = ["gold", "base"] + ([] if trained is None else [f"trained=adapter:{trained}"])
    sources = [parse_sql_source(s, max_new_tokens=args.max_new_tokens, batch_size=8) for s in specs]
    report = evaluate_sql(load_sql_examples(args.data, "dev"), sources, out_dir=out / "eval", progress=False)
    write_sql_outputs(report, out / "eval")
    print(format_sql_table(report))
    if (run / "metrics.jsonl").is_file():
        share = reward_share(run)
        (out / "training.json").write_text(json.dumps(share, indent=1) + "\n")
        print(json.dumps(share, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
