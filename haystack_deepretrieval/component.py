"""``DeepRetrievalQueryRewriter``: a Haystack component that rewrites a query with a DeepRetrieval-trained model.

It outputs ``query`` (the rewrite, or the original on fallback) for a retriever's ``query`` input, and ``queries``
(the rewrite plus, optionally, the original) for ``MultiQueryTextRetriever``, the way ``QueryExpander`` does.
Model text is untrusted: a backend error, a timeout or unparsable text yields the original query and a logged
warning, unless ``strict=True``.

With ``feedback_docs`` > 0 (an adapter trained with ``feedback_docs``) the prompt also shows the titles or leading
sentences of the query's first-pass results: connect a first retriever's ``documents`` to the ``documents`` input
(docs/haystack.md has the pipeline); they become prompt text exactly as in training
(``deepretrieval_trainer.rewriting.feedback``).

For an adapter trained with ``framing: fuse``, connect ``query`` (the rewrite) to one retriever, give the user's
query to a second retriever over the same store, and join both with ``QueryFusionJoiner`` (``fusion.py``).

Importing this module adds ``haystack_deepretrieval`` to Haystack's deserialization allowlist, so pipeline YAML
naming the component loads with ``Pipeline.loads``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import threading
from typing import Any, Literal

from haystack import Document, component, default_from_dict, default_to_dict
from haystack.core.errors import SerializationError
from haystack.utils import Secret, deserialize_secrets_inplace

from deepretrieval_trainer.common.fields import check_arguments
from deepretrieval_trainer.common.precision import check_dtype
from deepretrieval_trainer.retrieval.framing import search_text
from deepretrieval_trainer.rewriting.rewriters import Rewriter, RewriteResult
from deepretrieval_trainer.rewriting.card import AdapterCard, read_card
from deepretrieval_trainer.rewriting.tasks import Task, get_task, with_feedback

from .documents import document_hit
from .serialization import refuse_clear_secrets

logger = logging.getLogger(__name__)

Backend = Literal["local", "openai"]
BACKENDS = ("local", "openai")
DEFAULT_API_KEY_ENV_VARS = ["DEEPRETRIEVAL_API_KEY", "OPENAI_API_KEY"]


@component
class DeepRetrievalQueryRewriter:
    """Rewrites ``query`` with a local model (transformers, optional peft adapter) or an OpenAI-compatible server.

    Every ``__init__`` parameter is serialized by :meth:`to_dict`; the API key only as its environment-variable
    form. The model is loaded (or the client created) in :meth:`warm_up`, which a pipeline calls before running.
    """

    def __init__(
        self,
        *,
        backend: Backend = "local",
        model: str | None = None,
        adapter: str | None = None,
        base_url: str | None = None,
        api_key: Secret | None = Secret.from_env_var(DEFAULT_API_KEY_ENV_VARS, strict=False),  # noqa: B008
        task: str | None = None,
        system_prompt: str | None = None,
        user_prompt: str | None = None,
        include_original: bool | None = None,
        query_weight: int | None = None,
        timeout: float = 30.0,
        max_retries: int = 2,
        max_tokens: int = 128,
        temperature: float = 0.0,
        device: str = "cpu",
        dtype: str = "auto",
        strict: bool = False,
        feedback_docs: int | None = None,
    ) -> None:
        """
        :param backend: ``"local"`` runs the model in-process; ``"openai"`` calls an OpenAI-compatible server
            (vLLM serving the base model with the trained adapter as a LoRA module).
        :param model: local: a model id or folder (None = the embedded SmolLM2-135M-Instruct); openai: the served
            model or LoRA module name (required).
        :param adapter: local only: a peft adapter folder (a training run's ``adapter/``). Its card (written by
            training beside peft's files) supplies the defaults of ``task``, ``feedback_docs``, ``include_original``
            and ``query_weight``, so the adapter is searched as it was trained; a value given here wins.
        :param base_url: openai only: the server's ``/v1`` URL (None = ``http://127.0.0.1:8000/v1``).
        :param api_key: openai only: the server's key, as a Haystack ``Secret``.
        :param task: the built-in task whose prompt the model was trained with (retrieval, dense, qa, literature;
            None: the adapter card's, else retrieval).
        :param system_prompt: replaces the task's system prompt.
        :param user_prompt: replaces the task's user template; must contain ``{query}``.
        :param include_original: whether ``queries`` also holds the original query (after the rewrite), and whether
            ``search_query`` is the original plus the rewrite (the trainer's ``expand`` framing) or the rewrite alone
            (None: as the adapter card's framing says, else True).
        :param query_weight: ``framing: expand``: how many times ``search_query`` repeats the original before the
            rewrite, as the adapter was trained (None: the card's, else 1). Haystack's in-memory BM25 counts each
            distinct token once, so the repetition matters for retrievers that count repeated query tokens.
            ``framing: fuse`` does not read it here: connect ``query`` (the rewrite; the original on fallback) to a
            retriever, the user's query to a second retriever over the same store, and both to
            ``QueryFusionJoiner(query_weight=...)``, which weights the original's scores.
        :param timeout: openai only: seconds per request.
        :param max_retries: openai only: retries per request.
        :param max_tokens: the most tokens to generate.
        :param temperature: 0 is greedy.
        :param device: local only: the torch device.
        :param dtype: local only: ``auto`` (bfloat16 where the device has bf16 units, else float32), ``float32``
            or ``bfloat16``. A served model's precision is the server's (``deepretrieval serve --dtype``).
        :param strict: raise ``RewriteError`` instead of falling back (for tests and debugging).
        :param feedback_docs: show the model the top N documents of the ``documents`` input (the raw query's
            first-pass results), as the adapter was trained (None: the card's, else 0, the query-only prompt).
        """
        # every parameter against its annotation (YAML strict: "false" is text, not false; max_retries: 2.5 ...)
        check_arguments(DeepRetrievalQueryRewriter.__init__, {k: v for k, v in locals().items() if k != "self"})
        if backend not in BACKENDS:
            raise ValueError(f"backend={backend!r}: choose one of {BACKENDS}")
        if backend == "openai" and not model:
            raise ValueError("backend='openai' needs model=...: the served model or LoRA module name")
        if backend == "openai" and adapter is not None:
            raise ValueError(
                f"adapter={adapter!r} is for backend='local'; for 'openai' serve the adapter "
                "(vllm serve ... --lora-modules NAME=PATH) and pass model='NAME'"
            )
        check_dtype(dtype)
        if backend == "local" and base_url is not None:
            raise ValueError(f"base_url={base_url!r} is for backend='openai'; drop it or set backend='openai'")
        if max_tokens < 1:
            raise ValueError(f"max_tokens={max_tokens} must be >= 1")
        if temperature < 0:
            raise ValueError(f"temperature={temperature} must be >= 0 (0 means greedy)")
        if timeout <= 0:
            raise ValueError(f"timeout={timeout} must be > 0 seconds")
        if query_weight is not None and query_weight < 1:
            raise ValueError(f"query_weight={query_weight} must be >= 1 (how many times search_query repeats the original)")
        if max_retries < 0:
            raise ValueError(f"max_retries={max_retries} must be >= 0")
        self.backend = backend
        self.model = model
        self.adapter = adapter
        self.base_url = base_url
        self.api_key = api_key
        self.task = task
        self.system_prompt = system_prompt
        self.user_prompt = user_prompt
        self.timeout = timeout
        self.max_retries = max_retries
        self.max_tokens = max_tokens
        self.temperature = temperature
        self.device = device
        self.dtype = dtype
        self.strict = strict
        self.feedback_docs = feedback_docs
        card = read_card(adapter) if backend == "local" and adapter else None
        warning = card.mismatch("HaystackSearch") if card is not None else None
        if warning:
            logger.warning("%s: %s", adapter, warning)
        self._task = _build_task(task, system_prompt, user_prompt, feedback_docs, card)  # validates them now
        # as given, else as the adapter was trained: serialized resolved, so a saved pipeline keeps searching so
        self.include_original, self.query_weight = _searched_as(card, include_original, query_weight)
        self._rewriter: Rewriter | None = None
        self._prebuilt = False
        self._lock = threading.Lock()

    @classmethod
    def from_rewriter(cls, rewriter: Rewriter, *, include_original: bool | None = None,
                      query_weight: int | None = None) -> DeepRetrievalQueryRewriter:
        """Wrap an already built core ``Rewriter`` (any backend, e.g. your own ``BaseRewriter`` subclass); the
        ``rewriter.card`` of an adapter (``LocalRewriter(adapter=...)``) supplies ``include_original`` and
        ``query_weight`` when they are None, as in ``__init__``.

        Such a component runs in pipelines but cannot be serialized: build it from parameters for YAML.
        """
        if not isinstance(rewriter, Rewriter):
            raise TypeError(f"{type(rewriter).__name__} is not a Rewriter: it needs rewrite(), arewrite() and .task")
        instance = cls(include_original=include_original, query_weight=query_weight,
                       strict=getattr(rewriter, "strict", False))
        instance.include_original, instance.query_weight = _searched_as(getattr(rewriter, "card", None),
                                                                         include_original, query_weight)
        instance._rewriter = rewriter
        instance._task = rewriter.task
        instance._prebuilt = True
        return instance

    def warm_up(self) -> None:
        """Load the local model, or create the OpenAI-compatible client (idempotent)."""
        self._ready()

    async def warm_up_async(self) -> None:
        await asyncio.to_thread(self._ready)

    def _ready(self) -> Rewriter:
        with self._lock:
            if self._rewriter is None:
                self._rewriter = self._build_rewriter()
            return self._rewriter

    def close(self) -> None:
        """Release the backend (the openai connection pools; the local model); the next run warms up again.

        A rewriter given to :meth:`from_rewriter` belongs to the caller and stays open.
        """
        rewriter = self._detach()
        if hasattr(rewriter, "close"):
            rewriter.close()

    async def close_async(self) -> None:
        rewriter = self._detach()
        if hasattr(rewriter, "aclose"):
            await rewriter.aclose()
        elif hasattr(rewriter, "close"):
            rewriter.close()

    def _detach(self) -> Rewriter | None:
        if self._prebuilt:
            return None
        with self._lock:
            rewriter, self._rewriter = self._rewriter, None
        return rewriter

    def _build_rewriter(self) -> Rewriter:
        if self.backend == "local":
            from deepretrieval_trainer.rewriting.rewriters import LocalRewriter

            rewriter = LocalRewriter(
                self.model, adapter=self.adapter, task=self._task, device=self.device, dtype=self.dtype,
                max_new_tokens=self.max_tokens, temperature=self.temperature, strict=self.strict,
            )
            rewriter.load()
            return rewriter
        try:
            from deepretrieval_trainer.rewriting.openai_compat import OpenAIRewriter
        except ImportError as exc:
            raise ImportError(
                f"backend='openai' needs deepretrieval_trainer.rewriting.openai_compat ({exc}); "
                "reinstall the project: pip install -e '.[haystack]'"
            ) from exc
        options: dict[str, Any] = {"base_url": self.base_url} if self.base_url else {}
        return OpenAIRewriter(
            self.model, api_key=self.api_key.resolve_value() if self.api_key else None, task=self._task,
            timeout=self.timeout, max_retries=self.max_retries, max_tokens=self.max_tokens,
            temperature=self.temperature, strict=self.strict, **options,
        )

    @component.output_types(query=str, queries=list[str], search_query=str, meta=dict[str, Any])
    def run(self, query: str, include_original: bool | None = None,
            documents: list[Document] | None = None) -> dict[str, Any]:
        """Rewrite ``query``.

        :param query: the user's query.
        :param include_original: overrides the init value for this call.
        :param documents: the raw query's first-pass results (a first retriever's output); required when
            ``feedback_docs`` > 0, ignored otherwise.
        :returns: ``query``: the rewrite (the original on fallback); ``queries``: the rewrite, then the original
            when ``include_original``; ``search_query``: what the trainer searched for this rewrite (the original
            ``query_weight`` times, then the rewrite, when ``include_original``; the original on fallback): connect it
            to a BM25 retriever's ``query`` for an adapter trained with ``framing: expand`` (under ``framing:
            fuse``, ``query`` goes to the rewrite's retriever of a ``QueryFusionJoiner``); ``meta``: ``original``,
            ``fell_back``, ``reason``, ``latency_s``.
        """
        if not _usable(query):
            return self._outputs(_empty_result(query), include_original)
        hits = self._hits(documents)
        return self._outputs(self._ready().rewrite([query], **hits)[0], include_original, hits)

    @component.output_types(query=str, queries=list[str], search_query=str, meta=dict[str, Any])
    async def run_async(self, query: str, include_original: bool | None = None,
                        documents: list[Document] | None = None) -> dict[str, Any]:
        """The async form of :meth:`run` (a server backend sends the request without blocking the loop)."""
        if not _usable(query):
            return self._outputs(_empty_result(query), include_original)
        rewriter = self._rewriter or await asyncio.to_thread(self._ready)  # model loads off the event loop
        hits = self._hits(documents)
        return self._outputs((await rewriter.arewrite([query], **hits))[0], include_original, hits)

    def _hits(self, documents: list[Document] | None) -> dict[str, Any]:
        """The rewriter's ``hits`` argument: the first-pass documents, each id once, as training reads them."""
        feedback = self._task.feedback
        if feedback is None:
            return {}
        if documents is None:
            raise ValueError(f"feedback_docs={feedback.docs}: the prompt shows the query's first-pass results; "
                             "connect a first retriever's documents to this component's 'documents' input")
        kept: dict[str, Any] = {}
        for document in documents:
            kept.setdefault(document.id, document_hit(document))
        return {"hits": [list(kept.values())[: feedback.docs]]}

    def _outputs(self, result: RewriteResult, include_original: bool | None,
                 hits: dict[str, Any] | None = None) -> dict[str, Any]:
        from deepretrieval_trainer.common.encoding import encoding_problem

        problem = None if result.fell_back else encoding_problem(result.query)
        if problem is not None:  # any Rewriter (from_rewriter): a rewrite the next component cannot encode
            logger.warning("query rewrite fell back to the original query %r: the rewrite cannot be sent on: %s",
                           result.original, problem)
            result = RewriteResult(result.original, result.original, True, f"the rewrite cannot be sent on: {problem}",
                                   result.completion, result.latency_s)
        include = self.include_original if include_original is None else include_original
        queries = [result.query]
        if include and result.original.strip().lower() != result.query.strip().lower():
            queries.append(result.original)
        meta = {"original": result.original, "fell_back": result.fell_back, "reason": result.reason,
                "latency_s": result.latency_s}
        if result.fell_back:
            searched = result.query
        elif self._task.feedback is not None and self._task.feedback.field == "terms":
            # the corpus-steered task (framing steer): RM3 over the first-pass candidate terms the answer keeps
            candidates = self._task.feedback.candidates((hits or {}).get("hits", [[]])[0])
            searched = search_text(result.original, result.query, "steer", self.query_weight, candidates)
        else:
            searched = search_text(result.original, result.query, "expand", self.query_weight) if include \
                else result.query
        return {"query": result.query, "queries": queries, "search_query": searched, "meta": meta}

    def to_dict(self) -> dict[str, Any]:
        if self._prebuilt:
            raise SerializationError(
                "this DeepRetrievalQueryRewriter wraps a Python Rewriter object (from_rewriter) and cannot be "
                "serialized; build it from parameters (backend=..., model=..., adapter=...) to save it"
            )
        return default_to_dict(
            self, backend=self.backend, model=self.model, adapter=self.adapter, base_url=self.base_url,
            api_key=self.api_key.to_dict() if self.api_key is not None else None, task=self.task,
            system_prompt=self.system_prompt, user_prompt=self.user_prompt, include_original=self.include_original,
            query_weight=self.query_weight, timeout=self.timeout, max_retries=self.max_retries, max_tokens=self.max_tokens,
            temperature=self.temperature, device=self.device, dtype=self.dtype, strict=self.strict,
            feedback_docs=self.feedback_docs,
        )

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DeepRetrievalQueryRewriter:
        refuse_clear_secrets(data, ["api_key"])
        data = {**data, "init_parameters": dict(data.get("init_parameters", {}))}  # never mutate the caller's dict
        deserialize_secrets_inplace(data["init_parameters"], keys=["api_key"])
        return default_from_dict(cls, data)


def _build_task(name: str | None, system_prompt: str | None, user_prompt: str | None, feedback_docs: int | None,
                card: AdapterCard | None) -> Task:
    """The prompt: the card's task and feedback unless ``name`` or ``feedback_docs`` say otherwise, then the
    template overrides."""
    if name is not None and not isinstance(name, str):
        raise TypeError(f"task={name!r}: pass a built-in task name (a str) so that the component serializes")
    if feedback_docs is not None and (not isinstance(feedback_docs, int) or isinstance(feedback_docs, bool)
                                      or feedback_docs < 0):
        raise ValueError(f"feedback_docs={feedback_docs!r} must be an integer >= 0 (0: query-only prompt)")
    if card is not None and name is None and feedback_docs is None:
        task = card.prompt_task()
    else:
        task = get_task(name if name is not None else card.task if card is not None else "retrieval")
        docs = feedback_docs if feedback_docs is not None else (card.feedback.docs if card and card.feedback else 0)
        if docs:
            # the feedback template is added to the built-in one, as training does; a user_prompt may replace it
            task = with_feedback(task, docs)
    if card is not None and task.messages("q", []) != card.prompt_task().messages("q", []):
        logger.warning("the adapter was trained with %s; this component prompts it otherwise, as its parameters ask",
                       card.describe())
    changes = {key: value for key, value in (("system", system_prompt), ("user", user_prompt)) if value is not None}
    if task.feedback is not None and "user" in changes and "{feedback}" not in changes["user"]:
        raise ValueError(f"user_prompt={user_prompt!r}: with feedback_docs the template must contain "
                         "'{feedback}' (where the first-pass results go)")
    return dataclasses.replace(task, **changes) if changes else task


def _searched_as(card: AdapterCard | None, include_original: bool | None, query_weight: int | None
                 ) -> tuple[bool, int]:
    """``include_original`` and ``query_weight`` as given, else as the adapter was trained (its card's framing:
    ``expand`` searches the original ``query_weight`` times then the rewrite; ``replace`` and ``fuse`` the rewrite
    alone, ``fuse`` beside the original's own search through ``QueryFusionJoiner``; ``steer`` RM3 over the kept
    candidate terms, the query weighted by ``query_weight``), else True and 1."""
    trained_include = card.framing == "expand" if card is not None else True
    trained_weight = card.query_weight if card is not None and card.framing in ("expand", "steer") else 1
    include = trained_include if include_original is None else include_original
    weight = trained_weight if query_weight is None else query_weight
    if card is not None and (include, weight if include or card.framing == "steer" else 1) != (trained_include,
                                                                                                trained_weight):
        logger.warning("the adapter was trained with framing %s, query_weight %d; this component's search_query "
                       "follows include_original=%s, query_weight=%d instead, as its parameters ask", card.framing,
                       card.query_weight, include, weight)
    if card is not None and card.framing == "fuse":
        logger.info("the adapter was trained with framing fuse: connect `query` to a retriever, the user's query to "
                    "a second retriever over the same store, and both to QueryFusionJoiner(query_weight=%d)",
                    card.query_weight)
    return include, weight


def _usable(query: Any) -> bool:
    return isinstance(query, str) and bool(query.strip())


def _empty_result(query: Any) -> RewriteResult:
    logger.warning("DeepRetrievalQueryRewriter got an empty query %r: passing it through unchanged", query)
    text = query if isinstance(query, str) else ""
    return RewriteResult(text, text, True, "empty query")
