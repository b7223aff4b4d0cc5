"""GRPO training of a LoRA text-to-SQL writer, rewarded by execution accuracy.

``train_sql(collection, config) -> adapter folder``: the same run folder, trainer, schedule, LoRA and resume as
:func:`~deepretrieval_trainer.training.retrieval.train`; what differs is the data (question + schema prompts, gold SQL or rows)
and the rewards (:func:`~.rewards.build_sql_rewards`). Each prompt's schema is read from its database once.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from ..rewriting.tasks import Task
from ..training.config import ConfigError, TrainConfig
from ..training.engine import check_batch, is_main_process, prompt_text, run_training, timed_trainer
from ..training.run_dir import RunDir, checkpoint_complete, checkpoint_step
from .evaluate import CheckpointChoice, choose_checkpoint
from .rewards import build_sql_rewards
from .schema import describe, prompt_input
from .spider import SPLITS, SQLCollection, SQLExample, load_sql_examples

logger = logging.getLogger(__name__)


def select_examples(examples: list[SQLExample], config: TrainConfig) -> list[SQLExample]:
    if config.max_queries is None or config.max_queries >= len(examples):
        return examples
    import random

    picked = random.Random(config.seed).sample(range(len(examples)), config.max_queries)
    return [examples[i] for i in sorted(picked)]


def prompt_rows(collection: SQLCollection, examples: list[SQLExample], *, sample_values: int = 0) -> list[dict]:
    """One dataset row per example: the prompt input (schema + question) and the reference columns."""
    schemas = {db_id: describe(db, sample_values=sample_values) for db_id, db in collection.databases.items()}
    return [{"input": prompt_input(e.question, schemas[e.db_id]), "query": e.question, "db_id": e.db_id,
             "gold_sql": e.gold_sql or "", "gold_rows": json.dumps(e.gold_rows) if e.gold_rows is not None else "",
             "ordered": e.ordered, "query_id": e.id} for e in examples]


def train_sql(collection: SQLCollection, config: TrainConfig | None = None, *, sample_values: int = 0) -> Path:
    """Train a LoRA SQL writer with GRPO on ``collection``'s examples; return the adapter folder."""
    config = config or TrainConfig(task="sql")
    task = config.build_task()
    if task.name != "sql":
        raise ConfigError(f"task={config.task!r}: text-to-SQL training needs task='sql' (--task sql)")
    examples = select_examples(collection.examples, config)
    check_batch(config)
    rows = prompt_rows(collection, examples, sample_values=sample_values)
    run = RunDir(config.run_dir)
    checkpoint = run.prepare(config, collection.fingerprint)
    if checkpoint is not None and checkpoint_step(checkpoint) >= config.max_steps:
        return run.finished_adapter(checkpoint, write=is_main_process())

    def build(base_model: str, dtype: str):
        return build_sql_trainer(config, task, base_model, rows, collection, run, dtype=dtype)

    # the same loop as retrieval training: precision, run.json, resume, Ctrl-C, failures that say --resume
    return run_training(config, task, run, checkpoint, build,
                        retriever="sql:" + ",".join(sorted(collection.databases)),
                        dataset_info=_dataset_info(collection, rows))


def build_sql_trainer(config: TrainConfig, task: Task, base_model: str, rows: list[dict], collection: SQLCollection,
                      run: RunDir, *, dtype: str | None = None):
    """The trainer retrieval training builds (engine.timed_trainer, every setting from ``config``) on SQL prompts and rewards."""
    from datasets import Dataset as HFDataset
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base_model)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    prompts = HFDataset.from_list([{"prompt": prompt_text(tokenizer, task, row.pop("input")), **row} for row in rows])
    rewards = build_sql_rewards(collection.databases, task, partial_credit=config.sql_partial_credit)
    return timed_trainer(config, task, base_model, rewards, prompts, tokenizer, run, dtype=dtype)


def _dataset_info(collection: SQLCollection, rows: list[dict]) -> dict[str, Any]:
    return {"fingerprint": collection.fingerprint, "queries": len(rows), "path": str(collection.path),
            "split": collection.split, "databases": sorted(collection.databases), **collection.meta}


def training_collection(config: TrainConfig) -> SQLCollection:
    """``data.path``'s examples of ``data.split``, filtered as the ``data`` section says (max_hardness,
    drop_table_counts, validation_databases left out): the training run and the benchmark load them the same way."""
    return load_sql_examples(config.data.path, config.data.split, max_hardness=config.data.max_hardness,
                             drop_table_counts=config.data.drop_table_counts,
                             exclude_databases=config.data.validation_databases)


def validation_collection(config: TrainConfig) -> SQLCollection:
    """The examples of ``data.validation_databases`` (at most ``data.max_hardness`` hard, table counts kept: the
    questions as a user asks them), on which to choose the checkpoint: databases training never saw, so the choice
    does not look at the held-out split. The examples whose expected result is empty or all zeros are left out
    (:func:`.spider.uninformative_answers`): any query that finds nothing matches them, so they would choose by
    coincidence."""
    if not config.data.validation_databases:
        raise ConfigError("no validation databases: set data.validation_databases (--data-validation-databases) "
                          "to databases of data.split to keep out of training, e.g. '[flight_2]'")
    in_split = SPLITS.get(config.data.split)
    if in_split is not None and set(config.data.validation_databases) - set(in_split):
        raise ConfigError(f"data.validation_databases {sorted(set(config.data.validation_databases) - set(in_split))}"
                          f" are not databases of split {config.data.split!r} ({list(in_split)}): name some of those")
    return load_sql_examples(config.data.path, config.data.split, databases=config.data.validation_databases,
                             max_hardness=config.data.max_hardness, drop_uninformative=True)


def choose_on_validation(config: TrainConfig, run_dir: str | Path | None = None, *,
                         collection: SQLCollection | None = None, max_new_tokens: int = 128,
                         sample_values: int = 0) -> CheckpointChoice:
    """Score the base model and every complete checkpoint of the run on ``data.validation_databases``
    (``collection``, or :func:`validation_collection` when not given) and choose the step
    (:func:`.evaluate.choose_checkpoint`); the answers go to RUN/validation/, the choice to RUN/validation.json."""
    run = RunDir(run_dir or config.run_dir)
    folders = [f for f in run.checkpoint_folders() if checkpoint_complete(f)]
    choice = choose_checkpoint(collection or validation_collection(config), folders, out_dir=run.path / "validation",
                               model=config.model, max_new_tokens=max_new_tokens, batch_size=8,
                               sample_values=sample_values)
    if is_main_process():
        (run.path / "validation.json").write_text(json.dumps(choice.to_dict(), indent=1) + "\n", encoding="utf-8")
    return choice


def choice_reason(choice: CheckpointChoice) -> str:
    """Why the base model was chosen: no eligible checkpoint beat it, or every checkpoint collapsed."""
    if set(choice.collapsed) >= set(choice.accuracy) - {0}:
        return (f"every checkpoint answers over {choice.cutoff:.0%} of the validation questions with one query "
                "shape: collapsed to a template")
    return "no checkpoint that kept its variety beat it on the validation databases"


def train_from_config(config: TrainConfig, *, sample_values: int = 0) -> int:
    """``deepretrieval train --task sql``: train on ``data.path`` (Spider layout), split ``data.split``."""
    if not config.data.path:
        raise ValueError("no training data: set data.path (--data-path) to a folder in Spider's layout, "
                         "e.g. ../shared/data/spider")
    collection = training_collection(config)
    validation = None
    if config.data.validation_databases:  # its errors (a failing gold query, nothing left) before training, not after
        validation = validation_collection(config)
        logger.info("choosing the step on %d examples of databases %s", len(validation.examples),
                    sorted(validation.databases))
    if config.data.validation_databases and config.save_total_limit < 3:
        logger.warning("data.validation_databases chooses among the kept checkpoints, and save_total_limit=%d keeps "
                       "only the last %d: raise it (e.g. --save-total-limit 20 with --save-steps 5) to choose among "
                       "more steps", config.save_total_limit, config.save_total_limit)
    logger.info("training on %d examples of databases %s", len(collection.examples), sorted(collection.databases))
    adapter = train_sql(collection, config, sample_values=sample_values)
    print(f"adapter: {adapter}")
    chosen = adapter.parent
    if validation is not None:
        choice = choose_on_validation(config, collection=validation, sample_values=sample_values)
        print(f"validation ({', '.join(choice.report.databases)}, {choice.report.settings['examples']} examples): "
              + ", ".join(f"step {k} {v:.1%}" for k, v in choice.accuracy.items()))
        if choice.collapsed:
            print(f"not eligible (one query shape answers over {choice.cutoff:.0%} of the questions): "
                  + ", ".join(f"step {k} ({choice.template_share[k]:.0%})" for k in choice.collapsed))
        if choice.checkpoint is None:
            print(f"chosen: the base model ({choice_reason(choice)})")
        else:
            chosen = choice.checkpoint
            print(f"chosen: step {choice.step}, {chosen}")
    print(f"evaluate it: deepretrieval eval --task sql --data {config.data.path} --split dev --source gold "
          f"--source base --source trained=adapter:{chosen}")
    print(f"serve it: deepretrieval serve --adapter {chosen}")
    return 0
