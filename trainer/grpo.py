"""GRPO training of a LoRA query rewriter against the host framework's own retriever.

``train(search_backend, dataset, config) -> adapter folder``. The flow reads top to bottom: check the config,
the data and the retriever (before any model loads), prepare the run folder, turn queries into prompts, build
TRL's GRPOTrainer with a peft LoRA config and the reward functions, train (resuming if asked), save the adapter.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

from .config import ConfigError, TrainConfig
from .data import Collection, DataError
from .rewards import build_rewards
from .run_dir import RunDir, TrainingError, checkpoint_step
from .feedback import first_pass
from .search import DocumentHit, SearchBackend, document_search
from .tasks import QueryInput, Task

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


def is_main_process() -> bool:
    """Rank 0 under ``accelerate launch`` (and the only process otherwise): it writes the run folder."""
    return os.environ.get("RANK", "0") == "0"


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def check_batch(config: TrainConfig) -> int:
    """The per-device batch (in completions) TRL needs: prompts_per_step * num_generations, split over processes."""
    completions = config.prompts_per_step * config.num_generations
    processes = world_size()
    if completions % processes:
        raise ConfigError(f"prompts_per_step * num_generations = {completions} completions per step cannot be split "
                          f"over {processes} processes: make it a multiple of {processes}")
    if config.drop_uniform_groups and processes > 1:
        raise ConfigError(f"drop_uniform_groups runs in one process (this launch has {processes}): each process would "
                          "keep a different number of rows, which TRL's cross-process gathers cannot take; "
                          "set drop_uniform_groups: false or launch one process")
    return completions // processes


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
    rows = select_rows(headroom_rows(search_backend, rows, config, task), config)
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
                        readme={"framing": config.framing, "query_weight": config.query_weight})


def run_training(config: TrainConfig, task: Task, run: RunDir, checkpoint: Path | None,
                 build: Callable[[str, str], tuple[Any, Any]], *, retriever: str, dataset_info: dict[str, Any],
                 search_backend: SearchBackend | None = None, readme: Mapping[str, Any] | None = None) -> Path:
    """The part every task's training shares, once the data and the run folder are checked: load the stack, decide
    the precision, record the run, ``build(base_model, dtype) -> (trainer, callback)``, train (resuming from
    ``checkpoint``), and save the adapter. Ctrl-C saves the adapter reached so far; any other failure raises a
    :class:`TrainingError` that keeps the last checkpoint and says to ``--resume`` (naming ``search_backend`` when it
    raised)."""
    if is_main_process():
        run.check_writable()  # a read-only or full disk fails now, not at the first checkpoint
    _import_training_stack()
    if config.torch_threads is not None:
        import torch

        torch.set_num_threads(config.torch_threads)

    from .models import resolve_model
    from .precision import describe, resolve_dtype

    base_model = resolve_model(config.model)
    device = training_device()
    dtype = resolve_dtype(config.dtype, device)  # the one precision decision of this run
    main = is_main_process()
    if main:
        run.write_config(config)
        run.write_info(base_model=base_model, model=config.model, task=task.name, status="running",
                       retriever=retriever, dataset=dataset_info, versions=_versions(),
                       precision={"dtype": dtype, "setting": config.dtype, "device": device, "why": describe(device),
                                  "lora_weights": "float32"})
    trainer, callback = build(base_model, dtype)
    if main:
        run.check_writable(checkpoint_bytes(trainer) * (config.save_total_limit + 1))
    start = time.perf_counter()
    status = "completed"
    try:
        trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    except KeyboardInterrupt:
        status = "interrupted"
        logger.warning("interrupted at step %d: saving the adapter reached so far", trainer.state.global_step)
    except Exception as exc:
        raise training_failed(exc, search_backend, run, trainer.state.global_step) from exc
    finally:
        callback.close()
    trainer.save_model(str(run.adapter))
    if main:
        trainer.processing_class.save_pretrained(str(run.adapter))
        run.write_info(status=status, steps=trainer.state.global_step, wall_s=round(time.perf_counter() - start, 1))
        callback._plot()
        run.write_readme(base_model=base_model, task=task.name, dtype=dtype, **dict(readme or {}))
        logger.info("%s after %d steps: adapter in %s", status, trainer.state.global_step, run.adapter)
    return run.adapter


def checkpoint_bytes(trainer) -> int:
    """About how much one checkpoint takes: the trainable weights, Adam's two moments, the small state files."""
    trainable = sum(p.numel() * p.element_size() for p in trainer.model.parameters() if p.requires_grad)
    return 3 * trainable + (1 << 20)


def training_failed(exc: Exception, search_backend: SearchBackend | None, run: RunDir, step: int) -> TrainingError:
    """The error to raise when a training step fails, recorded in run.json; it names the retriever when it raised
    (``search_backend`` None: a task whose reward searches no retriever, e.g. SQL)."""
    from .redaction import redact

    retriever = type(search_backend).__name__
    by_retriever = search_backend is not None and _raised_by(exc, search_backend)
    checkpoint = run.last_checkpoint()
    kept = (f"the run folder keeps {checkpoint} (step {checkpoint_step(checkpoint)})" if checkpoint
            else "no checkpoint was saved yet")
    cause = redact(f"{type(exc).__name__}: {exc}")
    if is_main_process():
        run.write_info(status="failed", failed_step=step + 1, error=cause[:2000], failed_in=retriever if by_retriever
                       else None)
    what = f"the retriever {retriever} failed" if by_retriever else "training failed"
    fix = "the retriever is back (or fixed)" if by_retriever else "the cause is fixed"
    return TrainingError(f"{what} in training step {step + 1}: {cause}; {kept}: once {fix}, run the same "
                         "command with --resume (resume=True) to continue from it")


def _raised_by(exc: BaseException, search_backend: SearchBackend) -> bool:
    """Whether ``exc`` (or an exception it chains) passed through a method of ``search_backend``."""
    import traceback

    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if getattr(exc, "retriever", None) is search_backend:  # the reward's search deadline (SearchCache.timeout)
            return True
        if any(frame.f_locals.get("self") is search_backend for frame, _ in traceback.walk_tb(exc.__traceback__)):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


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


def timed_trainer(config: TrainConfig, task: Task, base_model: str, rewards, prompts, tokenizer, run: RunDir, *,
                  dtype: str | None = None):
    """The TimedGRPOTrainer every task trains with (LoRA, run callback, stop strings, sampler, prompt sharing, uniform
    group dropping, all from ``config``) and its RunCallback; retrieval and SQL differ only in prompts and rewards."""
    from peft import LoraConfig
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    from .trl_trainer import RunCallback, TimedGRPOTrainer

    lora = LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                      target_modules=config.lora_target_modules, task_type="CAUSAL_LM")
    callback = RunCallback(run, max_minutes=config.max_minutes)
    trainer = TimedGRPOTrainer(model=base_model, reward_funcs=rewards, args=grpo_args(config, run, dtype),
                               train_dataset=prompts, processing_class=tokenizer, peft_config=lora,
                               callbacks=[callback], stop=task.stop, merged_sampling=config.sampler in ("lean", "merged"),
                               lean_decoding=config.sampler == "lean",
                               share_prompts=config.share_prompts,
                               drop_uniform_groups=config.drop_uniform_groups)
    for unwanted in (PrinterCallback, ProgressCallback):
        trainer.remove_callback(unwanted)
    return trainer, callback


def training_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def grpo_args(config: TrainConfig, run: RunDir, dtype: str | None = None):
    """TRL's GRPOConfig for ``config``; ``dtype`` is the resolved precision (default: resolved from the machine)."""
    from trl import GRPOConfig

    from .precision import resolve_dtype

    device = training_device()
    dtype = dtype or resolve_dtype(config.dtype, device)

    vllm: dict[str, Any] = {}
    if config.use_vllm:
        vllm = {"use_vllm": True, "vllm_mode": config.vllm_mode,
                "vllm_gpu_memory_utilization": config.vllm_gpu_memory_utilization}
        if config.vllm_server_base_url:
            vllm["vllm_server_base_url"] = config.vllm_server_base_url
    return GRPOConfig(
        output_dir=str(run.checkpoints),
        max_steps=config.max_steps,
        save_strategy="steps",
        save_steps=config.save_steps,
        save_total_limit=config.save_total_limit,
        per_device_train_batch_size=check_batch(config),
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        num_generations=config.num_generations,
        max_completion_length=config.max_completion_length,
        temperature=config.temperature,
        top_p=config.top_p,
        learning_rate=config.learning_rate,
        beta=config.beta,
        loss_type=config.loss_type,
        scale_rewards=config.scale_rewards,
        # Mixed precision: the frozen base weights are stored in `dtype` and autocast runs the matmuls in it, while
        # peft keeps the LoRA weights (and so the AdamW state and the update) in float32 (autocast_adapter_dtype).
        bf16=dtype == "bfloat16",
        use_cpu=device == "cpu",  # HF's Trainer refuses bf16 on CPU unless told the run is CPU-only
        gradient_checkpointing=config.gradient_checkpointing,
        model_init_kwargs={"dtype": dtype},
        seed=config.seed,
        data_seed=config.seed,
        logging_steps=1,
        report_to="none",
        disable_tqdm=True,
        log_completions=False,
        save_only_model=False,
        dataloader_num_workers=0,
        **vllm,
    )


def prompt_rows(tokenizer, task: Task, rows: Sequence[TrainingRow], search_backend: SearchBackend) -> list[dict]:
    """The training dataset rows: the prompt, and the columns the rewards read. A feedback task's prompt shows each
    raw query's first-pass results from ``search_backend``, searched once here (deepretrieval_trainer.feedback)."""
    first = first_pass(search_backend, [r.query_text for r in rows], task) if task.feedback else [None] * len(rows)
    return [{"prompt": prompt_text(tokenizer, task, r.query, hits), "query": r.query_text,
             "qrels": json.dumps(r.qrels), "query_id": r.query_id, "pub_date": r.pub_date}
            for r, hits in zip(rows, first, strict=True)]


def prompt_text(tokenizer, task: Task, query: QueryInput, hits: Sequence[DocumentHit] | None = None) -> str:
    """The plain-text prompt (chat template + the task's prefill), so TRL treats it as non-conversational text;
    ``hits``: the query's first-pass documents, for a feedback task."""
    text = tokenizer.apply_chat_template(task.messages(query, hits), add_generation_prompt=True, tokenize=False)
    return text + task.prefill


def _dataset_info(dataset: Dataset, rows: Sequence[TrainingRow], data_fingerprint: str) -> dict[str, Any]:
    info: dict[str, Any] = {"fingerprint": data_fingerprint, "queries": len(rows)}
    if isinstance(dataset, Collection):
        info.update(path=str(dataset.path), split=dataset.split)
    return info


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for name in ("trl", "transformers", "peft", "torch", "deepretrieval"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            pass
    return found


def _import_training_stack() -> None:
    missing = []
    for module in ("torch", "transformers", "trl", "peft", "datasets"):
        try:
            __import__(module)
        except ImportError:
            missing.append(module)
    if missing:
        raise ImportError(f"training needs {missing}: pip install 'deepretrieval[train]'")
