"""Query sources for evaluation: what produces the search query for each test query.

``raw`` sends the query unchanged; ``prf`` is RM3 pseudo-relevance feedback through the evaluated retriever
(:mod:`deepretrieval_trainer.retrieval.prf`, the free baseline); every other source is a
:class:`~deepretrieval_trainer.rewriting.rewriters.Rewriter` (the untrained base model, a trained adapter, a served model, or
the base model with the HyDE prompt, :data:`~deepretrieval_trainer.rewriting.tasks.HYDE_TASK`). :func:`parse_source` reads the
command-line form.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass

from ..retrieval.search import SearchBackend
from ..rewriting.rewriters import Rewriter, RewriteResult
from ..rewriting.backends import FORMS, build_backend, is_backend
from ..rewriting.tasks import Task, with_feedback

logger = logging.getLogger(__name__)

RAW = "raw"


@dataclass
class Source:
    """A named query source. ``rewriter=None`` sends the query unchanged (the ``raw`` baseline).

    ``include_original`` searches ``query + " " + rewrite`` (HyDE's usual form, and the trainer's ``expand``
    framing, with the query repeated ``query_weight`` times: :func:`deepretrieval_trainer.retrieval.framing.search_text`).
    ``fuse`` searches the query and the rewrite apart and sums their scores, the query's times ``query_weight`` (the
    trainer's ``fuse`` framing: :func:`deepretrieval_trainer.retrieval.framing.fuse_hits`). ``steer`` searches RM3
    restricted to the first-pass candidate terms the rewrite keeps (the trainer's ``steer`` framing).
    ``identity`` names everything that determines the rewrites (model, adapter weights, prompt,
    decoding); rewrites are cached in the output folder under it, and an empty identity disables the cache.
    """

    name: str
    rewriter: Rewriter | None = None
    include_original: bool = False
    identity: str = ""
    query_weight: int = 1
    fuse: bool = False
    steer: bool = False

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[A-Za-z0-9_.:@+\-]+", self.name or ""):
            raise ValueError(f"source name {self.name!r}: use letters, digits and _ . : @ + - only")


def parse_source(spec: str, *, model: str | None = None, task: str | Task = "retrieval", framing: str = "replace",
                 max_new_tokens: int = 128, batch_size: int = 8, search: SearchBackend | None = None,
                 feedback_docs: int = 0, dtype: str = "auto", query_weight: int = 1) -> Source:
    """A :class:`Source` from its command-line form, optionally named: ``[NAME=]SPEC``.

    SPEC is ``raw``; ``prf[:SETTINGS]`` (RM3 pseudo-relevance feedback through ``search``, SETTINGS as
    :meth:`~deepretrieval_trainer.retrieval.prf.RM3.parse` reads them, e.g. ``prf:docs=5,terms=10,weight=0.5``);
    ``hyde`` (the untrained ``model`` prompted to write a passage, searched together with the query); or a model
    backend (:func:`~deepretrieval_trainer.rewriting.backends.build_backend`): ``base`` (the untrained ``model``),
    ``adapter:PATH`` (a peft adapter folder or a training run folder), ``server:URL#MODEL`` (an OpenAI-compatible
    server such as vLLM, the adapter chosen by MODEL).
    ``framing`` and ``query_weight`` say how a model's rewrite is searched (``expand``: the query ``query_weight``
    times, then the rewrite; ``fuse``: the two apart, scores summed, the query's times ``query_weight``), and
    ``feedback_docs`` > 0 shows the model the query's first-pass results (``TrainConfig.feedback_docs``). An adapter
    with a card (:mod:`deepretrieval_trainer.rewriting.card`) is evaluated as its card says instead, wherever its
    folder was copied. ``dtype`` is the in-process model's precision (rewrites are cached per resolved dtype).
    """
    name, _, body = spec.partition("=") if "=" in spec.split(":", 1)[0] else ("", "", spec)
    kind, _, arg = body.partition(":")
    local = {"model": model, "max_new_tokens": max_new_tokens, "batch_size": batch_size, "dtype": dtype}
    if kind == RAW and not arg:
        return Source(name or RAW)
    if kind == "prf":
        from ..retrieval.prf import RM3

        if search is None:
            raise ValueError(f"query source {spec!r}: prf searches the evaluated retriever; pass search=<backend>")
        settings = RM3.parse(arg)
        return prf_source(search, settings, name=name or ("prf" if not arg else f"prf:{settings.label()}"))
    if kind == "hyde" and not arg:
        from ..rewriting.tasks import HYDE_TASK

        backend = build_backend("base", task=HYDE_TASK, **local)
        return Source(name or kind, backend.rewriter, include_original=True, identity=backend.identity)
    if not is_backend(body):
        raise ValueError(f"query source {spec!r} not understood: use raw, prf[:docs=N,terms=N,weight=W], hyde, "
                         f"{FORMS}, optionally named as NAME=SPEC (e.g. trained=adapter:runs/demo/adapter)")
    backend = build_backend(body, task=with_feedback(task, feedback_docs) if feedback_docs else task, **local)
    if backend.card is not None:
        if (backend.card.framing, backend.card.query_weight) != (framing, query_weight):
            logger.info("%s was trained with framing %s, query_weight %d: evaluating it the same way", arg,
                        backend.card.framing, backend.card.query_weight)
        framing, query_weight = backend.card.framing, backend.card.query_weight
        warning = backend.card.mismatch(type(search).__name__) if search is not None else None
        if warning:
            logger.warning("%s: %s", arg, warning)
    if framing == "steer" and getattr(backend.rewriter.task.feedback, "field", None) != "terms":
        raise ValueError(f"query source {spec!r}: framing 'steer' weights the candidate terms a corpus-steered prompt "
                         "shows; evaluate it with --task steer (an adapter's card says so itself)")
    weighted = framing in ("expand", "fuse", "steer")
    return Source(name or backend.label, backend.rewriter, include_original=framing in ("expand", "fuse"),
                  identity=backend.identity, query_weight=query_weight if weighted else 1, fuse=framing == "fuse",
                  steer=framing == "steer")


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
