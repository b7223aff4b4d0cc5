"""TRL's GRPOTrainer with per-step timing, plus the callback that writes metrics.jsonl and draws the progress bar.

Imported only when training starts (it imports torch, transformers and trl).
"""

from __future__ import annotations

import logging
import resource
import time
from pathlib import Path
from typing import Any

from transformers import TrainerCallback
from trl import GRPOTrainer

from .run_dir import RunDir, StepClock

logger = logging.getLogger(__name__)


class TimedGRPOTrainer(GRPOTrainer):
    """GRPOTrainer that also logs how long generation and reward scoring take in each step.

    ``time/generation_s``: sampling the completions; ``time/rewards_s``: the reward functions (search included;
    the retrieval reward logs its own ``search/time_s``); the callback adds ``step_s`` for the whole step, and
    ``time/backward_s`` = step - generation - rewards (log-probs, loss, backward and the optimizer update).
    """

    def __init__(self, *args, stop: tuple[str, ...] = (), merged_sampling: bool = True, lean_decoding: bool = True,
                 share_prompts: bool = True, drop_uniform_groups: bool = False, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.stop = tuple(stop)
        self.merged_sampling = merged_sampling
        self.lean_decoding = lean_decoding
        self._lean_reason: str | None = None  # why lean decoding fell back to generate(), logged once
        self.share_prompts = share_prompts
        self.drop_uniform_groups = drop_uniform_groups
        if drop_uniform_groups and self.args.steps_per_generation != 1:
            raise ValueError("drop_uniform_groups needs one optimizer step per generation batch "
                             f"(steps_per_generation={self.args.steps_per_generation}): set gradient_accumulation_steps=1")
        self._uniform_rows = None
        self._twin = None

    def _mode(self) -> str:
        return "train" if self.model.training else "eval"

    def _get_per_token_logps_and_entropies(self, model, input_ids, attention_mask, logits_to_keep, batch_size=None,
                                           compute_entropy=False, compute_aux_loss=False, **multimodal):
        """Each prompt once per group (deepretrieval_trainer.training.prompt_sharing); TRL's full-sequence path otherwise."""
        plain = not any(v is not None for v in multimodal.values()) and not compute_aux_loss
        if not (self.share_prompts and plain and not self.args.gradient_checkpointing):
            return super()._get_per_token_logps_and_entropies(
                model, input_ids, attention_mask, logits_to_keep, batch_size=batch_size,
                compute_entropy=compute_entropy, compute_aux_loss=compute_aux_loss, **multimodal)
        from .prompt_sharing import shared_prompt_logps

        logps, entropies = shared_prompt_logps(model, input_ids, attention_mask, logits_to_keep,
                                               autocast=self.accelerator.autocast, compute_entropy=compute_entropy)
        return logps, entropies, None

    def _generate_single_turn(self, prompt_ids, images, multimodal_fields, num_generations, has_tool_images=False):
        """Sample from the merged twin of the policy (deepretrieval_trainer.rewriting.generation), stopping at the task's stop
        strings, through ``lean_generate`` (``lean_decoding``, where it implements the generation settings) or
        transformers' ``generate``; TRL's own path for vLLM, continuous batching, images, or ``merged_sampling=False``."""
        plain_text = not multimodal_fields and not (images and any(i is not None for i in images))
        if self.use_vllm or self.use_transformers_continuous_batching or not plain_text or not self.merged_sampling:
            return super()._generate_single_turn(prompt_ids, images, multimodal_fields, num_generations,
                                                 has_tool_images)
        import torch
        from trl.trainer.utils import pad

        from ..rewriting.generation import LoopStop, MergedTwin, StopRecorder, cut_completions, lean_generate

        if self._twin is None:
            self._twin = MergedTwin(self.accelerator.unwrap_model(self.model))
        self._twin.refresh(self.state.global_step)
        prompts = [torch.tensor(ids) for ids in prompt_ids]
        input_ids = pad(prompts, padding_value=self._tokenizer.pad_token_id, padding_side="left")
        attention_mask = pad([torch.ones_like(t) for t in prompts], padding_value=0, padding_side="left")
        device = self.accelerator.device
        stopping = [StopRecorder(self._tokenizer, self.stop, input_ids.shape[1], len(prompts))] if self.stop else []
        stopping.append(LoopStop())  # a row that loops has said what it will say (the parser cuts the loop)
        lean = self.lean_decoding and not self._lean_fallback()
        with torch.no_grad():
            if lean:
                generated = lean_generate(self._twin.model, input_ids.to(device), attention_mask.to(device),
                                          self.generation_config, stopping_criteria=stopping)
            else:
                generated = self._twin.model.generate(
                    input_ids=input_ids.to(device), attention_mask=attention_mask.to(device),
                    generation_config=self.generation_config, stopping_criteria=stopping)
        lengths = stopping[0].lengths if self.stop else [None] * len(prompts)
        return cut_completions(generated[:, input_ids.shape[1]:], self.eos_token_ids, lengths), None

    def _lean_fallback(self) -> bool:
        """True (and logged once) where lean_generate does not implement this run's generation settings."""
        if self._lean_reason is None:
            from ..rewriting.generation import lean_unsupported

            self._lean_reason = lean_unsupported(self.generation_config, self._twin.model) or ""
            if self._lean_reason:
                logger.warning("sampler 'lean' falls back to transformers' generate(): %s", self._lean_reason)
        return bool(self._lean_reason)

    def _generate(self, prompts: list):
        start = time.perf_counter()
        result = super()._generate(prompts)
        self._metrics[self._mode()]["time/generation_s"].append(time.perf_counter() - start)
        return result

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        start = time.perf_counter()
        result = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        self._metrics[self._mode()]["time/rewards_s"].append(time.perf_counter() - start)
        if self.drop_uniform_groups and self._mode() == "train":
            weights = self.reward_weights if self.multi_objective_aggregation == "sum_then_normalize" else None
            self._uniform_rows = uniform_group_rows(result, self.num_generations, weights)  # every process's rows
        return result

    def _generate_and_score_completions(self, inputs):
        output = super()._generate_and_score_completions(inputs)
        if not (self.drop_uniform_groups and self._mode() == "train"):
            return output
        uniform, self._uniform_rows = self._uniform_rows, None
        rows = output["completion_ids"].shape[0]
        start = self.accelerator.process_index * rows
        keep = ~uniform[start:start + rows].to(output["completion_ids"].device)
        self._metrics["train"]["uniform_groups/dropped_frac"].append(1.0 - keep.float().mean().item())
        if not keep.any():  # nothing to learn from: one group stays, so the step still runs (its KL term only)
            keep[:min(self.num_generations, rows)] = True
        kept = drop_rows(output, keep)
        loss_mask = kept["completion_mask"] if "tool_mask" not in kept else kept["completion_mask"] * kept["tool_mask"]
        kept["num_items_in_batch"] = self.accelerator.gather(loss_mask.sum()).sum()
        return kept


def uniform_group_rows(rewards_per_func, num_generations: int, weights=None):
    """Rows of the groups whose samples all got the same reward, so that each of their advantages is exactly 0.

    ``weights`` given (TRL's ``sum_then_normalize``): the weighted sum over the reward functions is compared, as TRL
    normalises it (a row no function scored is left out of its group's mean, as TRL does). ``weights`` None
    (``normalize_then_sum``): every function's rewards must be alike within the group (NaNs aside).

    GRPO's advantage is the sample's reward minus its group's mean, so such a group adds nothing to the policy
    gradient under any ``scale_rewards``, only backward work (and, with ``beta`` > 0, its KL term). DAPO's dynamic
    sampling drops these groups; this is its filter, without resampling.
    """
    import torch

    if weights is not None:
        missing_row = torch.isnan(rewards_per_func).all(dim=1)
        total = (rewards_per_func * weights.to(rewards_per_func.device).unsqueeze(0)).nansum(dim=1)
        rewards_per_func = total.masked_fill(missing_row, float("nan")).unsqueeze(1)
    values = rewards_per_func.view(-1, num_generations, rewards_per_func.shape[-1])
    missing = torch.isnan(values)
    high = torch.where(missing, float("-inf"), values).amax(dim=1)
    low = torch.where(missing, float("inf"), values).amin(dim=1)
    uniform = (high <= low).all(dim=1)  # all-NaN columns count as uniform (high -inf <= low inf)
    return uniform.repeat_interleave(num_generations)


# the per-sequence tensors of a GRPO batch whose second axis is the completion's tokens
_COMPLETION_AXIS = ("completion_ids", "completion_mask", "old_per_token_logps", "ref_per_token_logps",
                    "sampling_per_token_logps", "tool_mask", "importance_sampling_ratio")
_TEXT_KEYS = set(_COMPLETION_AXIS) | {"prompt_ids", "prompt_mask", "advantages", "num_items_in_batch"}


def drop_rows(batch: dict, keep) -> dict:
    """``batch`` (TRL's output of ``_generate_and_score_completions``) with only the rows where ``keep`` is True, and
    the completion padding no kept row uses cut off on the right. The prompts' left padding stays: cutting it would
    shift the position ids that the reference (and old) log-probabilities were computed with."""
    extra = set(batch) - _TEXT_KEYS
    if extra:
        raise NotImplementedError(f"drop_uniform_groups handles text-only batches; this one also has {sorted(extra)}")
    rows = keep.shape[0]
    out = {key: value[keep] if hasattr(value, "dim") and value.dim() >= 1 and value.shape[0] == rows else value
           for key, value in batch.items()}
    used = out["completion_mask"].bool().any(dim=0).nonzero()
    width = int(used[-1]) + 1 if len(used) else 1
    for key in _COMPLETION_AXIS:
        value = out.get(key)
        if value is not None and value.dim() == 2 and value.shape[1] == batch["completion_ids"].shape[1]:
            out[key] = value[:, :width]
    return out


class RunCallback(TrainerCallback):
    """Writes one metrics.jsonl row per step, refreshes the reward curve at each save, shows a progress bar."""

    def __init__(self, run_dir: RunDir, *, plot_every: int = 10, show_progress: bool = True,
                 max_minutes: float | None = None) -> None:
        self.run_dir = run_dir
        self.max_minutes = max_minutes
        self.clock = StepClock()
        self.plot_every = plot_every
        self.show_progress = show_progress
        self.bar = None
        self.started = time.perf_counter()
        self.card = None  # the adapter card (deepretrieval_trainer.rewriting.card), written into each checkpoint

    def on_train_begin(self, args, state, control, **kwargs):
        self.started = time.perf_counter()
        if state.is_world_process_zero and self.show_progress:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=state.max_steps, initial=state.global_step, desc="GRPO", unit="step")

    def on_step_begin(self, args, state, control, **kwargs):
        self.clock.begin()

    def on_step_end(self, args, state, control, **kwargs):
        self.clock.end()
        if self.max_minutes is not None and time.perf_counter() - self.started > 60 * self.max_minutes:
            logger.info("max_minutes=%s reached at step %d: stopping", self.max_minutes, state.global_step)
            control.should_training_stop = True
            control.should_save = True

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs or "reward" not in logs:
            return
        row: dict[str, Any] = {"step": state.global_step, **logs}
        if self.clock.last_s is not None:
            row["step_s"] = self.clock.last_s
            parts = [row.get("time/generation_s"), row.get("time/rewards_s")]
            if all(isinstance(p, float) for p in parts):
                row["time/backward_s"] = max(self.clock.last_s - sum(parts), 0.0)
        row["wall_s"] = time.perf_counter() - self.started
        row["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # so far, this process
        self.run_dir.append_metrics(row)
        if self.bar is not None:
            self.bar.n = state.global_step
            self.bar.set_postfix(_postfix(row), refresh=True)
        if self.plot_every and state.global_step % self.plot_every == 0:
            self._plot()

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            if self.card is not None:
                self.card.write(Path(args.output_dir) / f"checkpoint-{state.global_step}")
            self._plot()

    def on_train_end(self, args, state, control, **kwargs):
        self.close()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def _plot(self) -> None:
        try:
            self.run_dir.plot()
        except Exception as exc:  # noqa: BLE001 - a plotting problem must never stop training
            logger.warning("could not draw %s: %s", self.run_dir.curve, exc)


def _postfix(row: dict[str, Any]) -> dict[str, str]:
    shown = {"reward": "reward", "format/valid_rate": "valid", "step_s": "step_s", "search/time_s": "search_s"}
    return {label: f"{row[key]:.3g}" for key, label in shown.items() if isinstance(row.get(key), (int, float))}
