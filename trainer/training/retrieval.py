"""GRPO training of a LoRA query rewriter against the host framework's own retriever.

``train(search_backend, dataset, config) -> adapter folder``. The flow reads top to bottom: check the config,
the data and the retriever (before any model loads), prepare the run folder, turn queries into prompts, build
TRL's GRPOTrainer with a peft LoRA config and the reward functions, train (resuming if asked), save the adapter.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

from ..common.errors import ConfigError, DataError
from ..retrieval.data import Collection
from ..retrieval.search import SearchBackend, document_search
from ..rewriting.tasks import QueryInput, Task, first_pass
from .config import TrainConfig
from .engine import check_batch, is_main_process, prompt_text, run_training, timed_trainer
from .rewards import build_rewards
from .run_dir import RunDir, checkpoint_step

logger = logging.getLogger(__name__)

Dataset = Union[Collection, Sequence[Mapping[str, Any]]]


@dataclass(frozen=True)
class TrainingRow:
    query: QueryInput
    qrels: dict[str, float]
    query_id: str
    pub_date: str | None = None  # search only literature published up to this date (engines with search_dated)

    @property
    def query_text(self) -> str:
        if isinstance(self.query, str):
            return self.query
        return " ".join(str(v) for v in self.query.values() if v)


def training_rows(dataset: Dataset) -> list[TrainingRow]:
    """Queries with at least one relevant document, from a Collection or rows ``{query, qrels[, query_id]}``."""
    if isinstance(dataset, Collection):
        rows = [TrainingRow(text, {d: float(g) for d, g in dataset.qrels[qid].items()}, qid)
                for qid, text in dataset.judged_queries.items()]
    elif isinstance(dataset, (str, bytes, Mapping)) or not isinstance(dataset, Sequence):
        raise DataError(f"dataset is a {type(dataset).__name__}: pass a Collection from load_beir(path, split) "
                        "or a list of {'query': ..., 'qrels': {doc_id: grade}} rows")
    else:
        rows = [_row(i, row) for i, row in enumerate(dataset)]
    rows = [r for r in rows if any(g > 0 for g in r.qrels.values())]
    if not rows:
        raise DataError("no training query has a relevant document (a qrels grade > 0): check the split or the rows")
    return rows


def _row(index: int, row: Any) -> TrainingRow:
    if not isinstance(row, Mapping):
        raise DataError(f"dataset row {index} is a {type(row).__name__}: each row must be a dict with "
                        "'query' and 'qrels'")
    query, qrels = row.get("query"), row.get("qrels")
    if isinstance(query, str) and not query.strip() or not isinstance(query, (str, Mapping)) or not query:
        raise DataError(f"dataset row {index}: 'query' must be non-empty text (or PICO fields), got {query!r}")
    if not isinstance(qrels, Mapping) or not qrels:
        raise DataError(f"dataset row {index}: 'qrels' must be a non-empty {{doc_id: grade}} mapping, got {qrels!r}")
    try:
        judged = {str(d): float(g) for d, g in qrels.items()}
    except (TypeError, ValueError):
        raise DataError(f"dataset row {index}: qrels grades must be numbers, got {dict(qrels)!r}") from None
    pub_date = row.get("pub_date")
    if pub_date is not None and (not isinstance(pub_date, str) or not pub_date.strip()):
        raise DataError(f"dataset row {index}: 'pub_date' must be a date like 2019/06/30 (or absent), got {pub_date!r}")
    return TrainingRow(query, judged, str(row.get("query_id", index)), pub_date)


def fingerprint(dataset: Dataset, rows: Sequence[TrainingRow]) -> str:
    if isinstance(dataset, Collection) and dataset.fingerprint:
        return dataset.fingerprint
    digest = hashlib.sha256(json.dumps([[r.query_id, r.query, r.qrels] for r in rows], sort_keys=True,
                                       default=str).encode())
    return digest.hexdigest()[:16]


def check_search(search_backend: SearchBackend, rows: Sequence[TrainingRow], k: int) -> None:
    """Search one real query now, so a broken retriever fails before the model loads."""
    if not callable(getattr(search_backend, "search", None)):
        raise ConfigError(f"search_backend is a {type(search_backend).__name__} without a search(queries, k) method: "
                          "pass a SearchBackend (LlamaIndexSearch, HaystackSearch or BM25Search)")
    if any(r.pub_date for r in rows) and not callable(getattr(search_backend, "search_dated", None)):
        raise ConfigError(f"the rows carry publication-date cutoffs (pub_date) but {type(search_backend).__name__} "
                          "cannot filter by date: drop pub_date from the rows or search PubMed/ClinicalTrials.gov")
    results = search_backend.search([rows[0].query_text], k)
    if not isinstance(results, list) or len(results) != 1 or not isinstance(results[0], list):
        raise ConfigError(f"{type(search_backend).__name__}.search() returned {type(results).__name__}: it must "
                          "return one list of document ids per query")
    known = {d for r in rows for d in r.qrels}
    if results[0] and known and not set(results[0]) & known and all(isinstance(d, str) for d in results[0]):
        sample = next(iter(known))
        logger.info("the first probe search found no judged document (ids look like %r, qrels like %r); if ids "
                    "never match, every reward is the floor: check the retriever's id key", results[0][0], sample)


def select_rows(rows: list[TrainingRow], config: TrainConfig) -> list[TrainingRow]:
    if config.max_queries is None or config.max_queries >= len(rows):
        return rows
    import random

    picked = random.Random(config.seed).sample(range(len(rows)), config.max_queries)
    return [rows[i] for i in sorted(picked)]


def headroom_rows(search_backend: SearchBackend, rows: list[TrainingRow], config: TrainConfig,
                  task: Task) -> list[TrainingRow]:
    """The rows whose raw query scores below ``config.max_raw_reward`` under the training reward (all rows when it is
    None): each raw query is searched once through ``search_backend``, as the reward searches it, and scored by the
    task's metric at ``reward_k``. Queries the backend's ``query_error`` rejects score 0 and are kept."""
    if config.max_raw_reward is None:
        return rows
    from .rewards import RetrievalReward

    reward = RetrievalReward(search=search_backend, task=task, batch_size=config.search_batch_size,
                             concurrency=config.search_concurrency, search_timeout=config.search_timeout)
    queries = [r.query_text for r in rows]
    start = time.perf_counter()
    rejected = reward.query_check or (lambda query: None)
    accepted = [i for i, query in enumerate(queries) if rejected(query) is None]  # a rejected query is not searched
    rankings = reward.cache.rankings([queries[i] for i in accepted], [rows[i].pub_date for i in accepted])
    scores = [0.0] * len(rows)
    for i, found in zip(accepted, rankings, strict=True):
        scores[i] = reward.score(found, rows[i].qrels)
    kept = [r for r, score in zip(rows, scores, strict=True) if score < config.max_raw_reward]
    logger.info("max_raw_reward=%s: training on %d of %d queries (the rest already score at least that with the raw "
                "query; searched in %.1f s)", config.max_raw_reward, len(kept), len(rows), time.perf_counter() - start)
    if not kept:
        raise DataError(f"max_raw_reward={config.max_raw_reward!r} leaves no training query: every raw query already "
                        f"scores at least that (lowest {min(scores):.3f}, highest {max(scores):.3f}) through "
                        f"{type(search_backend).__name__}; raise max_raw_reward or set it to null")
    return kept


CHOICE_PROBES = 16  # random halves of the candidates searched per query by choice_rows


def choice_rows(search_backend: SearchBackend, rows: list[TrainingRow], config: TrainConfig,
                task: Task) -> list[TrainingRow]:
    """The rows where choosing among the candidate terms matters (all rows when ``config.min_choice_spread`` is None):
    each query's first pass gives its candidates, and the training reward of keeping all of them, none, and
    :data:`CHOICE_PROBES` random halves (seeded by ``config.seed``) must span at least ``min_choice_spread``."""
    if config.min_choice_spread is None:
        return rows
    import random

    from ..retrieval.prf import steered_query
    from .rewards import RetrievalReward

    start = time.perf_counter()
    reward = RetrievalReward(search=search_backend, task=task, batch_size=config.search_batch_size,
                             concurrency=config.search_concurrency, search_timeout=config.search_timeout)
    queries = [r.query_text for r in rows]
    offered = [task.feedback.candidates(hits) for hits in first_pass(search_backend, queries, task)]
    rng = random.Random(config.seed)
    choices = []
    for query, candidates in zip(queries, offered, strict=True):
        forms = list(candidates.forms.values())
        keeps = [forms, []] + [rng.sample(forms, len(forms) // 2) for _ in range(CHOICE_PROBES)]
        choices.append([steered_query(query, " ".join(keep), candidates, config.query_weight) for keep in keeps])
    flat = [text for texts in choices for text in texts]
    rankings = reward.cache.rankings(flat)
    width = len(choices[0]) if choices else 0
    spreads = []
    for index, row in enumerate(rows):
        scores = [reward.score(found, row.qrels) for found in rankings[index * width:(index + 1) * width]]
        spreads.append(max(scores) - min(scores))
    kept = [r for r, spread in zip(rows, spreads, strict=True) if spread >= config.min_choice_spread]
    logger.info("min_choice_spread=%s: training on %d of %d queries (the others score within that whatever "
                "candidates they keep; searched in %.1f s)", config.min_choice_spread, len(kept), len(rows),
                time.perf_counter() - start)
    if not kept:
        raise DataError(f"min_choice_spread={config.min_choice_spread!r} leaves no training query (the largest spread "
                        f"is {max(spreads, default=0):.3f}); lower it or set it to null")
    return kept


def train(search_backend: SearchBackend, dataset: Dataset, config: TrainConfig | None = None) -> Path:
    """Train a LoRA rewriter with GRPO against ``search_backend``; return the adapter folder.

    ``dataset``: a :class:`Collection` (``load_beir(path, split)``) or rows ``{"query", "qrels"}``.
    Ctrl-C saves the adapter reached so far and returns its folder; ``config.resume`` continues the run folder's
    last checkpoint.
    """
    config = config or TrainConfig()
    task = config.build_task()
    rows = training_rows(dataset)
    check_batch(config)
    check_search(search_backend, rows, task.reward_k)
    rows = select_rows(choice_rows(search_backend, headroom_rows(search_backend, rows, config, task), config, task),
                       config)
    if task.feedback is not None:
        document_search(search_backend, purpose=f"feedback_docs={task.feedback.docs}")
    run = RunDir(config.run_dir)
    data_fingerprint = fingerprint(dataset, rows)
    checkpoint = run.prepare(config, data_fingerprint)
    if checkpoint is not None and checkpoint_step(checkpoint) >= config.max_steps:
        # The HF trainer would run one more step past max_steps when resumed from the final checkpoint.
        return run.finished_adapter(checkpoint, write=is_main_process())

    def build(base_model: str, dtype: str):
        return build_trainer(config, task, base_model, rows, search_backend, run, dtype=dtype)

    return run_training(config, task, run, checkpoint, build, retriever=type(search_backend).__name__,
                        dataset_info=_dataset_info(dataset, rows, data_fingerprint), search_backend=search_backend,
                        framing=config.framing, query_weight=config.query_weight)


def build_trainer(config: TrainConfig, task: Task, base_model: str, rows: Sequence[TrainingRow],
                  search_backend: SearchBackend, run: RunDir, *, dtype: str | None = None):
    from datasets import Dataset as HFDataset
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base_model)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    prompts = HFDataset.from_list(prompt_rows(tokenizer, task, rows, search_backend))
    rewards = build_rewards(search_backend, task, framing=config.framing, query_weight=config.query_weight,
                            cache_size=config.search_cache_size,
                            batch_size=config.search_batch_size, concurrency=config.search_concurrency,
                            search_timeout=config.search_timeout, unusable=config.unusable_reward,
                            echo_penalty=config.echo_penalty)
    return timed_trainer(config, task, base_model, rewards, prompts, tokenizer, run, dtype=dtype)


def prompt_rows(tokenizer, task: Task, rows: Sequence[TrainingRow], search_backend: SearchBackend) -> list[dict]:
    """The training dataset rows: the prompt, and the columns the rewards read. A feedback task's prompt shows each
    raw query's first-pass results from ``search_backend``, searched once here (deepretrieval_trainer.rewriting.feedback);
    a corpus-steered task's rows also carry the candidate terms shown, which framing ``steer`` weights."""
    first = first_pass(search_backend, [r.query_text for r in rows], task) if task.feedback else [None] * len(rows)
    prompts = [{"prompt": prompt_text(tokenizer, task, r.query, hits), "query": r.query_text,
                "qrels": json.dumps(r.qrels), "query_id": r.query_id, "pub_date": r.pub_date}
               for r, hits in zip(rows, first, strict=True)]
    if task.feedback is not None and task.feedback.field == "terms":  # what framing "steer" weights, as shown
        for row, hits in zip(prompts, first, strict=True):
            row["candidates"] = task.feedback.candidates(hits).to_json()
    return prompts


def _dataset_info(dataset: Dataset, rows: Sequence[TrainingRow], data_fingerprint: str) -> dict[str, Any]:
    info: dict[str, Any] = {"fingerprint": data_fingerprint, "queries": len(rows)}
    if isinstance(dataset, Collection):
        info.update(path=str(dataset.path), split=dataset.split)
    return info


