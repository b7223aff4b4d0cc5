"""Instrumentation: one dispatcher span around every rewrite, and an event that says what happened.

Attach any ``llama_index.core.instrumentation`` event handler (to the root dispatcher, or to
``get_dispatcher("llamaindex_deepretrieval.events")``) to receive :class:`QueryRewriteEvent`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any, Optional

from llama_index.core.instrumentation import get_dispatcher
from llama_index.core.instrumentation.events.base import BaseEvent

from deepretrieval_trainer.common.encoding import encoding_problem
from deepretrieval_trainer.common.redaction import redact
from deepretrieval_trainer.retrieval.search import DocumentHit
from deepretrieval_trainer.rewriting.rewriters import RewriteError, Rewriter, RewriteResult

logger = logging.getLogger(__name__)
dispatcher = get_dispatcher(__name__)


class QueryRewriteEvent(BaseEvent):
    """One query rewrite: ``query`` is what the retriever gets (the rewrite, or ``original`` on fallback)."""

    original: str
    query: str
    rewritten: Optional[str] = None
    fell_back: bool
    reason: Optional[str] = None
    latency_s: float
    mode: str

    @classmethod
    def class_name(cls) -> str:
        return "QueryRewriteEvent"


def _checked(results: Any, original: str) -> RewriteResult:
    """The single result of a one-query batch; anything else is a backend bug turned into a fallback (any rewriter,
    not only the built-in ones: a rewrite the retriever could not encode is one too)."""
    if not isinstance(results, list) or len(results) != 1 or not isinstance(results[0], RewriteResult):
        raise TypeError(f"the rewriter returned {results!r}; expected a list of one RewriteResult")
    result = results[0]
    if not isinstance(result.query, str) or not result.query.strip():
        raise ValueError(f"the rewriter returned an empty query {result.query!r}")
    problem = None if result.fell_back else encoding_problem(result.query)
    if problem is not None:
        raise ValueError(f"the rewrite cannot be sent on: {problem}")
    return result


def _fallback(original: str, exc: Exception) -> RewriteResult:
    reason = redact(f"unexpected error: {type(exc).__name__}: {exc}")
    logger.warning("query rewrite fell back to the original query %r: %s", original, reason)
    return RewriteResult(original, original, True, reason)


def _emit(result: RewriteResult, original: str, mode: str, latency: float) -> RewriteResult:
    dispatcher.event(
        QueryRewriteEvent(
            original=original,
            query=result.query,
            rewritten=result.rewritten,
            fell_back=result.fell_back,
            reason=redact(result.reason) if result.reason else result.reason,
            latency_s=latency,
            mode=mode,
        )
    )
    return result


def _hits(hits: Optional[Sequence[DocumentHit]]) -> dict[str, Any]:
    return {} if hits is None else {"hits": [list(hits)]}


@dispatcher.span
def rewrite_query(rewriter: Rewriter, original: str, mode: str,
                  hits: Optional[Sequence[DocumentHit]] = None) -> RewriteResult:
    """Rewrite one query (``hits``: its first-pass documents, for a feedback task); never raises except
    :class:`RewriteError` from a rewriter built with ``strict=True``."""
    start = time.perf_counter()
    try:
        result = _checked(rewriter.rewrite([original], **_hits(hits)), original)
    except RewriteError:
        raise
    except Exception as exc:  # noqa: BLE001 - the host pipeline must get its query back, whatever broke
        result = _fallback(original, exc)
    return _emit(result, original, mode, time.perf_counter() - start)


@dispatcher.span
async def arewrite_query(rewriter: Rewriter, original: str, mode: str,
                         hits: Optional[Sequence[DocumentHit]] = None) -> RewriteResult:
    """The async form of :func:`rewrite_query`: awaits ``rewriter.arewrite``."""
    start = time.perf_counter()
    try:
        result = _checked(await rewriter.arewrite([original], **_hits(hits)), original)
    except RewriteError:
        raise
    except Exception as exc:  # noqa: BLE001 - see rewrite_query
        result = _fallback(original, exc)
    return _emit(result, original, mode, time.perf_counter() - start)
