"""The task-neutral GRPO engine: from a checked run folder to a saved adapter, for every task that trains.

Retrieval training (:mod:`.retrieval`) and text-to-SQL training (:mod:`deepretrieval_trainer.sql.train`) differ only
in their prompts and rewards. Everything else is here: the batch check, the one precision decision of the run,
TRL's ``GRPOConfig``, the timed trainer with its LoRA config and run callback, the training loop with Ctrl-C saving
and resumable failures, and the chat-template prompt text.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ..common.errors import ConfigError, TrainingError
from ..retrieval.search import DocumentHit, SearchBackend
from ..rewriting.card import AdapterCard, model_name
from ..rewriting.tasks import QueryInput, Task
from .config import TrainConfig
from .run_dir import RunDir, checkpoint_step

logger = logging.getLogger(__name__)


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


def run_training(config: TrainConfig, task: Task, run: RunDir, checkpoint: Path | None,
                 build: Callable[[str, str], tuple[Any, Any]], *, retriever: str, dataset_info: dict[str, Any],
                 search_backend: SearchBackend | None = None, framing: str = "replace", query_weight: int = 1) -> Path:
    """The part every task's training shares, once the data and the run folder are checked: load the stack, decide
    the precision, record the run, ``build(base_model, dtype) -> (trainer, callback)``, train (resuming from
    ``checkpoint``), and save the adapter with its card (``framing`` and ``query_weight``: how the reward searched the
    rewrites; :mod:`deepretrieval_trainer.rewriting.card`). Ctrl-C saves the adapter reached so far; any other failure
    raises a :class:`TrainingError` that keeps the last checkpoint and says to ``--resume`` (naming
    ``search_backend`` when it raised)."""
    if is_main_process():
        run.check_writable()  # a read-only or full disk fails now, not at the first checkpoint
    _import_training_stack()
    if config.torch_threads is not None:
        import torch

        torch.set_num_threads(config.torch_threads)

    from ..common.models import resolve_model
    from ..common.precision import describe, resolve_dtype

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
    card = AdapterCard(base_model=model_name(config.model), task=task.name, framing=framing,
                       query_weight=query_weight, feedback=task.feedback, dtype=dtype, retriever=retriever)
    trainer, callback = build(base_model, dtype)
    callback.card = card  # written into every checkpoint it saves
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
        card.write(run.adapter)
        run.write_info(status=status, steps=trainer.state.global_step, wall_s=round(time.perf_counter() - start, 1))
        callback._plot()
        run.write_readme(card, served_base=base_model)
        logger.info("%s after %d steps: adapter in %s", status, trainer.state.global_step, run.adapter)
    return run.adapter


def checkpoint_bytes(trainer) -> int:
    """About how much one checkpoint takes: the trainable weights, Adam's two moments, the small state files."""
    trainable = sum(p.numel() * p.element_size() for p in trainer.model.parameters() if p.requires_grad)
    return 3 * trainable + (1 << 20)


def training_failed(exc: Exception, search_backend: SearchBackend | None, run: RunDir, step: int) -> TrainingError:
    """The error to raise when a training step fails, recorded in run.json; it names the retriever when it raised
    (``search_backend`` None: a task whose reward searches no retriever, e.g. SQL)."""
    from ..common.redaction import redact

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

    from ..common.precision import resolve_dtype

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


def prompt_text(tokenizer, task: Task, query: QueryInput, hits: Sequence[DocumentHit] | None = None) -> str:
    """The plain-text prompt (chat template + the task's prefill), so TRL treats it as non-conversational text;
    ``hits``: the query's first-pass documents, for a feedback task."""
    text = tokenizer.apply_chat_template(task.messages(query, hits), add_generation_prompt=True, tokenize=False)
    return text + task.prefill


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
