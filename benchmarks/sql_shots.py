"""How many worked examples the sql prompt should show the embedded model: sampled and greedy execution accuracy of
the untrained model on the train split's databases, per number of shots (train on train: choose on these).

    python benchmarks/sql_shots.py --shots 1 4 --questions 32 --samples 8 --max-hardness easy --torch-threads 2

For each setting, each of the first ``--questions`` train questions (optionally at most ``--max-hardness`` hard) is
answered ``--samples`` times at the training temperature, as one GRPO group would be, and once greedily. It prints
the format-valid rate, sampled execution accuracy, the share of groups holding at least one right answer (the groups
GRPO can learn from), distinct queries per group, and greedy accuracy. Not a test: a measurement, recorded in
docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from deepretrieval_trainer.rewriting.rewriters import LocalRewriter
from deepretrieval_trainer.rewriting.tasks import sql_task
from deepretrieval_trainer.sql.evaluate import _score  # the evaluation's own scoring of one answer
from deepretrieval_trainer.sql.rewards import ExecutionScorer
from deepretrieval_trainer.sql.schema import describe
from deepretrieval_trainer.sql.spider import load_sql_examples
from deepretrieval_trainer.sql.writer import SQLWriter

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "spider"


def measure(shots: int, examples, schemas, scorer, *, samples: int, temperature: float, max_new_tokens: int,
            seed: int) -> dict:
    task = sql_task(shots)
    torch.manual_seed(seed)
    backend = LocalRewriter(task=task, temperature=temperature, batch_size=samples, max_new_tokens=max_new_tokens)
    sampler = SQLWriter(backend=backend)
    start = time.perf_counter()
    valid, right, any_right, distinct = [], [], [], []
    for example in examples:
        answers = sampler.write([(example.question, schemas[example.db_id])] * samples)
        correct = [_score(scorer, example, a).correct for a in answers]
        valid += [a.ok for a in answers]
        right += correct
        any_right.append(any(correct))
        distinct.append(len({a.sql for a in answers if a.ok}))
    sampled_s = time.perf_counter() - start
    backend.temperature, backend.batch_size = 0.0, 8  # greedy, as the evaluation decodes
    start = time.perf_counter()
    greedy = sampler.write([(e.question, schemas[e.db_id]) for e in examples])  # the backend batches by 8
    greedy_right = [_score(scorer, example, answer).correct for example, answer in zip(examples, greedy, strict=True)]
    greedy_sql = [answer.sql for answer in greedy]
    greedy_s = time.perf_counter() - start
    prompt_tokens = len(backend._tokenizer(backend.prompt_text(
        sampler.messages(examples[0].question, schemas[examples[0].db_id])), add_special_tokens=False).input_ids)
    return {"shots": shots, "prompt_tokens_first": prompt_tokens,
            "format_valid": round(statistics.fmean(valid), 3),
            "sampled_accuracy": round(statistics.fmean(right), 3),
            "groups_with_a_right_answer": round(statistics.fmean(any_right), 3),
            "distinct_sql_per_group": round(statistics.fmean(distinct), 2),
            "greedy_accuracy": round(statistics.fmean(greedy_right), 3),
            "greedy_right": sum(greedy_right), "questions": len(examples),
            "sampled_s": round(sampled_s, 1), "greedy_s": round(greedy_s, 1),
            "greedy_sql_examples": greedy_sql[:8]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(DATA))
    parser.add_argument("--split", default="train", help="train (choose here) or dev")
    parser.add_argument("--shots", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--questions", type=int, default=32)
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--temperature", type=float, default=0.8)
    parser.add_argument("--max-new-tokens", type=int, default=96)
    parser.add_argument("--max-hardness", default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--torch-threads", type=int, default=None)
    parser.add_argument("--out", default=None, help="write the figures as JSON here")
    args = parser.parse_args(argv)
    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    collection = load_sql_examples(args.data, args.split, max_hardness=args.max_hardness)
    # every database's questions in turn would favour the first ones: take an even spread over the split
    step = max(len(collection.examples) // args.questions, 1)
    examples = collection.examples[::step][:args.questions]
    schemas = {db_id: describe(db) for db_id, db in collection.databases.items()}
    scorer = ExecutionScorer(collection.databases)
    rows = []
    for shots in args.shots:
        row = measure(shots, examples, schemas, scorer, samples=args.samples, temperature=args.temperature,
                      max_new_tokens=args.max_new_tokens, seed=args.seed)
        rows.append(row)
        print(json.dumps(row), flush=True)
    print("| shots | prompt tokens | format-valid | sampled accuracy | groups with a right answer | distinct SQL / group "
          "| greedy accuracy |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['shots']} | {r['prompt_tokens_first']} | {r['format_valid']:.3f} | {r['sampled_accuracy']:.3f} | "
              f"{r['groups_with_a_right_answer']:.3f} | {r['distinct_sql_per_group']:.2f} | "
              f"{r['greedy_accuracy']:.3f} ({r['greedy_right']}/{r['questions']}) |")
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
