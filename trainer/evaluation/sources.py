"""Query sources for evaluation: what produces the search query for each test query.

``raw`` sends the query unchanged; ``prf`` is RM3 pseudo-relevance feedback through the evaluated retriever
(:mod:`deepretrieval_trainer.retrieval.prf`, the free baseline); every other source is a
:class:`~deepretrieval_trainer.rewriting.rewriters.Rewriter` (the untrained base model, a trained adapter, a served model, or
the base model with the HyDE prompt, :data:`~deepretrieval_trainer.rewriting.tasks.HYDE_TASK`). :func:`parse_source` reads the
command-line form.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import logging
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..retrieval.search import SearchBackend
from ..rewriting.rewriters import Rewriter, RewriteResult
from ..rewriting.tasks import Task

logger = logging.getLogger(__name__)

RAW = "raw"


@dataclass
class Source:
    """A named query source. ``rewriter=None`` sends the query unchanged (the ``raw`` baseline).

    ``include_original`` searches ``query + " " + rewrite`` (HyDE's usual form, and the trainer's ``expand``
    framing, with the query repeated ``query_weight`` times: :func:`deepretrieval_trainer.retrieval.framing.search_text`).
    ``fuse`` searches the query and the rewrite apart and sums their scores, the query's times ``query_weight`` (the
    trainer's ``fuse`` framing: :func:`deepretrieval_trainer.retrieval.framing.fuse_hits`).
    ``identity`` names everything that determines the rewrites (model, adapter weights, prompt,
    decoding); rewrites are cached in the output folder under it, and an empty identity disables the cache.
    """

    name: str
    rewriter: Rewriter | None = None
    include_original: bool = False
    identity: str = ""
    query_weight: int = 1
    fuse: bool = False

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[A-Za-z0-9_.:@+\-]+", self.name or ""):
            raise ValueError(f"source name {self.name!r}: use letters, digits and _ . : @ + - only")


def parse_source(spec: str, *, model: str | None = None, task: str | Task = "retrieval", framing: str = "replace",
                 max_new_tokens: int = 128, batch_size: int = 8, search: SearchBackend | None = None,
                 feedback_docs: int = 0, dtype: str = "auto", query_weight: int = 1) -> Source:
    """A :class:`Source` from its command-line form, optionally named: ``[NAME=]SPEC``.

    SPEC is ``raw``; ``prf[:SETTINGS]`` (RM3 pseudo-relevance feedback through ``search``, SETTINGS as
    :meth:`~deepretrieval_trainer.retrieval.prf.RM3.parse` reads them, e.g. ``prf:docs=5,terms=10,weight=0.5``); ``base``
    (the untrained ``model``); ``hyde`` (the same model prompted to write a passage, searched together with the
    query); ``adapter:PATH`` (a peft adapter folder or a training run folder, whose ``config.yaml`` framing wins over
    ``framing``); ``server:URL#MODEL`` (an OpenAI-compatible server such as vLLM, the adapter chosen by MODEL).
    ``framing="expand"`` searches query + rewrite, as the trainer does; ``"fuse"`` sums their separate scores. ``feedback_docs`` > 0 shows model sources
    the first-pass results of the query (``TrainConfig.feedback_docs``; an adapter's run config wins here too).
    ``dtype`` is the in-process model's precision (precision.py; rewrites are cached per resolved dtype).
    ``query_weight``: under ``expand`` and ``fuse``, how many times the query is searched beside the rewrite (an adapter's run
    config wins).
    """
    name, _, body = spec.partition("=") if "=" in spec.split(":", 1)[0] else ("", "", spec)
    kind, _, arg = body.partition(":")
    expand, fuse = framing in ("expand", "fuse"), framing == "fuse"
    local = {"model": model, "max_new_tokens": max_new_tokens, "batch_size": batch_size, "dtype": dtype}
    if kind == RAW and not arg:
        return Source(name or RAW)
    if kind == "prf":
        from ..retrieval.prf import RM3

        if search is None:
            raise ValueError(f"query source {spec!r}: prf searches the evaluated retriever; pass search=<backend>")
        settings = RM3.parse(arg)
        return prf_source(search, settings, name=name or ("prf" if not arg else f"prf:{settings.label()}"))
    if kind == "base" and not arg:
        source = _local_source(name or kind, None, _with_feedback(task, feedback_docs), include_original=expand,
                               **local)
        return dataclasses.replace(source, query_weight=query_weight if expand else 1, fuse=fuse)
    if kind == "hyde" and not arg:
        from ..rewriting.tasks import HYDE_TASK

        return _local_source(name or kind, None, HYDE_TASK, include_original=True, **local)
    if kind == "adapter" and arg:
        adapter = _adapter_folder(Path(arg).expanduser())
        label = adapter.parent.name if adapter.name == "adapter" else adapter.name
        run_framing = _run_setting(adapter.parent, "framing", framing)
        expand, fuse = run_framing in ("expand", "fuse"), run_framing == "fuse"
        task = _with_feedback(task, _run_setting(adapter.parent, "feedback_docs", feedback_docs))
        source = _local_source(name or f"adapter:{_safe(label)}", adapter, task, include_original=expand, **local)
        weight = _run_setting(adapter.parent, "query_weight", query_weight) if expand else 1
        return dataclasses.replace(source, query_weight=weight, fuse=fuse)
    if kind == "server" and "#" in arg:
        url, _, served = arg.rpartition("#")
        from ..rewriting.openai_compat import OpenAIRewriter

        rewriter = OpenAIRewriter(served, base_url=url, task=_with_feedback(task, feedback_docs),
                                  max_tokens=max_new_tokens)
        identity = f"server|{url}|{served}|{_task_id(rewriter.task)}|max_new_tokens={max_new_tokens}|greedy"
        return Source(name or f"server:{_safe(served)}", rewriter, include_original=expand, identity=identity,
                      query_weight=query_weight if expand else 1, fuse=fuse)
    raise ValueError(
        f"query source {spec!r} not understood: use raw, prf[:docs=N,terms=N,weight=W], base, hyde, adapter:PATH or "
        "server:URL#MODEL, "
        "optionally named as NAME=SPEC (e.g. trained=adapter:runs/demo/adapter)"
    )


def prf_source(search: SearchBackend, settings=None, *, name: str = "prf") -> Source:
    """RM3 pseudo-relevance feedback through ``search`` (a ``DocumentSearch``) as an evaluation source.

    ``settings``: a :class:`~deepretrieval_trainer.retrieval.prf.RM3` (default: 10 documents, 10 terms, weight 0.5). Its
    searches are never cached: they depend on the retriever, which the rewrite cache does not key on.
    """
    from ..retrieval.prf import PseudoRelevanceFeedback

    return Source(name, FeedbackRewriter(PseudoRelevanceFeedback(search, settings)))  # type: ignore[arg-type]


class FeedbackRewriter:
    """RM3 with a model rewriter's :meth:`rewrite`: each query's first pass through the retriever, then its RM3 text
    (:meth:`PseudoRelevanceFeedback.expand`); a query with no first-pass documents or no feedback terms is sent as
    it is, reported as a fallback with the reason."""

    def __init__(self, prf) -> None:
        self.prf = prf

    def rewrite(self, queries: Sequence[str]) -> list[RewriteResult]:
        start = time.perf_counter()
        first_pass = self.prf.search.search_documents(list(queries), self.prf.settings.docs)
        texts = [(query, hits, self.prf.expand(query, hits)) for query, hits in zip(queries, first_pass, strict=True)]
        latency = (time.perf_counter() - start) / max(len(texts), 1)
        return [RewriteResult(query, text, text == query,
                              None if text != query else "no first-pass documents" if not hits else "no feedback terms",
                              None, latency) for query, hits, text in texts]

    async def arewrite(self, queries: Sequence[str]) -> list[RewriteResult]:
        return await asyncio.to_thread(self.rewrite, queries)


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.\-]", "_", text)


def _local_source(name: str, adapter: Path | None, task: str | Task, *, model: str | None, max_new_tokens: int,
                  batch_size: int, include_original: bool = False, dtype: str = "auto") -> Source:
    from ..common.models import resolve_model
    from ..common.precision import resolve_dtype
    from ..rewriting.rewriters import LocalRewriter

    rewriter = LocalRewriter(model, adapter=adapter, task=task, max_new_tokens=max_new_tokens, batch_size=batch_size,
                             dtype=dtype)
    weights = _adapter_fingerprint(adapter) if adapter else "none"
    identity = (f"local|{resolve_model(model)}|adapter={adapter}:{weights}|{_task_id(rewriter.task)}"
                f"|max_new_tokens={max_new_tokens}|greedy|dtype={resolve_dtype(dtype, rewriter.device)}"
                f"|decoding={rewriter.decoding}" + (f"|speculate={rewriter.speculate}" if rewriter.speculate else ""))
    return Source(name, rewriter, include_original=include_original, identity=identity)


def _adapter_folder(path: Path) -> Path:
    for candidate in (path, path / "adapter"):
        if (candidate / "adapter_config.json").is_file():
            return candidate
    raise FileNotFoundError(f"{path}: no adapter_config.json here or in {path / 'adapter'}; pass a peft adapter "
                            "folder or a training run folder (deepretrieval train --run-dir)")


def _with_feedback(task: str | Task, feedback_docs: int) -> str | Task:
    from ..rewriting.tasks import with_feedback

    return with_feedback(task, feedback_docs) if feedback_docs else task


def _run_setting(run_dir: Path, key: str, default):
    """A setting the adapter was trained with (its run's config.yaml: framing, feedback_docs), else ``default``."""
    config = run_dir / "config.yaml"
    if not config.is_file():
        return default
    import yaml

    try:
        value = (yaml.safe_load(config.read_text(encoding="utf-8")) or {}).get(key, default)
    except (yaml.YAMLError, AttributeError):
        return default
    if value != default:
        logger.info("%s was trained with %s=%r: evaluating it the same way", run_dir, key, value)
    return value


def _adapter_fingerprint(adapter: Path) -> str:
    digest = hashlib.sha256()
    for file in sorted(adapter.glob("adapter_*")):
        digest.update(file.name.encode())
        digest.update(file.read_bytes())
    return digest.hexdigest()[:16]


def _task_id(task: Task) -> str:
    return "task=" + hashlib.sha256(repr(task).encode()).hexdigest()[:16]
