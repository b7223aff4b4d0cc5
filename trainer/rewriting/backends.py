"""A model backend from its command-line form: ``base``, ``adapter:PATH`` or ``server:URL#MODEL``.

Retrieval evaluation (:mod:`deepretrieval_trainer.evaluation.sources`) and SQL evaluation
(:mod:`deepretrieval_trainer.sql.evaluate`) name their model sources the same way, and both build them here:

- ``base``: the untrained ``model`` in-process, prompted with ``task``;
- ``adapter:PATH``: a peft adapter folder (or a training run folder, whose ``adapter/`` is used) in-process, on the
  base model and with the prompt its card names (:mod:`.card`; ``model`` and ``task`` when it has none);
- ``server:URL#MODEL``: an OpenAI-compatible server (vLLM) serving MODEL, a LoRA module name.

:attr:`Backend.identity` names everything that determines the completions (model, adapter weights, prompt,
decoding), so callers can cache them under it.
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from pathlib import Path

from .card import AdapterCard
from .rewriters import BaseRewriter
from .tasks import Task, get_task

logger = logging.getLogger(__name__)

FORMS = "base, adapter:PATH or server:URL#MODEL"


@dataclass
class Backend:
    """A built backend: the default ``label`` of its source, the ``rewriter``, the cache ``identity`` and the
    adapter's ``card`` (None: no adapter, or an adapter without one)."""

    label: str
    rewriter: BaseRewriter
    identity: str
    card: AdapterCard | None = None


def is_backend(spec: str) -> bool:
    """Whether ``spec`` has one of the forms :func:`build_backend` builds."""
    kind, _, arg = spec.partition(":")
    return (kind == "base" and not arg) or (kind == "adapter" and bool(arg)) or (kind == "server" and "#" in arg)


def build_backend(spec: str, *, model: str | None = None, task: str | Task = "retrieval", max_new_tokens: int = 128,
                  batch_size: int = 8, dtype: str = "auto") -> Backend:
    """The backend ``spec`` names (see the module docstring); ``model``, ``task``, ``max_new_tokens``,
    ``batch_size`` and ``dtype`` configure it."""
    kind, _, arg = spec.partition(":")
    if kind == "base" and not arg:
        return _local("base", None, model, get_task(task), max_new_tokens, batch_size, dtype)
    if kind == "adapter" and arg:
        adapter = find_adapter(arg)
        label = adapter.parent.name if adapter.name == "adapter" else adapter.name
        return _local(f"adapter:{safe_name(label)}", adapter, model, get_task(task), max_new_tokens, batch_size,
                      dtype)
    if kind == "server" and "#" in arg:
        url, _, served = arg.rpartition("#")
        from .openai_compat import OpenAIRewriter

        rewriter = OpenAIRewriter(served, base_url=url, task=get_task(task), max_tokens=max_new_tokens)
        identity = f"server|{url}|{served}|{task_id(rewriter.task)}|max_new_tokens={max_new_tokens}|greedy"
        return Backend(f"server:{safe_name(served)}", rewriter, identity)
    raise ValueError(f"model source {spec!r} not understood: use {FORMS}")


def _local(label: str, adapter: Path | None, model: str | None, task: Task, max_new_tokens: int, batch_size: int,
           dtype: str) -> Backend:
    from ..common.models import resolve_model
    from ..common.precision import resolve_dtype
    from .card import read_card
    from .rewriters import LocalRewriter

    card = read_card(adapter) if adapter is not None else None
    if adapter is not None and card is None:
        logger.info("%s has no adapter card: evaluating it on %s with the %r task's prompt, as given", adapter,
                    model or "the embedded model", task.name)
    # with a card, model=None and task=None let the rewriter take the card's (an explicit model still wins)
    rewriter = LocalRewriter(model, adapter=adapter, task=None if card else task, max_new_tokens=max_new_tokens,
                             batch_size=batch_size, dtype=dtype)
    weights = adapter_fingerprint(adapter) if adapter else "none"
    identity = (f"local|{resolve_model(rewriter.model_name)}|adapter={adapter}:{weights}|{task_id(rewriter.task)}"
                f"|max_new_tokens={max_new_tokens}|greedy|dtype={resolve_dtype(dtype, rewriter.device)}"
                f"|decoding={rewriter.decoding}" + (f"|speculate={rewriter.speculate}" if rewriter.speculate else ""))
    return Backend(label, rewriter, identity, card)


def find_adapter(path: str | Path) -> Path:
    """The peft adapter folder in ``path``: the folder itself, or a training run folder's ``adapter/``."""
    path = Path(path).expanduser().resolve()
    for candidate in (path, path / "adapter"):
        if (candidate / "adapter_config.json").is_file():
            return candidate
    raise FileNotFoundError(f"{path}: no adapter_config.json here or in {path / 'adapter'}; pass a peft adapter "
                            "folder or a training run folder (deepretrieval train --run-dir)")


def adapter_fingerprint(adapter: Path) -> str:
    """A digest of the adapter's weights and config: a retrained adapter in the same folder is a new identity."""
    digest = hashlib.sha256()
    for file in sorted(adapter.glob("adapter_*")):
        digest.update(file.name.encode())
        digest.update(file.read_bytes())
    return digest.hexdigest()[:16]


def task_id(task: Task) -> str:
    return "task=" + hashlib.sha256(repr(task).encode()).hexdigest()[:16]


def safe_name(text: str) -> str:
    """``text`` with every character outside letters, digits and ``_ . -`` replaced, for a source name."""
    return re.sub(r"[^A-Za-z0-9_.\-]", "_", text)
