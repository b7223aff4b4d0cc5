"""Rewriters: user query -> rewritten query, through a model backend.

Every backend shares :class:`BaseRewriter`: it builds the task's chat messages, asks the backend for one
completion per query, parses it (:func:`parse_answer`) and, when anything fails, returns the original query
with the reason (logged as a warning). ``strict=True`` raises instead, so tests can tell a bug from a fallback.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

from ..retrieval.search import DocumentHit
from .answer import MAX_QUERY_CHARS
from .card import CARD_FILE, AdapterCard, model_name, read_card
from .tasks import QueryInput, Task, get_task

logger = logging.getLogger(__name__)


class RewriteError(RuntimeError):
    """Raised instead of falling back when a rewriter runs with ``strict=True``."""


@dataclass(frozen=True)
class RewriteResult:
    """One rewrite. ``query`` is what to send to the retriever: the rewrite, or ``original`` on fallback."""

    original: str
    query: str
    fell_back: bool
    reason: str | None = None
    completion: str | None = None
    latency_s: float = 0.0

    @property
    def rewritten(self) -> str | None:
        """The model's rewrite, or None when it fell back."""
        return None if self.fell_back else self.query


@runtime_checkable
class Rewriter(Protocol):
    """``hits``: each query's first-pass documents, for a task whose prompt shows them (``task.feedback``)."""

    task: Task

    def rewrite(self, queries: Sequence[QueryInput], hits: Sequence[Sequence[DocumentHit]] | None = None
                ) -> list[RewriteResult]: ...

    async def arewrite(self, queries: Sequence[QueryInput], hits: Sequence[Sequence[DocumentHit]] | None = None
                       ) -> list[RewriteResult]: ...


def _original_text(query: QueryInput) -> str:
    return query if isinstance(query, str) else " ".join(str(v) for v in query.values() if v)


class BaseRewriter(ABC):
    """Shared prompt -> completion -> parse -> fallback logic. Subclasses implement ``_complete``/``_acomplete``.

    ``card``: how the adapter behind this rewriter was trained (:class:`~.card.AdapterCard`), when known; the plugins
    read its framing from here.
    """

    card: AdapterCard | None = None

    def __init__(self, *, task: str | Task = "retrieval", strict: bool = False, max_query_chars: int = MAX_QUERY_CHARS):
        self.task = get_task(task)
        self.strict = strict
        self.max_query_chars = max_query_chars

    @abstractmethod
    def _complete(self, conversations: list[list[dict[str, str]]]) -> list[str | Exception]:
        """One completion per conversation (the text generated after the task's prefill).

        A backend that serves each conversation separately may put the exception of a failed one in its place:
        that query alone falls back, with the error as its reason.
        """

    async def _acomplete(self, conversations: list[list[dict[str, str]]]) -> list[str | Exception]:
        return await asyncio.to_thread(self._complete, conversations)

    def rewrite(self, queries: Sequence[QueryInput], hits: Sequence[Sequence[DocumentHit]] | None = None
                ) -> list[RewriteResult]:
        """Rewrite a batch of queries (``hits``: their first-pass documents, for a feedback task). Never raises on
        model or backend failure unless ``strict``."""
        queries = _check_queries(queries)
        start = time.perf_counter()
        try:
            completions = self._complete(self._conversations(queries, hits))
        except Exception as exc:  # noqa: BLE001 - any backend failure must fall back, not break the host pipeline
            return self._backend_failed(queries, exc, time.perf_counter() - start)
        return self._results(queries, completions, time.perf_counter() - start)

    async def arewrite(self, queries: Sequence[QueryInput], hits: Sequence[Sequence[DocumentHit]] | None = None
                       ) -> list[RewriteResult]:
        queries = _check_queries(queries)
        start = time.perf_counter()
        try:
            completions = await self._acomplete(self._conversations(queries, hits))
        except Exception as exc:  # noqa: BLE001 - see rewrite()
            return self._backend_failed(queries, exc, time.perf_counter() - start)
        return self._results(queries, completions, time.perf_counter() - start)

    def _conversations(self, queries: Sequence[QueryInput], hits: Sequence[Sequence[DocumentHit]] | None
                       ) -> list[list[dict[str, str]]]:
        """The chat messages of each query (one ranking of ``hits`` per query, when given)."""
        if hits is None:
            return [self.task.messages(q) for q in queries]
        hits = list(hits)
        if len(hits) != len(queries):
            raise ValueError(f"{len(hits)} first-pass rankings for {len(queries)} queries: give one per query")
        return [self.task.messages(q, h) for q, h in zip(queries, hits, strict=True)]

    def _backend_failed(self, queries: Sequence[QueryInput], exc: Exception, latency: float) -> list[RewriteResult]:
        from ..common.redaction import redact  # an exception's text may hold a key (a server echoing the request)

        if self.strict:
            raise RewriteError(redact(f"{type(self).__name__} failed: {exc}")) from exc
        reason = redact(f"backend error: {type(exc).__name__}: {exc}")
        logger.warning("query rewrite fell back to the original query(s): %s", reason)
        return [RewriteResult(_original_text(q), _original_text(q), True, reason, None, latency) for q in queries]

    def _results(self, queries: Sequence[QueryInput], completions: Sequence[str | None], latency: float) -> list[RewriteResult]:
        from ..common.encoding import encoding_problem
        from ..common.redaction import redact

        if len(completions) != len(queries):
            return self._backend_failed(
                queries, RuntimeError(f"{len(completions)} completions for {len(queries)} queries"), latency
            )
        results = []
        for query, completion in zip(queries, completions, strict=True):
            original = _original_text(query)
            if isinstance(completion, Exception):
                results.append(self._backend_failed([query], completion, latency)[0])
                continue
            parsed = self.task.parse(completion, max_chars=self.max_query_chars)
            # a rewrite the next component cannot encode (a lone surrogate from a JSON escape, NUL) is no rewrite
            problem = encoding_problem(parsed.query) if parsed.ok else None
            if parsed.ok and problem is None:
                results.append(RewriteResult(original, parsed.query, False, None, completion, latency))
                continue
            reason = redact(parsed.reason if problem is None else f"the rewrite cannot be sent on: {problem}")
            if self.strict:
                raise RewriteError(f"unparsable completion for {original!r}: {reason}")
            logger.warning("query rewrite fell back to the original query %r: %s", original, reason)
            results.append(RewriteResult(original, original, True, reason, completion, latency))
        return results


def _adapter_card(adapter: str | Path) -> AdapterCard | None:
    card = read_card(adapter)
    if card is None:
        logger.info("%s has no adapter card (%s): rewriting with the embedded base model and the retrieval task "
                    "unless model= and task= say otherwise", adapter, CARD_FILE)
    return card


def _card_defaults(card: AdapterCard | None, adapter, model, task) -> tuple[str | Path | None, str | Task]:
    """``model`` and ``task``, defaulted from ``card``; an explicit one that differs from the card is warned about."""
    if card is None:
        return model, "retrieval" if task is None else task
    trained = card.prompt_task()
    if task is None:
        task = trained
    elif get_task(task).messages("q", []) != trained.messages("q", []):
        logger.warning("%s was trained with %s; rewriting with the prompt of task %r instead, as asked", adapter,
                       card.describe(), get_task(task).name)
    if model is None:
        model = card.base_model
    elif model_name(model) != card.base_model:
        logger.warning("%s was trained on base model %s; loading it on %s instead, as asked", adapter,
                       card.base_model, model)
    return model, task


def _check_queries(queries: Sequence[QueryInput]) -> list[QueryInput]:
    if isinstance(queries, str):
        raise TypeError("rewrite() takes a list of queries; wrap a single query as [query]")
    queries = list(queries)
    for query in queries:
        if isinstance(query, str) and not query.strip():
            raise ValueError("a query is empty: pass non-empty text")
    return queries


class LocalRewriter(BaseRewriter):
    """In-process transformers model (plus an optional peft LoRA adapter folder), batched, on CPU by default.

    An adapter folder's card (:mod:`~.card`) supplies the defaults: ``model=None`` is the base model it was trained
    on, ``task=None`` the task and first-pass feedback its prompts showed. Without a card (or without an adapter)
    they are the embedded model and the ``retrieval`` task. A ``model`` or ``task`` given explicitly wins, with a
    warning where it differs from the card.

    Greedy by default; ``temperature > 0`` samples. The model loads on first use or on :meth:`load`.
    ``decoding="lean"`` (default) decodes with :func:`deepretrieval_trainer.rewriting.generation.lean_generate`: the prompt
    prefix every query shares (system prompt, worked example) prefilled once per batch, and an in-place KV cache;
    ``"generate"`` uses transformers' ``generate()``. In float32 both give the same tokens; in bfloat16 a greedy token
    can differ where two candidates tie within rounding
    (docs/experiments/cpu-speed.md#in-process-rewriting-with-lean-decoding). Greedy lean decoding checks
    up to ``speculate`` tokens drafted from the prompt's and the rewrite's own n-grams in each forward (prompt-lookup
    speculation; the same greedy tokens, fewer forwards; 0 turns it off).
    """

    def __init__(
        self,
        model: str | Path | None = None,
        *,
        adapter: str | Path | None = None,
        task: str | Task | None = None,
        device: str = "cpu",
        max_new_tokens: int = 128,
        temperature: float = 0.0,
        top_p: float = 1.0,
        batch_size: int = 8,
        dtype: str = "auto",
        strict: bool = False,
        max_query_chars: int = MAX_QUERY_CHARS,
        decoding: str = "lean",
        speculate: int = 3,
    ):
        from ..common.precision import check_dtype

        check_dtype(dtype)
        if decoding not in ("lean", "generate"):
            raise ValueError(f"decoding={decoding!r}: choose 'lean' (generation.lean_generate, falling back to "
                             "generate() where it does not apply) or 'generate' (transformers' generate())")
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens={max_new_tokens} must be >= 1")
        if speculate < 0:
            raise ValueError(f"speculate={speculate} must be >= 0 (0: one token a step)")
        if temperature < 0:
            raise ValueError(f"temperature={temperature} must be >= 0 (0 means greedy)")
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size} must be >= 1")
        if adapter is not None and not (Path(adapter) / "adapter_config.json").is_file():
            raise FileNotFoundError(
                f"{adapter}: no adapter_config.json; pass a peft adapter folder (a run's `adapter/` folder)"
            )
        self.card = _adapter_card(adapter) if adapter is not None else None
        model, task = _card_defaults(self.card, adapter, model, task)
        super().__init__(task=task, strict=strict, max_query_chars=max_query_chars)
        self.model_name = model
        self.adapter = Path(adapter) if adapter is not None else None
        self.device = device
        self.max_new_tokens = max_new_tokens
        self.temperature = temperature
        self.top_p = top_p
        self.batch_size = batch_size
        self.dtype = dtype
        self.decoding = decoding
        self.speculate = speculate
        self.resolved_dtype: str | None = None  # what the model runs in, once loaded (``dtype`` resolved)
        self._model = None
        self._tokenizer = None
        self._lean: bool | None = None  # whether lean_generate runs this model's settings (decided at first batch)
        self._lock = threading.Lock()

    def load(self) -> None:
        """Load the tokenizer, model and adapter (idempotent)."""
        with self._lock:
            if self._model is not None:
                return
            from transformers import AutoModelForCausalLM, AutoTokenizer

            from ..common.models import resolve_model

            name = resolve_model(self.model_name)
            tokenizer = AutoTokenizer.from_pretrained(name)
            tokenizer.padding_side = "left"
            if tokenizer.pad_token is None:
                tokenizer.pad_token = tokenizer.eos_token
            from ..common.precision import resolve_dtype, torch_dtype

            dtype = resolve_dtype(self.dtype, self.device)
            model = AutoModelForCausalLM.from_pretrained(name, dtype=torch_dtype(dtype))
            if self.adapter is not None:
                from peft import PeftModel

                # merged into the base weights: the same function with no per-layer LoRA work at each token
                model = PeftModel.from_pretrained(model, str(self.adapter)).merge_and_unload()
            self._model = model.to(self.device).eval()
            self._tokenizer = tokenizer
            self.resolved_dtype = dtype

    def _generate(self, encoded, sampling: bool):
        """The batch's prompt + new tokens: generation.lean_generate where it implements the settings (an in-place KV
        cache, the same greedy tokens as generate()), else transformers' ``generate()``."""
        import copy

        from transformers import StopStringCriteria

        from .generation import LoopStop, lean_generate, lean_unsupported

        settings = dict(max_new_tokens=self.max_new_tokens, do_sample=sampling,
                        temperature=self.temperature if sampling else None, top_p=self.top_p if sampling else None,
                        top_k=None, pad_token_id=self._tokenizer.pad_token_id)
        config = copy.deepcopy(self._model.generation_config)  # what generate() merges the settings into
        config.update(**settings)
        if self._lean is None:
            self._lean = self.decoding == "lean" and lean_unsupported(config, self._model) is None
        # nothing after the answer is read: stop generating there (a task may have no stop strings), or where a row
        # loops (the parser cuts the loop back to its first occurrence, on every path)
        stopping = [LoopStop()] + ([StopStringCriteria(self._tokenizer, list(self.task.stop))] if self.task.stop else [])
        if self._lean:
            return lean_generate(self._model, encoded["input_ids"], encoded["attention_mask"], config,
                                 stopping_criteria=stopping, speculate=0 if sampling else self.speculate)
        return self._model.generate(**encoded, **settings, stopping_criteria=stopping)

    def prompt_text(self, conversation: list[dict[str, str]]) -> str:
        """The chat-templated prompt, ending with the task's prefill."""
        self.load()
        text = self._tokenizer.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)
        return text + self.task.prefill

    def _complete(self, conversations: list[list[dict[str, str]]]) -> list[str]:
        import torch

        self.load()
        outputs: list[str] = []
        sampling = self.temperature > 0
        for start in range(0, len(conversations), self.batch_size):
            texts = [self.prompt_text(c) for c in conversations[start : start + self.batch_size]]
            encoded = self._tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(self.device)
            with self._lock, torch.inference_mode():
                generated = self._generate(encoded, sampling)
            new_tokens = generated[:, encoded["input_ids"].shape[1] :]
            outputs.extend(self._tokenizer.batch_decode(new_tokens, skip_special_tokens=True))
        return outputs
