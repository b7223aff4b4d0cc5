"""A rewriter backed by an OpenAI-compatible server: vLLM serving the base model with the trained LoRA adapter.

The adapter is chosen by the model name (``vllm serve BASE --enable-lora --lora-modules NAME=ADAPTER``; see
``deepretrieval serve``). Each query is one ``POST /v1/chat/completions`` whose last message is the assistant turn
started with the task's prefill (``<think>``); vLLM continues it (``continue_final_message``), so the model sees the
same prompt as in training. Requests run concurrently (asyncio with a semaphore; sync calls on a private event loop)
over one connection pool. ``timeout`` is a deadline for the whole request, however slowly the bytes arrive, and
retries with exponential backoff on 429, 5xx and connection errors stop when ``max_retries`` or the query's overall
budget ``total_timeout`` runs out. An answer is read decoded up to ``max_response_bytes`` (by default what
``n`` completions of ``max_tokens`` tokens can take, see :meth:`EndpointConfig.response_cap`), so a compressed
body cannot expand in memory. Each query is its own request in its own ``try``: a failed request, an answer that
cannot be read, or a query that cannot be encoded makes that query alone fall back to the original text, with the
reason logged.

We keep our own client over httpx instead of the ``openai`` package: vLLM's ``continue_final_message`` and the
per-query fallback need the raw request and answer, and the ``openai`` client's timeout and retries are per read and
per attempt, without the whole-request deadline and overall budget asked for here.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import threading
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import httpx

from ..common.deadline import (
    DeadlineExceeded,
    LoopThread,
    ResponseTooLarge,
    RetryBudget,
    UnreadableResponse,
    read_capped,
    within,
)
from ..common.fields import check_fields
from ..common.redaction import excerpt, redact, register_secret
from .answer import MAX_QUERY_CHARS
from .card import CARD_FILE, AdapterCard, read_card
from .rewriters import BaseRewriter
from .tasks import Task

logger = logging.getLogger(__name__)

Choice = Literal["first_valid", "majority"]
DEFAULT_BASE_URL = "http://127.0.0.1:8000/v1"
API_KEY_ENV_VARS = ("DEEPRETRIEVAL_API_KEY", "OPENAI_API_KEY")
RETRY_STATUS = frozenset({408, 409, 429}) | frozenset(range(500, 600))
MAX_BACKOFF_S = 8.0
#: The default cap of one answer's decoded bytes: the envelope (id, usage, ...) plus, per generated token, far more
#: than a token takes as JSON (a token is a few to a few dozen characters, at most 6 bytes each as a \uXXXX escape).
RESPONSE_BASE_BYTES, RESPONSE_BYTES_PER_TOKEN = 64 * 1024, 256


class ServerError(RuntimeError):
    """The server answered, but not with usable completions (an HTTP error after retries, or a malformed body)."""

    def __init__(self, message: str) -> None:
        super().__init__(redact(message))  # a server may echo the request, Authorization header included


@dataclass(frozen=True)
class EndpointConfig:
    """Where and how to ask: validated once, shared by the sync and async paths."""

    model: str
    base_url: str = DEFAULT_BASE_URL
    timeout: float = 30.0
    max_retries: int = 2
    retry_backoff: float = 0.5
    max_concurrency: int = 8
    max_tokens: int = 128
    temperature: float = 0.0
    n: int = 1
    choice: Choice = "first_valid"
    total_timeout: float | None = None  # one query's attempts and waits; None: timeout * (max_retries + 1) + 8 s
    max_response_bytes: int | None = None  # one answer's decoded bytes; None: 64 KiB + 256 B * max_tokens * n

    def __post_init__(self) -> None:
        check_fields(self)
        if not isinstance(self.model, str) or not self.model.strip():
            raise ValueError(f"model={self.model!r}: pass the served model or LoRA module name (vLLM --lora-modules NAME=...)")
        if not self.base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url={self.base_url!r} is not an http(s) URL; use e.g. {DEFAULT_BASE_URL}")
        checks = [
            (self.timeout > 0, f"timeout={self.timeout} must be > 0 seconds"),
            (self.total_timeout is None or self.total_timeout > 0,
             f"total_timeout={self.total_timeout} must be > 0 seconds (or None for timeout * (max_retries + 1) + 8)"),
            (self.max_retries >= 0, f"max_retries={self.max_retries} must be >= 0 (0 = no retry)"),
            (self.retry_backoff >= 0, f"retry_backoff={self.retry_backoff} must be >= 0 seconds"),
            (self.max_concurrency >= 1, f"max_concurrency={self.max_concurrency} must be >= 1"),
            (self.max_response_bytes is None or self.max_response_bytes >= 1024,
             f"max_response_bytes={self.max_response_bytes} must be >= 1024 (or None for 64 KiB + 256 B per token)"),
            (self.max_tokens >= 1, f"max_tokens={self.max_tokens} must be >= 1"),
            (self.temperature >= 0, f"temperature={self.temperature} must be >= 0 (0 means greedy)"),
            (self.n >= 1, f"n={self.n} must be >= 1"),
            (self.choice in ("first_valid", "majority"), f"choice={self.choice!r} must be 'first_valid' or 'majority'"),
            (self.n == 1 or self.temperature > 0,
             f"n={self.n} samples with temperature=0 are all the same greedy text: set temperature > 0 (e.g. 0.7)"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)

    @property
    def budget_s(self) -> float:
        """Seconds one query may spend on all its attempts and backoff waits together."""
        if self.total_timeout is not None:
            return self.total_timeout
        return self.timeout * (self.max_retries + 1) + MAX_BACKOFF_S

    @property
    def response_cap(self) -> int:
        """The most bytes one answer may decode to: ``max_response_bytes``, else what ``n`` completions of
        ``max_tokens`` tokens can take with room to spare (96 KiB at the defaults)."""
        if self.max_response_bytes is not None:
            return self.max_response_bytes
        return RESPONSE_BASE_BYTES + RESPONSE_BYTES_PER_TOKEN * self.max_tokens * self.n

    @property
    def chat_url(self) -> str:
        return self.base_url.rstrip("/") + "/chat/completions"


def resolve_api_key(api_key: str | None) -> str | None:
    """The given key, else ``$DEEPRETRIEVAL_API_KEY``, else ``$OPENAI_API_KEY``, else None (no auth header).

    Surrounding whitespace is dropped (a key read from a mounted secret file ends with a newline); a key holding a
    character an HTTP header cannot carry is refused with a message that does not show it.
    """
    given = api_key or next((os.environ[name] for name in API_KEY_ENV_VARS if os.environ.get(name)), None)
    register_secret(given)  # every form of it, before anything can show it
    key = given.strip() if given else None
    if not key:
        return None
    bad = next((i for i, char in enumerate(key) if not " " <= char <= "~"), None)
    if bad is not None:
        raise ValueError(f"the API key has a character an HTTP header cannot carry (U+{ord(key[bad]):04X}, "
                         f"character {bad + 1} of {len(key)}); check the value of api_key, $DEEPRETRIEVAL_API_KEY "
                         "or $OPENAI_API_KEY (the key itself is not shown)")
    return key


def choose_completion(task: Task, samples: Sequence[str], choice: Choice, *, max_chars: int = MAX_QUERY_CHARS) -> str:
    """One of ``n`` sampled completions: the first that parses, or the one giving the most frequent parsed query.

    When none parses, the first is returned, so the caller's parse reports why it falls back.
    """
    if not samples:
        raise ServerError("the server returned no choices")
    parsed = [task.parse(s, max_chars=max_chars) for s in samples]
    valid = [(i, " ".join(p.query.lower().split())) for i, p in enumerate(parsed) if p.ok]
    if not valid:
        return samples[0]
    if choice == "first_valid":
        return samples[valid[0][0]]
    counts = Counter(key for _, key in valid)
    best = max(counts.values())
    return samples[next(i for i, key in valid if counts[key] == best)]  # ties: the earliest sample


class OpenAIRewriter(BaseRewriter):
    """Rewrites queries through ``POST {base_url}/chat/completions`` with ``model`` (a vLLM LoRA module name).

    ``n > 1`` samples several completions per query (needs ``temperature > 0``) and keeps one by ``choice``.
    The API key is optional (``api_key``, else ``$DEEPRETRIEVAL_API_KEY``, else ``$OPENAI_API_KEY``) and never logged.
    Use as a context manager, or call :meth:`close` / :meth:`aclose`, to release the connection pools.
    ``card``: how the served adapter was trained, as an :class:`~.card.AdapterCard` or the adapter folder holding
    one (the folder ``deepretrieval serve`` serves): ``task=None`` then takes its prompt, and the plugins its framing.
    """

    def __init__(
        self,
        model: str,
        *,
        base_url: str = DEFAULT_BASE_URL,
        api_key: str | None = None,
        task: str | Task | None = None,
        card: AdapterCard | str | Path | None = None,
        timeout: float = 30.0,
        total_timeout: float | None = None,
        max_response_bytes: int | None = None,
        max_retries: int = 2,
        retry_backoff: float = 0.5,
        max_concurrency: int = 8,
        max_tokens: int = 128,
        temperature: float = 0.0,
        n: int = 1,
        choice: Choice = "first_valid",
        strict: bool = False,
        max_query_chars: int = MAX_QUERY_CHARS,
    ):
        if card is not None and not isinstance(card, AdapterCard):
            found = read_card(card)
            if found is None:
                raise FileNotFoundError(f"card={str(card)!r}: no {CARD_FILE} there; pass the served adapter's folder "
                                        "(a run's adapter/) or an AdapterCard")
            card = found
        self.card = card
        if task is None:
            task = card.prompt_task() if card is not None else "retrieval"
        super().__init__(task=task, strict=strict, max_query_chars=max_query_chars)
        self.config = EndpointConfig(
            model=model, base_url=base_url, timeout=timeout, total_timeout=total_timeout, max_retries=max_retries,
            retry_backoff=retry_backoff, max_response_bytes=max_response_bytes,
            max_concurrency=max_concurrency, max_tokens=max_tokens, temperature=temperature, n=n, choice=choice,
        )
        self._api_key = resolve_api_key(api_key)
        self._clients: dict[asyncio.AbstractEventLoop, tuple[httpx.AsyncClient, asyncio.Semaphore]] = {}
        self._runner: LoopThread | None = None
        self._lock = threading.Lock()

    @property
    def model(self) -> str:
        return self.config.model

    @property
    def base_url(self) -> str:
        return self.config.base_url

    def __repr__(self) -> str:
        return f"OpenAIRewriter(model={self.model!r}, base_url={self.base_url!r}, task={self.task.name!r})"

    # -- the request -------------------------------------------------------------------------------------------

    def payload(self, conversation: list[dict[str, str]]) -> dict[str, Any]:
        """The chat-completions body: the task's messages, then the assistant turn started with the prefill."""
        body: dict[str, Any] = {
            "model": self.config.model,
            "messages": list(conversation),
            "max_tokens": self.config.max_tokens,
            "temperature": self.config.temperature,
            "n": self.config.n,
        }
        if self.task.stop:  # as in training and in-process: nothing after the answer is read (the server drops it)
            body["stop"] = list(self.task.stop)
        if self.task.prefill:
            body["messages"].append({"role": "assistant", "content": self.task.prefill})
            body.update(continue_final_message=True, add_generation_prompt=False)
        return body

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self._api_key}"} if self._api_key else {}

    def _limits(self) -> httpx.Limits:
        return httpx.Limits(max_connections=self.config.max_concurrency,
                            max_keepalive_connections=self.config.max_concurrency)

    def _completion(self, response: httpx.Response) -> str:
        """The chosen completion text from a 200 response; :class:`ServerError` on anything malformed."""
        try:
            choices = response.json()["choices"]
            samples = [c["message"]["content"] for c in choices]
        except (ValueError, KeyError, TypeError, RecursionError) as exc:  # ValueError: bad JSON or UTF-8 too
            raise ServerError(f"malformed response from {self.config.chat_url} ({type(exc).__name__}): "
                              f"{_snippet(response)}") from exc
        if not all(isinstance(s, str) for s in samples):
            raise ServerError(f"a choice from {self.config.chat_url} has no text content: {_snippet(response)}")
        return choose_completion(self.task, samples, self.config.choice, max_chars=self.max_query_chars)

    def _unreadable(self, exc: UnreadableResponse) -> ServerError:
        if isinstance(exc, ResponseTooLarge):
            return ServerError(f"unusable answer from {self.config.chat_url}: {exc} (max_response_bytes); "
                               f"{self.config.n} completion(s) of max_tokens={self.config.max_tokens} take far "
                               "less: is base_url an OpenAI-compatible server?")
        return ServerError(f"unusable answer from {self.config.chat_url}: {exc}")

    def _give_up(self, attempt: int, response: httpx.Response | None, error: Exception | None) -> Exception:
        where = f"{self.config.chat_url} (model {self.config.model!r})"
        tries = f"after {attempt + 1} attempt(s)"
        if isinstance(error, DeadlineExceeded):
            return ServerError(f"no complete answer from {where} {tries}: {error}; the server is too slow or "
                               f"stalled: raise timeout (now {self.config.timeout:g}s) or check the server")
        if response is None:
            return ServerError(
                f"cannot reach {where} {tries}: {type(error).__name__}: {error}; is the server running "
                "(`deepretrieval serve --adapter RUN_DIR`) and is base_url right?"
            )
        hint = ""
        if response.status_code == 404:
            hint = "; check that model is a name the server lists at /v1/models (the --lora-modules NAME)"
        elif response.status_code in (401, 403):
            hint = "; set the API key (api_key=, $DEEPRETRIEVAL_API_KEY or $OPENAI_API_KEY)"
        return ServerError(f"HTTP {response.status_code} from {where} {tries}: {_snippet(response)}{hint}")

    def _backoff(self, attempt: int, response: httpx.Response | None) -> float:
        retry_after = response.headers.get("retry-after") if response is not None else None
        if retry_after:
            try:
                return min(float(retry_after), MAX_BACKOFF_S)
            except ValueError:
                pass
        delay = self.config.retry_backoff * 2**attempt
        return min(delay * (0.5 + random.random()), MAX_BACKOFF_S)

    def _should_retry(self, attempt: int, response: httpx.Response | None) -> bool:
        if attempt >= self.config.max_retries:
            return False
        return response is None or response.status_code in RETRY_STATUS

    # -- the requests: one coroutine per query, on the caller's loop or (sync callers) on a private one ---------

    def _settle(self, attempt: int, response: httpx.Response | None, error: Exception | None,
                budget: RetryBudget) -> tuple[bool, Any]:
        """After one attempt: ``(True, completion or exception)`` when done, else ``(False, seconds to wait)``."""
        if response is not None and response.status_code == 200:
            try:
                return True, self._completion(response)
            except ServerError as exc:
                return True, exc
        if not self._should_retry(attempt, response):
            return True, self._give_up(attempt, response, error)
        delay = self._backoff(attempt, response)
        if not budget.allows(delay):
            spent = ServerError(f"{self._give_up(attempt, response, error)}; the retry budget "
                                f"(total_timeout={budget.total_s:g}s) is spent")
            return True, spent
        logger.debug("retrying %s in %.2fs (%s)", self.config.chat_url, delay, error or response.status_code)
        return False, delay

    def _request_body(self, conversation: list[dict[str, str]]) -> bytes:
        """The request's JSON as UTF-8; :class:`ServerError` when the query holds text UTF-8 cannot encode."""
        try:
            text = json.dumps(self.payload(conversation), ensure_ascii=False, separators=(",", ":"), allow_nan=False)
            return text.encode("utf-8")  # as httpx's json= would send it, but a query it cannot encode stays here
        except UnicodeEncodeError as exc:  # a lone surrogate (e.g. from a JSON escape such as "\ud800")
            raise ServerError(f"the query cannot be sent: it holds {exc.object[exc.start:exc.end]!r}, which UTF-8 "
                              "cannot encode (a lone surrogate); pass well-formed text") from None

    async def _aquery(self, client: httpx.AsyncClient, gate: asyncio.Semaphore, conversation) -> str | Exception:
        """One query's completion, or the exception that makes it (and only it) fall back."""
        try:
            return await self._apost(client, gate, conversation)
        except Exception as exc:  # noqa: BLE001 - whatever one query's text or answer raises stays with that query
            return exc

    async def _apost(self, client: httpx.AsyncClient, gate: asyncio.Semaphore, conversation) -> str | Exception:
        body = self._request_body(conversation)
        headers = {"Content-Type": "application/json", **self._headers()}
        budget = RetryBudget(self.config.timeout, self.config.budget_s)
        for attempt in range(self.config.max_retries + 1):
            response, error = None, None
            try:
                async with gate:  # waiting for a free connection is not part of the request's deadline
                    response = await within(
                        read_capped(client, "POST", self.config.chat_url, max_bytes=self.config.response_cap,
                                    content=body, headers=headers),
                        budget.attempt_timeout(), f"POST {self.config.chat_url}")
            except UnreadableResponse as exc:  # past the cap, corrupt or not-asked-for compression: not retried
                return self._unreadable(exc)
            except (httpx.TransportError, DeadlineExceeded) as exc:  # refused/reset, timeouts, protocol errors
                error = exc
            done, value = self._settle(attempt, response, error, budget)
            if done:
                return value
            await asyncio.sleep(value)
        raise AssertionError("unreachable: the last attempt always settles")

    def _async_client(self) -> tuple[httpx.AsyncClient, asyncio.Semaphore]:
        """One AsyncClient and semaphore per event loop (an AsyncClient cannot move between loops)."""
        loop = asyncio.get_running_loop()
        with self._lock:
            if loop not in self._clients:
                client = httpx.AsyncClient(timeout=self.config.timeout, limits=self._limits())
                self._clients[loop] = (client, asyncio.Semaphore(self.config.max_concurrency))
            return self._clients[loop]

    async def _acomplete(self, conversations: list[list[dict[str, str]]]) -> list[str | Exception]:
        client, gate = self._async_client()
        return list(await asyncio.gather(*(self._aquery(client, gate, c) for c in conversations)))

    def _complete(self, conversations: list[list[dict[str, str]]]) -> list[str | Exception]:
        with self._lock:
            if self._runner is None:
                self._runner = LoopThread("deepretrieval-http")
            runner = self._runner
        return runner.run(self._acomplete(conversations))

    # -- lifetime ----------------------------------------------------------------------------------------------

    def close(self) -> None:
        """Close the connection pools (of loops that are not running) and the sync callers' private loop."""
        with self._lock:
            runner, self._runner = self._runner, None
            clients, self._clients = self._clients, {}
        for loop, (client, _) in clients.items():
            if runner is not None and loop is runner.loop:
                runner.close(client.aclose())
                runner = None
            elif not loop.is_closed() and not loop.is_running():
                loop.run_until_complete(client.aclose())
        if runner is not None:
            runner.close()

    async def aclose(self) -> None:
        with self._lock:
            own = self._clients.pop(asyncio.get_running_loop(), None)
        if own is not None:
            await own[0].aclose()
        await asyncio.to_thread(self.close)

    def __enter__(self) -> OpenAIRewriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    async def __aenter__(self) -> OpenAIRewriter:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


def _snippet(response: httpx.Response, limit: int = 300) -> str:
    return excerpt(response.text, limit)  # secrets masked before the cut, not after
