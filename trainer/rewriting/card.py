"""The adapter card: how an adapter was trained, in a small JSON file beside peft's files.

An adapter is only as good as the way it is searched: the prompt it saw (its task, and the first-pass feedback shown
in it), and how the reward searched its rewrites (``framing`` and ``query_weight``). peft's files record none of
that, so training writes :data:`CARD_FILE` into the run's ``adapter/`` and into every ``checkpoints/checkpoint-N/``.
``deepretrieval eval``, ``deepretrieval serve``, :class:`~.rewriters.LocalRewriter` and both plugins read it from the
adapter folder, so a folder copied anywhere is searched the way it was trained.

An adapter without a card (trained before cards existed, or by another tool) still loads: :func:`read_card` then
builds the card from the run's ``config.yaml`` when the folder is a run's ``adapter/``, and otherwise returns None,
and the callers use their own defaults and log which.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..common.fields import check_fields
from ..common.models import EMBEDDED_NAME
from ..common.precision import DTYPES
from ..retrieval.framing import FRAMINGS, check_framing
from .feedback import Feedback
from .tasks import TASKS, Task, get_task, with_feedback

logger = logging.getLogger(__name__)

CARD_FILE = "deepretrieval_card.json"
CARD_VERSION = 1
MAX_CARD_BYTES = 64 * 1024  # a card is a few hundred bytes: anything much larger is not one


class CardError(ValueError):
    """An adapter card that cannot be read, naming the file and the fix."""


@dataclass(frozen=True)
class AdapterCard:
    """What serving an adapter needs: its ``base_model`` (a model id, a path, or ``smollm2-135m-instruct`` for the
    embedded model), the built-in ``task`` and the ``feedback`` format its prompt showed (None: query-only), the
    ``framing`` and ``query_weight`` the reward searched with, the ``dtype`` training ran in, and the ``retriever``
    (the SearchBackend class) it was trained against."""

    base_model: str = EMBEDDED_NAME
    task: str = "retrieval"
    framing: str = "replace"
    query_weight: int = 1
    feedback: Feedback | None = None
    dtype: str = "float32"
    retriever: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.feedback, dict):
            try:
                object.__setattr__(self, "feedback", Feedback(**self.feedback))
            except TypeError as exc:
                raise CardError(f"feedback={self.feedback!r}: {exc}; give docs, field and max_chars") from None
        check_fields(self, error=CardError)
        if self.task not in TASKS:
            raise CardError(f"task={self.task!r} is not a built-in task: choose one of {sorted(TASKS)}")
        if self.framing not in FRAMINGS:
            raise CardError(f"framing={self.framing!r}: choose one of {list(FRAMINGS)}")
        try:
            check_framing(self.framing, self.query_weight)
        except ValueError as exc:
            raise CardError(str(exc)) from None
        if self.dtype not in DTYPES or self.dtype == "auto":
            raise CardError(f"dtype={self.dtype!r}: the precision training ran in, one of "
                            f"{[d for d in DTYPES if d != 'auto']}")

    def prompt_task(self) -> Task:
        """The task the adapter was trained on, with its feedback format: what its prompts must be built with."""
        task = get_task(self.task)
        return with_feedback(task, self.feedback) if self.feedback is not None else task

    def describe(self) -> str:
        """One line for logs: the prompt and how the rewrite is searched."""
        prompt = f"task {self.task!r}" + (f" with the top {self.feedback.docs} first-pass {self.feedback.field}s"
                                          if self.feedback else "")
        searched = ("the rewrite alone" if self.framing == "replace"
                    else f"{self.framing} with query_weight {self.query_weight}")
        return f"base {self.base_model}, {prompt}, searched as {searched}, trained in {self.dtype}"

    def mismatch(self, retriever: str) -> str | None:
        """Why searching this adapter through ``retriever`` (a SearchBackend class name) may not rank as training
        did, or None. ``expand`` with a query weight above 1 and ``steer`` write their weights as repeated words,
        which a bm25s-based retriever (LlamaIndex's ``BM25Retriever``, the core ``BM25Search``) counts each time and
        Haystack's in-memory BM25 counts once; ``fuse`` carries its weight in the scores, so any retriever keeps it."""
        weighted = self.framing == "steer" or (self.framing == "expand" and self.query_weight > 1)
        if not weighted or not self.retriever or self.retriever == retriever:
            return None
        return (f"this adapter was trained through {self.retriever} with framing {self.framing} (query_weight "
                f"{self.query_weight}), whose weights are written as repeated words; {retriever} may count a "
                "repeated word once (Haystack's in-memory BM25 does), so it may rank otherwise than training did: "
                "evaluate it through the retriever it was trained through, or train one through this retriever "
                "(framing fuse keeps the query's weight in any retriever)")

    def to_dict(self) -> dict[str, Any]:
        return {"version": CARD_VERSION, **dataclasses.asdict(self)}

    @classmethod
    def from_dict(cls, values: dict[str, Any], *, source: str = "card") -> AdapterCard:
        """Build from a parsed card; keys of a newer version are logged and ignored."""
        if not isinstance(values, dict):
            raise CardError(f"{source}: a card is a JSON object, got {type(values).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known - {"version"})
        if unknown:
            logger.warning("%s: ignoring unknown card keys %s (written by a newer version?)", source, unknown)
        try:
            return cls(**{k: v for k, v in values.items() if k in known})
        except CardError as exc:
            raise CardError(f"{source}: {exc}") from None

    def write(self, folder: str | Path) -> Path:
        """Write the card into ``folder`` (replacing any), atomically."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / CARD_FILE
        handle, staging = tempfile.mkstemp(prefix=f".{CARD_FILE}-", dir=folder)
        try:
            with os.fdopen(handle, "w", encoding="utf-8") as out:
                out.write(json.dumps(self.to_dict(), indent=2) + "\n")
            os.replace(staging, target)
        finally:
            if os.path.exists(staging):
                os.unlink(staging)
        return target


def model_name(model: str | Path | None) -> str:
    """How a card names a base model: the embedded model by its name wherever its checkpoint was prepared (a cache
    path on one machine is not on another), any other model as given."""
    if model is None or str(model) == "embedded" or Path(str(model)).name == EMBEDDED_NAME:
        return EMBEDDED_NAME
    return str(model)


def read_card(adapter: str | Path) -> AdapterCard | None:
    """The card of the adapter folder ``adapter``: its :data:`CARD_FILE`; for a run's ``adapter/`` without one, the
    card its run's ``config.yaml`` implies; else None. A card file that is unreadable is a :class:`CardError`."""
    folder = Path(adapter)
    file = folder / CARD_FILE
    if file.is_file():
        if file.stat().st_size > MAX_CARD_BYTES:
            raise CardError(f"{file}: {file.stat().st_size} bytes is not an adapter card; delete it, or retrain")
        try:
            values = json.loads(file.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError, RecursionError) as exc:
            raise CardError(f"{file}: not a readable card ({type(exc).__name__}); delete it to fall back to the "
                            "defaults, or copy it again from the training run") from None
        return AdapterCard.from_dict(values, source=str(file))
    return _card_from_run_config(folder)


def _card_from_run_config(adapter: Path) -> AdapterCard | None:
    """A run folder written before cards: the settings its ``config.yaml`` (beside ``adapter/``) holds."""
    config = adapter.parent / "config.yaml"
    if adapter.name != "adapter" or not config.is_file():
        return None
    import yaml

    from ..common.errors import ConfigError
    from ..common.yaml_files import load_yaml

    try:
        values = load_yaml(config.read_text(encoding="utf-8")[:MAX_CARD_BYTES], source=str(config)) or {}
    except ConfigError as exc:  # aliases that repeat too much: the defaults, as for any unreadable config
        logger.warning("%s; using the defaults for %s", exc, adapter)
        return None
    except (yaml.YAMLError, UnicodeDecodeError, RecursionError):
        return None
    if not isinstance(values, dict):
        return None
    docs = values.get("feedback_docs") or 0
    dtype = _trained_dtype(adapter.parent, values.get("dtype"))
    try:
        card = AdapterCard(base_model=model_name(values.get("model")), task=values.get("task") or "retrieval",
                           framing=values.get("framing") or "replace", query_weight=values.get("query_weight") or 1,
                           feedback=Feedback(docs=docs) if docs else None, dtype=dtype)
    except (CardError, ValueError):
        return None
    logger.info("%s has no %s: read how it was trained from %s (%s)", adapter, CARD_FILE, config, card.describe())
    return card


def _trained_dtype(run: Path, setting: Any) -> str:
    """The dtype a run trained in: run.json's resolved precision, else the config's setting unless ``auto``."""
    try:
        recorded = json.loads((run / "run.json").read_text(encoding="utf-8")[:MAX_CARD_BYTES])["precision"]["dtype"]
    except (OSError, ValueError, KeyError, TypeError, RecursionError):
        recorded = None
    for value in (recorded, setting):
        if value in ("float32", "bfloat16"):
            return value
    return "float32"
