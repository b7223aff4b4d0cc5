"""A SQL writer: question + schema -> one checked read query, through any rewriter backend.

The backend is a core rewriter (``LocalRewriter`` in-process, ``OpenAIRewriter`` for a vLLM server serving the
SQL adapter) built with the ``sql`` task; it supplies completions (its ``_complete``/``_acomplete``), and this
module parses them (:func:`~.answer.parse_sql_answer`) and checks them (:func:`~.guard.check_sql`). Any failure
gives a :class:`SQLGeneration` with ``ok=False`` and the reason, logged, never an exception, unless ``strict``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..rewriting.rewriters import BaseRewriter, RewriteError
from ..rewriting.tasks import get_task
from .answer import parse_sql_answer
from .guard import UnsafeSQL, check_sql
from .schema import prompt_input

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SQLGeneration:
    """One answer: ``sql`` when ``ok``; otherwise ``reason`` says why there is no answer."""

    question: str
    sql: str | None
    ok: bool
    reason: str | None = None
    completion: str | None = None
    latency_s: float = 0.0


class SQLWriter:
    """Writes SQL for ``(question, schema)`` pairs with ``backend`` (its task becomes the ``sql`` task)."""

    def __init__(self, *, backend: BaseRewriter, dialect: str = "sqlite", strict: bool = False) -> None:
        if not callable(getattr(backend, "_complete", None)):
            raise TypeError(f"backend={backend!r} is not a deepretrieval rewriter backend: pass LocalRewriter(...) "
                            "or OpenAIRewriter(...)")
        if getattr(backend, "task", None) is None or backend.task.name != "sql":
            backend.task = get_task("sql")
        self.backend = backend
        self.dialect = dialect
        self.strict = strict

    @classmethod
    def local(cls, model: str | None = None, *, adapter: str | None = None, max_new_tokens: int = 192,
              dialect: str = "sqlite", strict: bool = False, **options: Any) -> SQLWriter:
        """The in-process model (None: the embedded SmolLM2), optionally with a trained SQL adapter."""
        from ..rewriting.rewriters import LocalRewriter

        backend = LocalRewriter(model, adapter=adapter, task="sql", max_new_tokens=max_new_tokens, **options)
        return cls(backend=backend, dialect=dialect, strict=strict)

    @classmethod
    def server(cls, model: str, *, base_url: str | None = None, max_tokens: int = 192, dialect: str = "sqlite",
               strict: bool = False, **options: Any) -> SQLWriter:
        """An OpenAI-compatible server (``deepretrieval serve --adapter SQL_RUN``), the adapter chosen by ``model``."""
        from ..rewriting.openai_compat import DEFAULT_BASE_URL, OpenAIRewriter

        backend = OpenAIRewriter(model, base_url=base_url or DEFAULT_BASE_URL, task="sql", max_tokens=max_tokens,
                                 **options)
        return cls(backend=backend, dialect=dialect, strict=strict)

    @property
    def task(self):
        return self.backend.task

    def messages(self, question: str, schema: str) -> list[dict[str, str]]:
        return self.task.messages(prompt_input(question, schema))

    def write(self, items: Sequence[tuple[str, str]]) -> list[SQLGeneration]:
        """SQL for each ``(question, schema)``; never raises on model or backend failure unless ``strict``."""
        items = list(items)
        start = time.perf_counter()
        try:
            completions = self.backend._complete([self.messages(q, s) for q, s in items])
        except Exception as exc:  # noqa: BLE001 - a backend failure is a "no answer", not a broken host pipeline
            completions = [exc] * len(items)
        return self._results(items, completions, time.perf_counter() - start)

    async def awrite(self, items: Sequence[tuple[str, str]]) -> list[SQLGeneration]:
        items = list(items)
        start = time.perf_counter()
        try:
            completions = await self.backend._acomplete([self.messages(q, s) for q, s in items])
        except Exception as exc:  # noqa: BLE001 - see write()
            completions = [exc] * len(items)
        return self._results(items, completions, time.perf_counter() - start)

    def _results(self, items, completions, latency: float) -> list[SQLGeneration]:
        if len(completions) != len(items):
            completions = [RuntimeError(f"{len(completions)} completions for {len(items)} questions")] * len(items)
        return [self._one(question, completion, latency) for (question, _), completion in zip(items, completions)]

    def _one(self, question: str, completion: Any, latency: float) -> SQLGeneration:
        if isinstance(completion, Exception):
            return self._no_answer(question, f"backend error: {type(completion).__name__}: {completion}", None, latency)
        answer = parse_sql_answer(self.task.completion_text(completion) if isinstance(completion, str) else completion)
        if not answer.ok:
            return self._no_answer(question, answer.reason, completion, latency)
        try:
            checked = check_sql(answer.sql, dialect=self.dialect)
        except UnsafeSQL as exc:
            return self._no_answer(question, f"refused: {exc.reason}", completion, latency)
        return SQLGeneration(question, checked.sql, True, None, completion, latency)

    def _no_answer(self, question: str, reason: str, completion: Any, latency: float) -> SQLGeneration:
        if self.strict:
            raise RewriteError(f"no SQL for {question!r}: {reason}")
        logger.warning("no SQL answer for %r: %s", question, reason)
        return SQLGeneration(question, None, False, reason, completion if isinstance(completion, str) else None,
                             latency)

    def close(self) -> None:
        if hasattr(self.backend, "close"):
            self.backend.close()

    def __enter__(self) -> SQLWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
