"""TRL's GRPOTrainer with per-step timing, plus the callback that writes metrics.jsonl and draws the progress bar.

Imported only when training starts (it imports torch, transformers and trl).
"""

from __future__ import annotations

import logging
import time
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

    def _mode(self) -> str:
        return "train" if self.model.training else "eval"

    def _generate(self, prompts: list):
        start = time.perf_counter()
        result = super()._generate(prompts)
        self._metrics[self._mode()]["time/generation_s"].append(time.perf_counter() - start)
        return result

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        start = time.perf_counter()
        result = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        self._metrics[self._mode()]["time/rewards_s"].append(time.perf_counter() - start)
        return result


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
        self.run_dir.append_metrics(row)
        if self.bar is not None:
            self.bar.n = state.global_step
            self.bar.set_postfix(_postfix(row), refresh=True)
        if self.plot_every and state.global_step % self.plot_every == 0:
            self._plot()

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
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
