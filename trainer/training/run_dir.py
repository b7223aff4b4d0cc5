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

The folder survives a ``kill -9`` at any moment: run.json and config.yaml are replaced atomically, a metrics line
cut short is skipped when read, and a checkpoint whose ``trainer_state.json`` (the file transformers writes last) is
missing or unreadable, or whose adapter file is not a readable safetensors file, is incomplete: resume moves it aside
and continues from the last complete one, so at most ``save_steps`` steps are lost. A ``checkpoint-*`` folder whose
step is not ASCII digits is ignored, and a run.json that is not a JSON object is read as empty and rewritten.
:meth:`RunDir.check_writable` fails before any model loads (and resume checks it before it moves anything) when the
folder is a file, or its file system is read-only or full.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from ..common.errors import ConfigError
from ..rewriting.card import CARD_FILE, AdapterCard
from .config import TrainConfig

logger = logging.getLogger(__name__)

# a checkpoint's files that are the trainer's state, not the adapter
_TRAINER_STATE = {"optimizer.pt", "scheduler.pt", "rng_state.pth", "trainer_state.json", "training_args.bin"}


_ADAPTER_FILES = ("adapter_model.safetensors", "adapter_model.bin")
PROBE_BYTES = 1 << 20  # written and removed by check_writable: a full disk fails here, not at the first checkpoint
_CHECKPOINT_NAME = re.compile(r"checkpoint-([0-9]+)")  # ASCII digits: str.isdigit() accepts '²', int() does not
_MAX_SAFETENSORS_HEADER = 100 << 20  # the safetensors library's own limit on a header


def checkpoint_step(checkpoint: Path) -> int:
    """The optimizer step a ``checkpoint-N`` folder was saved at."""
    match = _CHECKPOINT_NAME.fullmatch(checkpoint.name)
    if match is None:
        raise ValueError(f"{checkpoint}: not a checkpoint-N folder (N in ASCII digits)")
    return int(match.group(1))


def checkpoint_complete(checkpoint: Path) -> bool:
    """Whether a checkpoint was fully written (see :func:`checkpoint_problem`)."""
    return checkpoint_problem(checkpoint) is None


def checkpoint_problem(checkpoint: Path) -> str | None:
    """Why a checkpoint cannot be resumed from, or None: its trainer_state.json (saved after the adapter, optimizer
    and RNG state) must parse and name the folder's step, and its adapter file must be whole (a safetensors file's
    header parses and describes exactly the bytes that follow it)."""
    try:
        state = json.loads((checkpoint / "trainer_state.json").read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as exc:
        return f"its trainer_state.json is missing or unreadable ({type(exc).__name__})"
    if not isinstance(state, dict) or state.get("global_step") != checkpoint_step(checkpoint):
        return f"its trainer_state.json does not name step {checkpoint_step(checkpoint)}"
    files = [checkpoint / name for name in _ADAPTER_FILES if (checkpoint / name).is_file()]
    if not files:
        return "it holds no adapter file"
    return next((f"{file.name} {problem}" for file in files if (problem := adapter_file_problem(file))), None)


def adapter_file_problem(file: Path) -> str | None:
    """What is wrong with an adapter weights file, or None; reads the header only (a safetensors file is an 8-byte
    little-endian header length, a JSON header, then the tensor bytes; a torch ``.bin`` starts as a zip or a pickle)."""
    try:
        size = file.stat().st_size
        with file.open("rb") as handle:
            head = handle.read(8)
            if file.suffix != ".safetensors":
                return None if head.startswith((b"PK\x03\x04", b"\x80")) else "is not a torch file (zip or pickle)"
            length = int.from_bytes(head, "little") if len(head) == 8 else -1
            if not 2 <= length <= min(size - 8, _MAX_SAFETENSORS_HEADER):
                return "is not a safetensors file (its header length does not fit the file)"
            header = json.loads(handle.read(length))
    except OSError as exc:
        return f"cannot be read ({exc.strerror})"
    except (ValueError, RecursionError):
        return "is not a safetensors file (its header is not JSON)"
    try:
        end = max((int(entry["data_offsets"][1]) for key, entry in header.items() if key != "__metadata__"), default=0)
    except (AttributeError, KeyError, IndexError, TypeError, ValueError):
        return "is not a safetensors file (its header does not describe tensors)"
    if 8 + length + end != size:
        return f"is cut short or padded ({size} bytes; its header describes {8 + length + end})"
    return None


def write_atomically(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` so that a reader, or a kill, never leaves a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, staging = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.replace(staging, path)
    finally:
        if os.path.exists(staging):
            os.unlink(staging)


class RunDir:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path).expanduser()
        self.checkpoints = self.path / "checkpoints"
        self.adapter = self.path / "adapter"
        self.metrics = self.path / "metrics.jsonl"
        self.info = self.path / "run.json"
        self.curve = self.path / "reward_curve.png"
        self._ignored: set[Path] = set()  # checkpoint-* folders not named by a step, warned about once

    def checkpoint_folders(self) -> list[Path]:
        found = []
        for folder in self.checkpoints.glob("checkpoint-*"):
            if not folder.is_dir():
                continue
            if _CHECKPOINT_NAME.fullmatch(folder.name):
                found.append(folder)
            elif folder not in self._ignored:
                self._ignored.add(folder)
                logger.warning("%s is not a checkpoint-N folder (N in ASCII digits): ignored; rename or remove it",
                               folder)
        return sorted(found, key=checkpoint_step)

    def last_checkpoint(self) -> Path | None:
        """The latest completely written checkpoint (see :func:`checkpoint_complete`)."""
        return next((p for p in reversed(self.checkpoint_folders()) if checkpoint_complete(p)), None)

    def set_aside_incomplete(self) -> list[Path]:
        """Move checkpoints newer than the last complete one out of the trainer's way (``.incomplete-...``)."""
        last = self.last_checkpoint()
        moved = []
        for folder in self.checkpoint_folders():
            if last is not None and checkpoint_step(folder) <= checkpoint_step(last):
                continue
            problem = checkpoint_problem(folder)
            if problem is None:
                continue
            target = folder.with_name(f".incomplete-{folder.name}-{int(time.time())}")
            try:
                folder.rename(target)
            except OSError as exc:
                raise ConfigError(f"{folder} cannot be resumed from ({problem}) and cannot be moved aside "
                                  f"({exc.strerror}): make {self.checkpoints} writable, or remove {folder.name}"
                                  ) from None
            logger.warning("%s was not completely written (a crash while saving?): %s; moved to %s; resuming from %s",
                           folder, problem, target.name, last or "step 0")
            moved.append(target)
        return moved

    def check_writable(self, free_bytes: int = PROBE_BYTES) -> None:
        """Fail now, with the fix, if the run folder cannot be created or written, or its disk is (nearly) full."""
        if self.path.exists() and not self.path.is_dir():
            raise ConfigError(f"run_dir={str(self.path)!r} is a file, not a folder: choose a folder for the run "
                              "(it is created if missing), or move the file away")
        probe = self.path / ".write-probe"
        created = False
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            with probe.open("wb") as out:
                created = True
                out.write(b"\0" * PROBE_BYTES)
                out.flush()
                os.fsync(out.fileno())
        except OSError as exc:
            raise ConfigError(_unwritable(self.path, exc)) from None
        finally:
            if created:
                try:
                    probe.unlink(missing_ok=True)
                except OSError as exc:  # never raised over the error above
                    logger.warning("could not remove %s (%s)", probe, exc.strerror)
        free = shutil.disk_usage(self.path).free
        if free < free_bytes:
            raise ConfigError(f"run_dir={str(self.path)!r} has {free / 2**20:.1f} MiB free, and the run needs about "
                              f"{free_bytes / 2**20:.1f} MiB for its checkpoints: free space or choose another run_dir")

    def prepare(self, config: TrainConfig, fingerprint: str) -> Path | None:
        """Check the folder against ``resume``; return the checkpoint to resume from (None: start fresh)."""
        if self.path.exists() and not self.path.is_dir():
            self.check_writable()  # the error that says so
        if not config.resume:
            found = self.checkpoint_folders()
            if found or self.adapter.exists():
                raise ConfigError(
                    f"run_dir={str(self.path)!r} already holds a run ({found[-1] if found else self.adapter}): pass "
                    "resume=True (--resume) to continue it, or choose a new run_dir"
                )
            return None
        self.check_writable()  # before anything is moved: a read-only folder is a ConfigError, not a failed rename
        self.set_aside_incomplete()
        checkpoint = self.last_checkpoint()
        if checkpoint is None:
            logger.warning("resume=True but %s has no complete checkpoint yet: starting from step 0", self.checkpoints)
            return None
        dataset = self.read_info().get("dataset")
        previous = dataset.get("fingerprint") if isinstance(dataset, dict) else None
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

    def write_config(self, config: TrainConfig) -> None:
        import yaml

        write_atomically(self.path / "config.yaml", yaml.safe_dump(config.to_dict(), sort_keys=False))

    def read_info(self) -> dict[str, Any]:
        """run.json's facts; a missing, unreadable or non-object run.json reads as none (and is rewritten whole by
        the next :meth:`write_info`)."""
        try:
            info = json.loads(self.info.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError, RecursionError) as exc:
            logger.warning("%s is unreadable (%s): its facts are ignored and rewritten", self.info, type(exc).__name__)
            return {}
        if not isinstance(info, dict):
            logger.warning("%s holds a JSON %s, not an object: its facts are ignored and rewritten", self.info,
                           type(info).__name__)
            return {}
        return info

    def write_info(self, **facts: Any) -> None:
        info = self.read_info()
        info.update(facts)
        write_atomically(self.info, json.dumps(info, indent=2, default=str) + "\n")

    def append_metrics(self, row: dict[str, Any]) -> None:
        with self.metrics.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(row, default=float) + "\n")

    def read_metrics(self) -> list[dict[str, Any]]:
        """Per-step rows; where a resumed run repeated steps, the latest row of each step wins."""
        if not self.metrics.is_file():
            return []
        rows: dict[int, dict[str, Any]] = {}
        for number, line in enumerate(self.metrics.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            if line.strip():
                try:
                    row = json.loads(line)
                    rows[int(row["step"])] = row
                except (ValueError, KeyError, TypeError):  # a line cut short by a kill: that step is re-run anyway
                    logger.warning("%s:%d is not a complete metrics row; skipped", self.metrics, number)
        return [rows[s] for s in sorted(rows)]

    def plot(self) -> Path | None:
        """Write reward_curve.png from metrics.jsonl (needs matplotlib)."""
        rows = self.read_metrics()
        if not rows:
            return None
        return plot_curves({self.path.name: rows}, self.curve)

    def write_readme(self, card: AdapterCard, *, served_base: str | None = None, name: str = "deepretrieval") -> None:
        """README.md: what the adapter is, how it was searched in training, how to serve it and to continue
        (``served_base``: the base model as ``vllm serve`` loads it on this machine, default the card's)."""
        weight, framing, base_model, task = card.query_weight, card.framing, card.base_model, card.task
        searched = (f"the original query ({weight} times) followed by the rewrite (the LlamaIndex transform and the "
                    f"Haystack component read `adapter/{CARD_FILE}` and search it so)" if framing == "expand"
                    else f"the original query and the rewrite apart, summing each document's scores with the "
                    f"original's times {weight} (the LlamaIndex `DeepRetrievalRetriever` reads `adapter/{CARD_FILE}` "
                    f"and fuses so; in Haystack join two retrievers with `QueryFusionJoiner(query_weight={weight})`, "
                    "docs/haystack.md)" if framing == "fuse" else "the rewrite alone")
        dtype = card.dtype
        text = f"""# DeepRetrieval run: {self.path.name}

LoRA adapter trained with GRPO (TRL) against your retriever, task `{task}`, base model `{base_model}`.
Framing `{framing}`: the reward searched {searched}.
Precision: the base model ran in `{dtype}` (LoRA weights and optimizer state in float32); run.json says why.

- `adapter/` - the peft adapter and its card `{CARD_FILE}` (how it was trained; also inside every
  `checkpoints/checkpoint-N/`): copy the folder anywhere and it is served the way it was trained
- `config.yaml` - the training config; `run.json` - base model, dataset fingerprint, status
- `metrics.jsonl`, `reward_curve.png` - reward, format-valid rate and step time per step

## Serve it

With vLLM through the project (starts `vllm serve`, prints the LlamaIndex and Haystack snippets):

    deepretrieval serve --adapter {self.path}

In-process (CPU is fine for the embedded model):

    from deepretrieval_trainer import LocalRewriter
    rewriter = LocalRewriter(adapter="{self.adapter}")  # base model and prompt from the card

With vLLM directly (the adapter is chosen by model name):

    vllm serve {served_base or base_model} --enable-lora --max-lora-rank 64 --lora-modules {name}={self.adapter}

then point the LlamaIndex transform / Haystack component at that server with model `{name}`.

## Continue training

    deepretrieval train --config {self.path / 'config.yaml'} --resume
"""
        (self.path / "README.md").write_text(text, encoding="utf-8")


def _unwritable(path: Path, exc: OSError) -> str:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return (f"run_dir={str(path)!r}: no space left on its device ({exc.strerror}); free space or choose a "
                "run_dir on another disk")
    return (f"run_dir={str(path)!r} cannot be written ({exc.strerror}): choose a writable run_dir (or fix the "
            "folder's permissions / remount it read-write)")


def plot_curves(runs: dict[str, list[dict[str, Any]]], out: str | Path, *, window: int = 10) -> Path:
    """Per step, for one or more runs (raw and a moving average): the total reward; what the rewrites' retrieval
    gained over the raw query on the same prompts (solid) and over RM3 (dashed, the corpus-steered task), which is
    what a user gets, while the total also counts the format reward; the format-valid rate; the step time."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("total reward", [("reward", "-")]),
              ("retrieval gain over raw (solid) and RM3 (dashed)",
               [("retrieval/gain_over_raw", "-"), ("retrieval/gain_over_rm3", "--")]),
              ("format-valid rate", [("format/valid_rate", "-")]), ("step time (s)", [("step_s", "-")])]
    fig, axes = plt.subplots(1, len(panels), figsize=(20, 4))
    for index, (name, rows) in enumerate(runs.items()):
        color = f"C{index % 10}"
        steps = [r["step"] for r in rows]
        for ax, (_, series) in zip(axes, panels, strict=True):
            for key, style in series:
                pairs = [(s, r.get(key)) for s, r in zip(steps, rows, strict=True) if r.get(key) is not None]
                if not pairs:
                    continue
                xs, ys = zip(*pairs, strict=True)
                ax.plot(xs, ys, alpha=0.25, color=color, linestyle=style)
                smooth = [sum(ys[max(0, i - window + 1) : i + 1]) / len(ys[max(0, i - window + 1) : i + 1])
                          for i in range(len(ys))]
                ax.plot(xs, smooth, color=color, linestyle=style, label=name if style == "-" else None)
    for ax, (title, _) in zip(axes, panels, strict=True):
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    axes[1].axhline(0.0, color="black", linewidth=0.8)
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
