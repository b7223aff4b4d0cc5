"""Deadlines that are deadlines: one limit for a whole HTTP request, and one budget for all of its retries.

httpx's ``timeout`` bounds each socket operation, so a server that trickles a byte just inside it keeps a request
alive indefinitely. Cancelling the request's coroutine is the only limit that covers connect, headers and body
alike, so every request of the HTTP backends runs as a coroutine under :func:`within`; sync callers run the same
coroutine on a private event loop (:class:`LoopThread`), which also keeps them usable inside a running loop.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


class DeadlineExceeded(TimeoutError):
    """A request, or its retries together, ran past its deadline."""


class RetryBudget:
    """The time one call may spend: at most ``attempt_s`` per attempt, ``total_s`` for attempts and waits together."""

    def __init__(self, attempt_s: float, total_s: float) -> None:
        self.attempt_s, self.total_s = attempt_s, total_s
        self.end = time.monotonic() + total_s

    def remaining(self) -> float:
        return max(0.0, self.end - time.monotonic())

    def attempt_timeout(self) -> float:
        """The deadline of the next attempt: the per-attempt limit, or what is left of the budget if less."""
        return min(self.attempt_s, self.remaining())

    def allows(self, delay: float) -> bool:
        """Whether waiting ``delay`` seconds still leaves time for another attempt."""
        return self.remaining() - delay > 0.05 * self.attempt_s


async def within(awaitable: Awaitable[T], seconds: float, what: str) -> T:
    """``await awaitable``, cancelled after ``seconds`` (the whole of it, however the bytes arrive)."""
    if seconds <= 0:
        if asyncio.iscoroutine(awaitable):
            awaitable.close()
        raise DeadlineExceeded(f"{what}: no time left in the retry budget")
    try:
        return await asyncio.wait_for(awaitable, seconds)
    except asyncio.TimeoutError:
        raise DeadlineExceeded(f"{what}: no complete answer within the {seconds:.3g}s deadline") from None


def call_within(function: Callable[[], T], seconds: float, what: str) -> T:
    """``function()`` in a daemon thread, waited for at most ``seconds``; :class:`DeadlineExceeded` after that.

    For blocking code that cannot be cancelled (an in-process retriever): the call is abandoned, not stopped, and
    its thread ends with the process if it never returns.
    """
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["value"] = function()
        except BaseException as exc:  # noqa: BLE001 - handed to the caller below
            outcome["error"] = exc

    worker = threading.Thread(target=run, name="deepretrieval-bounded-call", daemon=True)
    worker.start()
    worker.join(seconds)
    if worker.is_alive():
        raise DeadlineExceeded(f"{what} did not return within {seconds:g}s")
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


class LoopThread:
    """A private event loop in a daemon thread: sync code runs coroutines on it and waits for their result."""

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self._thread.start()

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result()

    def close(self, cleanup: Coroutine[Any, Any, Any] | None = None) -> None:
        """Run ``cleanup`` (e.g. closing a client) on the loop, then stop it."""
        if self.loop.is_closed():
            return
        if cleanup is not None:
            self.run(cleanup)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=5)
        if not self._thread.is_alive():
            self.loop.close()
