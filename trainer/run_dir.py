"""A training run's folder: config, run facts, per-step metrics, the reward curve and how to serve the adapter.

```
RUN_DIR/
  config.yaml        the TrainConfig of the run
  run.json           base model, dataset fingerprint, retriever, status, versions
  metrics.jsonl      one JSON object per optimizer step (TRL's logs plus search and timing figures)
  reward_curve.png   reward, format-valid rate and step time per step
  checkpoints/       TRL checkpoints (checkpoint-N, each with a peft adapter): what resume continues from
  adapter/           the final peft LoRA adapter (also written on Ctrl-C)
  README.md          how to serve the adapter
```
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any

from .config import ConfigError, TrainConfig

logger = logging.getLogger(__name__)

CURVE_KEYS = ("reward", "format/valid_rate", "step_s")
# a checkpoint's files that are the trainer's state, not the adapter
_TRAINER_STATE = {"optimizer.pt", "scheduler.pt", "rng_state.pth", "trainer_state.json", "training_args.bin"}


def checkpoint_step(checkpoint: Path) -> int:
    """The optimizer step a ``checkpoint-N`` folder was saved at."""
    return int(checkpoint.name.split("-")[-1])


class RunDir:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path).expanduser()
        self.checkpoints = self.path / "checkpoints"
        self.adapter = self.path / "adapter"
        self.metrics = self.path / "metrics.jsonl"
        self.info = self.path / "run.json"
        self.curve = self.path / "reward_curve.png"

    def last_checkpoint(self) -> Path | None:
        found = [p for p in self.checkpoints.glob("checkpoint-*") if p.is_dir() and p.name.split("-")[-1].isdigit()]
        return max(found, key=checkpoint_step, default=None)

    def prepare(self, config: TrainConfig, fingerprint: str) -> Path | None:
        """Check the folder against ``resume``; return the checkpoint to resume from (None: start fresh)."""
        checkpoint = self.last_checkpoint()
        if not config.resume:
            if checkpoint is not None or self.adapter.exists():
                raise ConfigError(
                    f"run_dir={str(self.path)!r} already holds a run ({checkpoint or self.adapter}): pass resume=True "
                    "(--resume) to continue it, or choose a new run_dir"
                )
            return None
        if checkpoint is None:
            logger.warning("resume=True but %s has no checkpoint yet: starting from step 0", self.checkpoints)
            return None
        previous = self.read_info().get("dataset", {}).get("fingerprint")
        if previous and previous != fingerprint:
            logger.warning("resuming %s on different data (fingerprint %s, the run had %s)", self.path, fingerprint,
                           previous)
        logger.info("resuming from %s", checkpoint)
        return checkpoint

    def finished_adapter(self, checkpoint: Path, *, write: bool = True) -> Path:
        """The adapter of a run whose last checkpoint already reached max_steps: nothing left to train.

        The checkpoint holds the final peft adapter; it is copied to ``adapter/``, which may be missing or older
        (a crash between the last checkpoint and the final save, or an earlier Ctrl-C), and run.json says
        ``completed``. ``write=False`` (processes other than the main one) only returns the folder.
        """
        if write:
            self.adapter.mkdir(parents=True, exist_ok=True)
            for item in checkpoint.iterdir():
                if item.is_file() and item.name not in _TRAINER_STATE:
                    shutil.copy2(item, self.adapter / item.name)
            self.write_info(status="completed", steps=checkpoint_step(checkpoint))
        logger.warning("%s already reached max_steps (%s): nothing to train; raise max_steps to continue",
                       self.path, checkpoint.name)
        return self.adapter

    def read_info(self) -> dict[str, Any]:
        try:
            return json.loads(self.info.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}

    def write_info(self, **facts: Any) -> None:
        info = self.read_info()
        info.update(facts)
        self.path.mkdir(parents=True, exist_ok=True)
        self.info.write_text(json.dumps(info, indent=2, default=str) + "\n", encoding="utf-8")

    def append_metrics(self, row: dict[str, Any]) -> None:
        with self.metrics.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(row, default=float) + "\n")

    def read_metrics(self) -> list[dict[str, Any]]:
        """Per-step rows; where a resumed run repeated steps, the latest row of each step wins."""
        if not self.metrics.is_file():
            return []
        rows: dict[int, dict[str, Any]] = {}
        for line in self.metrics.read_text(encoding="utf-8").splitlines():
            if line.strip():
                row = json.loads(line)
                rows[int(row["step"])] = row
        return [rows[s] for s in sorted(rows)]

    def plot(self) -> Path | None:
        """Write reward_curve.png from metrics.jsonl (needs matplotlib)."""
        rows = self.read_metrics()
        if not rows:
            return None
        return plot_curves({self.path.name: rows}, self.curve)

    def write_readme(self, *, base_model: str, task: str, framing: str = "replace", name: str = "deepretrieval",
                     dtype: str = "float32") -> None:
        searched = ("the original query followed by the rewrite (deploy it the same way: the LlamaIndex transform's "
                    '`mode="expand"`)' if framing == "expand" else "the rewrite alone")
        text = f"""# DeepRetrieval run: {self.path.name}

LoRA adapter trained with GRPO (TRL) against your retriever, task `{task}`, base model `{base_model}`.
Framing `{framing}`: the reward searched {searched}.
Precision: the base model ran in `{dtype}` (LoRA weights and optimizer state in float32); run.json says why.

- `adapter/` - the peft adapter (also inside every `checkpoints/checkpoint-N/`)
- `config.yaml` - the training config; `run.json` - base model, dataset fingerprint, status
- `metrics.jsonl`, `reward_curve.png` - reward, format-valid rate and step time per step

## Serve it

With vLLM through the project (starts `vllm serve`, prints the LlamaIndex and Haystack snippets):

    deepretrieval serve --adapter {self.path}

In-process (CPU is fine for the embedded model):

    from deepretrieval_trainer import LocalRewriter
    rewriter = LocalRewriter("{base_model}", adapter="{self.adapter}", task="{task}")

With vLLM directly (the adapter is chosen by model name):

    vllm serve {base_model} --enable-lora --max-lora-rank 64 --lora-modules {name}={self.adapter}

then point the LlamaIndex transform / Haystack component at that server with model `{name}`.

## Continue training

    deepretrieval train --config {self.path / 'config.yaml'} --resume
"""
        (self.path / "README.md").write_text(text, encoding="utf-8")


def plot_curves(runs: dict[str, list[dict[str, Any]]], out: str | Path, *, window: int = 10) -> Path:
    """Reward, format-valid rate and step time per step (raw and a moving average) for one or more runs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    titles = {"reward": "total reward", "format/valid_rate": "format-valid rate", "step_s": "step time (s)"}
    for name, rows in runs.items():
        steps = [r["step"] for r in rows]
        for ax, key in zip(axes, CURVE_KEYS, strict=True):
            values = [r.get(key) for r in rows]
            pairs = [(s, v) for s, v in zip(steps, values, strict=True) if v is not None]
            if not pairs:
                continue
            xs, ys = zip(*pairs, strict=True)
            line = ax.plot(xs, ys, alpha=0.3)[0]
            smooth = [sum(ys[max(0, i - window + 1) : i + 1]) / len(ys[max(0, i - window + 1) : i + 1])
                      for i in range(len(ys))]
            ax.plot(xs, smooth, color=line.get_color(), label=name)
    for ax, key in zip(axes, CURVE_KEYS, strict=True):
        ax.set_title(titles[key])
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    out = Path(out)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


class StepClock:
    """Wall time of each optimizer step (the whole step, optimizer update included)."""

    def __init__(self) -> None:
        self.started: float | None = None
        self.last_s: float | None = None

    def begin(self) -> None:
        self.started = time.perf_counter()

    def end(self) -> None:
        if self.started is not None:
            self.last_s = time.perf_counter() - self.started
