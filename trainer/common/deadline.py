"""The bounds of one HTTP request: one deadline for the whole request, one budget for all of its retries, a cap on the
bytes its answer may decode to, and the text it may carry.

httpx's ``timeout`` bounds each socket operation, so a server that trickles a byte just inside it keeps a request
alive indefinitely. Cancelling the request's coroutine is the only limit that covers connect, headers and body
alike, so every request of the HTTP backends runs as a coroutine under :func:`within`; sync callers run the same
coroutine on a private event loop (:class:`LoopThread`), which also keeps them usable inside a running loop.

A deadline does not bound memory: a 200 KiB gzip body decodes to 200 MiB well inside any deadline, and httpx decodes
each network read in one call (up to ~64 MiB from one 64 KiB read of deflate, far more for br or zstd). So the HTTP
backends read every answer through :func:`read_capped`: it asks only for gzip and deflate, decodes them here at most
``DECODE_STEP`` bytes per call, and stops past the caller's cap, whatever the encoding (any other is refused unread).
"""

from __future__ import annotations

import asyncio
import threading
import time
import zlib
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Iterator
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


# -- the text a request carries -----------------------------------------------------------------------------------

# -- the bytes of one answer ---------------------------------------------------------------------------------------

#: The encodings every request asks for: those decoded here with a bound on each call's output.
ACCEPT_ENCODING = "gzip, deflate"
#: The most bytes one decompression call produces (so one network read cannot expand unchecked).
DECODE_STEP = 64 * 1024
#: What is kept of an error answer (status >= 400): only an excerpt of it is ever shown.
ERROR_BODY_BYTES = 16 * 1024
_MAX_LAYERS = 4  # Content-Encoding: gzip, gzip, ... (a chain multiplies the compression ratio)


class UnreadableResponse(ValueError):
    """An answer's body that cannot be read: corrupt compressed data, or an encoding that was not asked for."""


class ResponseTooLarge(UnreadableResponse):
    """An answer's body that decodes to more bytes than its cap (a compression bomb, or a server sending far more
    than an answer needs)."""


class _Full(Exception):
    pass


class _Inflate:
    """One gzip or deflate layer that produces at most :data:`DECODE_STEP` bytes per decompression call."""

    def __init__(self, encoding: str) -> None:
        self.encoding = encoding
        self._pending = b""  # deflate: the first two bytes tell zlib-wrapped (RFC 9110) from raw
        self._zlib = zlib.decompressobj(16 + zlib.MAX_WBITS) if encoding != "deflate" else None

    def feed(self, data: bytes) -> Iterator[bytes]:
        if self._zlib is None:
            data = self._pending + data
            if len(data) < 2:
                self._pending = data
                return
            wrapped = data[0] & 0x0F == 8 and (data[0] << 8 | data[1]) % 31 == 0
            self._zlib = zlib.decompressobj(zlib.MAX_WBITS if wrapped else -zlib.MAX_WBITS)
        while data:
            try:
                out = self._zlib.decompress(data, DECODE_STEP)
            except zlib.error as exc:
                raise UnreadableResponse(f"corrupt {self.encoding} data: {exc}") from None
            if not out and self._zlib.unconsumed_tail == data:
                return  # no progress (data after the end of the stream)
            data = self._zlib.unconsumed_tail
            if out:
                yield out

    def finish(self) -> Iterator[bytes]:
        if self._zlib is None:  # fewer than two bytes came: nothing, or a cut stream
            if self._pending:
                raise UnreadableResponse(f"truncated {self.encoding} data")
            return
        try:
            out = self._zlib.flush()  # at most what the last call's bit buffer still held
        except zlib.error as exc:
            raise UnreadableResponse(f"corrupt {self.encoding} data: {exc}") from None
        if out:
            yield out


class _Decoder:
    """The layers of a ``Content-Encoding`` chain, undone in reverse order, each bounded per call."""

    def __init__(self, content_encoding: str) -> None:
        names = [name.strip().lower() for name in content_encoding.split(",") if name.strip()]
        names = [name for name in names if name != "identity"]
        for name in names:
            if name not in ("gzip", "x-gzip", "deflate"):
                raise UnreadableResponse(f"the answer has Content-Encoding {name!r}, which was not asked for "
                                         f"(Accept-Encoding: {ACCEPT_ENCODING})")
        if len(names) > _MAX_LAYERS:
            raise UnreadableResponse(f"the answer has {len(names)} layers of Content-Encoding; at most "
                                     f"{_MAX_LAYERS} are decoded")
        self.layers = [_Inflate(name) for name in reversed(names)]

    def feed(self, data: bytes) -> Iterator[bytes]:
        return self._through(0, data)

    def finish(self) -> Iterator[bytes]:
        for index, layer in enumerate(self.layers):
            for out in layer.finish():
                yield from self._through(index + 1, out)

    def _through(self, index: int, data: bytes) -> Iterator[bytes]:
        if index == len(self.layers):
            if data:
                yield data
            return
        for out in self.layers[index].feed(data):
            yield from self._through(index + 1, out)


def _append(body: bytearray, chunks: Iterable[bytes], limit: int) -> None:
    for chunk in chunks:
        room = limit - len(body)
        if len(chunk) > room:
            body += chunk[:room]
            raise _Full
        body += chunk


async def read_capped(client: Any, method: str, url: str, *, max_bytes: int, **request: Any) -> Any:
    """Send one request with ``client`` (an ``httpx.AsyncClient``) and read its answer, decoded, up to ``max_bytes``.

    Returns an ``httpx.Response`` holding the decoded body. A success whose body decodes past ``max_bytes`` raises
    :class:`ResponseTooLarge` as soon as it does (the rest is never read); an error answer (status >= 400) is only
    cut, at :data:`ERROR_BODY_BYTES`, since only an excerpt of it is shown. Corrupt compressed data, or an encoding
    other than gzip/deflate/identity, raises :class:`UnreadableResponse` (an error answer then has an empty body).
    Run it under :func:`within`: the deadline covers the body as well.
    """
    import httpx

    headers = {"Accept-Encoding": ACCEPT_ENCODING, **(request.pop("headers", None) or {})}
    async with client.stream(method, url, headers=headers, **request) as response:
        error = response.status_code >= 400
        limit = min(max_bytes, ERROR_BODY_BYTES) if error else max_bytes
        body = bytearray()
        try:
            declared = response.headers.get("content-length", "")
            if not error and "content-encoding" not in response.headers and declared.isdigit() \
                    and int(declared) > limit:
                raise _Full
            decoder = _Decoder(response.headers.get("content-encoding", ""))
            chunks = response.aiter_raw()
            try:
                async for raw in chunks:
                    _append(body, decoder.feed(raw), limit)
            finally:
                await chunks.aclose()  # now, not when the loop collects a generator left mid-body
            _append(body, decoder.finish(), limit)
        except _Full:
            if not error:
                raise ResponseTooLarge(f"the answer decodes to more than {max_bytes:,} bytes") from None
        except UnreadableResponse:
            if not error:
                raise
            body.clear()
    kept = [(key, value) for key, value in response.headers.multi_items()
            if key.lower() not in ("content-encoding", "content-length", "transfer-encoding")]
    return httpx.Response(response.status_code, headers=kept, content=bytes(body), request=response.request)
