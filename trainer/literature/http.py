"""The request discipline shared by the PubMed and ClinicalTrials.gov engines (httpx, sync and async).

Every request waits its turn at a rate limiter shared by all engines talking to the same service with the same
rate, has a deadline for the whole request (``timeout_s``, however slowly the bytes arrive), and is retried with
exponential backoff on transport errors, timeouts, 429 (honouring ``Retry-After``), 5xx and malformed JSON while the
call's overall budget (``total_timeout_s``) lasts. Other 4xx answers fail at once, and so does an answer that
decodes past ``max_response_bytes`` (read decoded, a bounded step at a time: a compressed body cannot expand in
memory). Secret parameters (the NCBI API key) never appear in logs or error messages. Sync calls run the async
request on a private event loop, so both paths keep the same deadlines (httpx's own timeouts are per socket
operation; tenacity's stop_after_delay cannot cut an attempt in flight, so the retry loop stays ours).

Each query of a batch runs in its own ``try`` (:meth:`PagedSearch.search_each`): whatever its text or its answers
raise (a query UTF-8 cannot encode, an answer nested past the recursion limit, not UTF-8, too large) is that
query's :class:`SearchServiceError` or :class:`BooleanQueryError`, and the other queries finish.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import threading
import time
from collections.abc import Generator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from ..common.deadline import (
    DeadlineExceeded,
    LoopThread,
    ResponseTooLarge,
    RetryBudget,
    UnreadableResponse,
    read_capped,
    within,
)
from ..common.encoding import encoding_problem
from ..common.fields import check_fields
from ..common.redaction import excerpt, redact
from ..retrieval.dates import DateRange
from ..retrieval.search import check_k
from .boolean import BooleanQueryError

logger = logging.getLogger(__name__)

RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
#: The default cap of one answer's decoded bytes: ~30x the largest answer the engines ask for (an esearch page of
#: 9,999 PMIDs is ~120 KB of JSON, a /studies page of 1,000 NCT ids ~75 KB).
MAX_RESPONSE_BYTES = 4 * 1024 * 1024


class SearchServiceError(RuntimeError):
    """A search service failed (after the retries, or with an answer that retrying cannot fix)."""

    def __init__(self, message: str) -> None:
        super().__init__(redact(message))  # a server may echo the request, key included


@dataclass(frozen=True)
class HttpPolicy:
    """Timeout, retry and rate settings for one engine.

    ``requests_per_second``: the service's documented limit (PubMed: 3 without an API key, 10 with one).
    Backoff after the n-th failed attempt is ``backoff_s * 2**n`` (capped at ``max_backoff_s``), or the server's
    ``Retry-After`` when it sends one. ``timeout_s`` is the deadline of one request; ``total_timeout_s`` bounds one
    call's attempts, rate-limit waits and backoffs together (None: ``timeout_s * (max_retries + 1) + max_backoff_s``).
    ``max_response_bytes``: the most bytes one answer may decode to (compressed or not).
    """

    requests_per_second: float = 3.0
    timeout_s: float = 30.0
    max_retries: int = 4
    backoff_s: float = 1.0
    max_backoff_s: float = 60.0
    total_timeout_s: float | None = None
    max_response_bytes: int = MAX_RESPONSE_BYTES
    user_agent: str = "deepretrieval (https://pypi.org/project/deepretrieval/)"

    def __post_init__(self) -> None:
        check_fields(self, prefix="HttpPolicy.")
        for name in ("requests_per_second", "timeout_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"HttpPolicy.{name}={getattr(self, name)!r} must be > 0")
        if self.max_retries < 0:
            raise ValueError(f"HttpPolicy.max_retries={self.max_retries!r} must be >= 0 (0 disables retries)")
        if self.max_response_bytes < 1024:
            raise ValueError(f"HttpPolicy.max_response_bytes={self.max_response_bytes!r} must be >= 1024 "
                             f"(default {MAX_RESPONSE_BYTES})")
        if self.total_timeout_s is not None and not self.total_timeout_s > 0:
            raise ValueError(f"HttpPolicy.total_timeout_s={self.total_timeout_s!r} must be > 0 (or None)")
        if self.backoff_s < 0 or self.max_backoff_s < self.backoff_s:
            raise ValueError(f"HttpPolicy backoff_s={self.backoff_s!r}, max_backoff_s={self.max_backoff_s!r}: "
                             "need 0 <= backoff_s <= max_backoff_s")

    @property
    def budget_s(self) -> float:
        if self.total_timeout_s is not None:
            return self.total_timeout_s
        return self.timeout_s * (self.max_retries + 1) + self.max_backoff_s


class RateLimiter:
    """Hands out request start times at least ``1 / requests_per_second`` apart (threads and event loops alike)."""

    def __init__(self, requests_per_second: float) -> None:
        self.interval = 1.0 / requests_per_second
        self._next = 0.0
        self._lock = threading.Lock()

    def reserve(self) -> float:
        """Claim the next slot; return how long to wait for it."""
        with self._lock:
            now = time.monotonic()
            start = max(now, self._next)
            self._next = start + self.interval
            return start - now

    def hold(self, seconds: float) -> None:
        """No slot starts before ``seconds`` from now (after a 429, every caller backs off)."""
        with self._lock:
            self._next = max(self._next, time.monotonic() + seconds)

    def wait(self) -> None:
        time.sleep(self.reserve())

    async def await_turn(self) -> None:
        await asyncio.sleep(self.reserve())


_LIMITERS: dict[tuple[str, float], RateLimiter] = {}
_LIMITERS_LOCK = threading.Lock()


def shared_limiter(service: str, requests_per_second: float) -> RateLimiter:
    """One limiter per (service, rate) in this process: the services limit per client, not per engine object."""
    with _LIMITERS_LOCK:
        return _LIMITERS.setdefault((service, requests_per_second), RateLimiter(requests_per_second))


@dataclass(frozen=True)
class _Retry:
    delay: float


class JsonService:
    """GET requests returning JSON from one base URL, with :class:`HttpPolicy`'s discipline."""

    def __init__(self, *, name: str, base_url: str, policy: HttpPolicy, secret_params: tuple[str, ...] = ()) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise ValueError(f"{name}: base_url={base_url!r} must start with http:// or https://")
        self.name, self.base_url, self.policy = name, base_url.rstrip("/") + "/", policy
        self.secret_params = secret_params
        self.limiter = shared_limiter(self.base_url, policy.requests_per_second)
        self._client = None  # the AsyncClient of the private loop (sync callers)
        self._runner: LoopThread | None = None
        self._client_lock = threading.Lock()

    def get(self, path: str, params: Mapping[str, Any]) -> dict:
        """The decoded JSON answer; sync callers run :meth:`aget` on the service's private event loop."""
        with self._client_lock:
            if self._runner is None:
                self._runner = LoopThread(f"deepretrieval-{self.name}")
            runner = self._runner
        return runner.run(self._aget_on_own_loop(path, params))

    async def _aget_on_own_loop(self, path: str, params: Mapping[str, Any]) -> dict:
        if self._client is None:
            self._client = self.async_client()
        return await self.aget(path, params, self._client)

    async def aget(self, path: str, params: Mapping[str, Any], client=None) -> dict:
        """The async form of :meth:`get`; pass an open ``httpx.AsyncClient`` to reuse its connections."""
        import httpx

        if client is None:
            async with self.async_client() as own:
                return await self.aget(path, params, own)
        budget = RetryBudget(self.policy.timeout_s, self.policy.budget_s)
        for attempt in range(self.policy.max_retries + 1):
            await self.limiter.await_turn()
            try:
                response = await within(
                    read_capped(client, "GET", self.base_url + path, max_bytes=self.policy.max_response_bytes,
                                params=dict(params)),
                    budget.attempt_timeout(), self.describe(path, params))
                outcome = self._judge(response, path, params, attempt, budget)
            except ResponseTooLarge as exc:
                raise SearchServiceError(f"{self.describe(path, params)}: {exc} (HttpPolicy.max_response_bytes); "
                                         "is base_url the service's API root? (this is not retried)") from None
            except UnreadableResponse as exc:  # corrupt compression, or an encoding not asked for
                outcome = self._retry_or_raise(f"unreadable answer: {exc}", path, params, attempt, None, budget)
            except (httpx.TransportError, DeadlineExceeded) as exc:  # connect/read errors, timeouts, the deadline
                outcome = self._retry_or_raise(f"{type(exc).__name__}: {exc}", path, params, attempt, None, budget)
            if not isinstance(outcome, _Retry):
                return outcome
            await asyncio.sleep(outcome.delay)
        raise AssertionError("unreachable: the last attempt returns or raises")

    def async_client(self):
        import httpx

        return httpx.AsyncClient(timeout=self.policy.timeout_s, headers={"User-Agent": self.policy.user_agent})

    def close(self) -> None:
        with self._client_lock:
            runner, client, self._runner, self._client = self._runner, self._client, None, None
        if runner is not None:
            runner.close(client.aclose() if client is not None else None)

    def describe(self, path: str, params: Mapping[str, Any]) -> str:
        """The request as text with secret parameters masked."""
        shown = {key: ("***" if key in self.secret_params else value) for key, value in params.items()}
        return f"{self.name} GET {self.base_url}{path} {shown}"

    def _judge(self, response, path: str, params: Mapping[str, Any], attempt: int,
               budget: RetryBudget) -> dict | _Retry:
        status = response.status_code
        if status in RETRY_STATUSES:
            retry_after = _retry_after_seconds(response.headers.get("Retry-After"))
            return self._retry_or_raise(f"HTTP {status}: {_excerpt(response.text)}", path, params, attempt,
                                        retry_after, budget)
        if status >= 400:
            raise SearchServiceError(f"{self.describe(path, params)} failed with HTTP {status}: {_excerpt(response.text)}"
                                     "; check the query and the parameters (this is not retried)")
        try:
            payload = response.json()
        except (ValueError, RecursionError) as exc:  # not JSON, not UTF-8, or nested past the recursion limit
            why = " (nested past the recursion limit)" if isinstance(exc, RecursionError) else ""
            return self._retry_or_raise(f"malformed JSON{why}: {_excerpt(response.text)}", path, params, attempt,
                                        None, budget)
        if not isinstance(payload, dict):
            return self._retry_or_raise(f"expected a JSON object, got {type(payload).__name__}", path, params, attempt,
                                        None, budget)
        return payload

    def _retry_or_raise(self, problem: str, path: str, params: Mapping[str, Any], attempt: int,
                        retry_after: float | None, budget: RetryBudget) -> _Retry:
        if attempt >= self.policy.max_retries:
            raise SearchServiceError(f"{self.describe(path, params)} failed after {attempt + 1} attempt(s): {problem}; "
                                     "the service may be down or rate-limiting: retry later or raise "
                                     "HttpPolicy.max_retries / lower requests_per_second")
        delay = min(self.policy.backoff_s * 2 ** attempt, self.policy.max_backoff_s)
        if retry_after is not None:
            delay = min(max(delay, retry_after), self.policy.max_backoff_s)
        if not budget.allows(delay):
            raise SearchServiceError(f"{self.describe(path, params)} failed after {attempt + 1} attempt(s): {problem}; "
                                     f"its retry budget (HttpPolicy.total_timeout_s={budget.total_s:g}s) is spent: "
                                     "retry later or raise total_timeout_s")
        if retry_after is not None:
            self.limiter.hold(delay)
        logger.warning("%s: %s; retrying in %.2fs (attempt %d of %d)", self.name, problem, delay, attempt + 1,
                       self.policy.max_retries + 1)
        return _Retry(delay)


def _retry_after_seconds(value: str | None) -> float | None:
    """``Retry-After`` as seconds: either a number of seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, (when - datetime.now(timezone.utc)).total_seconds())


def _excerpt(text: str, limit: int = 200) -> str:
    return excerpt(text, limit)  # secrets masked before the cut, not after


class PagedSearch:
    """Base of the HTTP engines: a SearchBackend that pages through a JSON search API up to ``k`` ids per query.

    A subclass sets ``service`` (a :class:`JsonService`), ``path`` and ``max_k``, and writes ``_pages``: a generator
    that yields the parameters of each request, receives the decoded answer, and returns the ids. The same
    generator drives the sync and the async path. Each query runs in its own ``try``: :meth:`search_each` gives
    every query its ids or its own error; ``search`` raises the first error once every query has finished.
    """

    service: JsonService
    path: str
    max_k: int
    date_range: DateRange | None = None  # the window of plain search() calls (e.g. a training run's cutoff)

    def search(self, queries: Sequence[str], k: int) -> list[list[str]]:
        return self.search_dated(queries, k, [self.date_range] * len(queries))

    async def asearch(self, queries: Sequence[str], k: int) -> list[list[str]]:
        return await self.asearch_dated(queries, k, [self.date_range] * len(queries))

    def search_dated(self, queries: Sequence[str], k: int, dates: Sequence[DateRange | None]) -> list[list[str]]:
        """Ranked ids per query, each limited to its publication-date window (None: no limit).

        A query the engine cannot send raises :class:`BooleanQueryError` before any request; a query whose answers
        fail raises its :class:`SearchServiceError` once the other queries have finished."""
        self._check_queries(queries)
        return _first_error_raised(self.search_each(queries, k, dates))

    async def asearch_dated(self, queries: Sequence[str], k: int,
                            dates: Sequence[DateRange | None]) -> list[list[str]]:
        self._check_queries(queries)
        return _first_error_raised(await self.asearch_each(queries, k, dates))

    def search_each(self, queries: Sequence[str], k: int, dates: Sequence[DateRange | None] | None = None
                    ) -> list[list[str] | Exception]:
        """Like :meth:`search_dated` (``dates`` None: the engine's ``date_range``), but each query's failure is put in
        its place, as a :class:`BooleanQueryError` (a query the engine cannot send) or a :class:`SearchServiceError`
        (whatever its requests or answers raised), and the other queries still get their ids."""
        pairs = self._check(queries, k, dates)
        return [self._isolated(query, lambda q=query, d=date: self._run_sync(self._query_pages(q, d, k)))
                for query, date in pairs]

    async def asearch_each(self, queries: Sequence[str], k: int, dates: Sequence[DateRange | None] | None = None
                           ) -> list[list[str] | Exception]:
        """The async form of :meth:`search_each` (the queries run concurrently)."""
        pairs = self._check(queries, k, dates)

        async def one(query: str, date: DateRange | None, client) -> list[str] | Exception:
            try:
                return await self._run_async(self._query_pages(query, date, k), client)
            except Exception as exc:  # noqa: BLE001 - one query's failure is its own (see _failure)
                return self._failure(query, exc)

        async with self.service.async_client() as client:
            return list(await asyncio.gather(*(one(q, d, client) for q, d in pairs)))

    def query_error(self, query: str) -> str | None:
        """Why this engine cannot send ``query`` (empty, or text UTF-8 or a URL cannot carry), or None; no request.

        The trainer's rewards call this on every rewrite: such a query gets the format penalty instead of a search."""
        if not isinstance(query, str) or not query.strip():
            return "the query is empty; write at least one term"
        problem = encoding_problem(query)
        return None if problem is None else f"the query cannot be sent: {problem}"

    def _query_pages(self, query: str, date: DateRange | None, k: int) -> Generator[dict, dict, list[str]]:
        problem = self.query_error(query)
        if problem is not None:
            raise BooleanQueryError(repr(query), None, problem)
        return self._pages(query, date, k)

    def _isolated(self, query: str, run) -> list[str] | Exception:
        try:
            return run()
        except Exception as exc:  # noqa: BLE001 - one query's failure is its own (see _failure)
            return self._failure(query, exc)

    def _failure(self, query: str, exc: Exception) -> Exception:
        """``exc`` as this query's error: a search or query error as it is; anything else a hostile answer raised
        (RecursionError, UnicodeError, MemoryError, ...) as a :class:`SearchServiceError` naming the query."""
        if isinstance(exc, (SearchServiceError, BooleanQueryError)):
            return exc
        failure = SearchServiceError(f"{self.service.name}: the answer to {query[:200]!r} cannot be used: "
                                     f"{type(exc).__name__}: {excerpt(str(exc), 200)}")
        failure.__cause__ = exc
        return failure

    def _check_queries(self, queries: Sequence[str]) -> None:
        """Refuse, before any request, a batch holding a query the engine cannot send."""
        if isinstance(queries, str):
            return  # _check says what is wrong
        for query in queries:
            problem = self.query_error(query)
            if problem is not None:
                raise BooleanQueryError(repr(query), None, problem)

    def _pages(self, query: str, date: DateRange | None, k: int) -> Generator[dict, dict, list[str]]:
        raise NotImplementedError

    def _check(self, queries: Sequence[str], k: int, dates: Sequence[DateRange | None] | None):
        check_k(k)
        if k > self.max_k:
            raise ValueError(f"k={k} is above what {type(self).__name__} can page through ({self.max_k}); lower k")
        if isinstance(queries, str):
            raise ValueError("queries must be a list of strings, not one string; wrap it: [query]")
        if dates is None:
            dates = [self.date_range] * len(queries)
        if len(dates) != len(queries):
            raise ValueError(f"got {len(dates)} date ranges for {len(queries)} queries; give one (or None) per query")
        return list(zip(queries, dates, strict=True))

    def _run_sync(self, pages: Generator[dict, dict, list[str]]) -> list[str]:
        params = next(pages)
        while True:
            try:
                params = pages.send(self.service.get(self.path, params))
            except StopIteration as done:
                return done.value

    async def _run_async(self, pages: Generator[dict, dict, list[str]], client) -> list[str]:
        params = next(pages)
        while True:
            try:
                params = pages.send(await self.service.aget(self.path, params, client))
            except StopIteration as done:
                return done.value

    def close(self) -> None:
        self.service.close()


def _first_error_raised(results: list[list[str] | Exception]) -> list[list[str]]:
    for result in results:
        if isinstance(result, Exception):
            raise result
    return results  # type: ignore[return-value]
