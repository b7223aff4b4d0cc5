"""``HaystackSearch``: the core ``SearchBackend`` over a Haystack retriever component or a whole retrieval pipeline.

The trainer's reward searches with it, so a rewriter is trained against the very retriever it will serve. Rankings
are the component's or pipeline's own, in order: ids are ``Document.id`` (or ``meta[id_meta_key]``), repeated ids
keep their first rank, and the list is cut at ``k``. ``k`` reaches the retriever through a ``top_k`` input socket on
every call (by default the ``top_k`` of the component that produces the output).

:meth:`HaystackSearch.search_documents` (the core ``DocumentSearch`` capability) returns the same ranking as documents
with their text: ``Document.content`` without a leading title, the title from ``meta[title_meta_key]`` (``"title"``,
where the BEIR loader puts it) and ``Document.score``.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from haystack import Document, Pipeline

from deepretrieval_trainer.common.errors import ConfigError
from deepretrieval_trainer.retrieval.search import DocumentHit, check_k, check_queries

from . import serialization as _serialization  # noqa: F401 - registers this package with the YAML allowlist
from .documents import document_hit

logger = logging.getLogger(__name__)

QUERY_SOCKET_NAMES = ("query", "text")


class HaystackSearch:
    """Search with ``retriever`` (any component with a ``query``-like input and a ``documents`` output) or with
    ``pipeline`` (the query goes to ``input_socket``, documents come from ``output_socket``, both
    ``"component.socket"``)."""

    def __init__(
        self,
        *,
        retriever: Any | None = None,
        pipeline: Pipeline | None = None,
        input_socket: str | Sequence[str] | None = None,
        output_socket: str | None = None,
        top_k_socket: str | Sequence[str] | None = None,
        id_meta_key: str | None = None,
        max_concurrency: int = 4,
        title_meta_key: str | None = "title",
    ) -> None:
        """
        :param retriever: a retriever component (e.g. ``InMemoryBM25Retriever``, ``TextEmbeddingRetriever``).
        :param pipeline: a retrieval pipeline; give exactly one of ``retriever`` and ``pipeline``.
        :param input_socket: where the query goes. A retriever: a socket name (default ``query``). A pipeline:
            ``"component.socket"`` or a list of them (default: every unconnected ``str`` input named ``query`` or
            ``text``, e.g. both the BM25 retriever and the text embedder of a hybrid pipeline).
        :param output_socket: where the ranked documents come from. A retriever: a socket name (default
            ``documents``). A pipeline: ``"component.socket"`` (default: the one unconnected ``documents`` output).
        :param top_k_socket: the input(s) that receive ``k`` on each call, in the same forms as ``input_socket``
            (default: the output component's ``top_k``, if it has one; ``[]`` sets none and only cuts at ``k``).
        :param id_meta_key: take a document's id from ``Document.meta[id_meta_key]`` instead of ``Document.id``.
        :param max_concurrency: how many queries ``asearch`` runs at once.
        :param title_meta_key: where :meth:`search_documents` finds a document's title (None: no titles).
        """
        if (retriever is None) == (pipeline is None):
            raise ValueError("give exactly one of retriever=<component> and pipeline=<Pipeline>")
        if not isinstance(max_concurrency, int) or max_concurrency < 1:
            raise ValueError(f"max_concurrency={max_concurrency!r} must be a positive integer")
        self.retriever = retriever
        self.pipeline = pipeline
        self.id_meta_key = id_meta_key
        self.title_meta_key = title_meta_key
        self.max_concurrency = max_concurrency
        if pipeline is not None:
            self.input_sockets = _pipeline_inputs(pipeline, input_socket)
            self.output_socket = _pipeline_output(pipeline, output_socket)
            self.top_k_sockets = _pipeline_top_k(pipeline, top_k_socket, self.output_socket[0])
        else:
            self.input_sockets, self.output_socket, self.top_k_sockets = _component_sockets(
                retriever, input_socket, output_socket, top_k_socket
            )
        self._warm = False
        self._lock = threading.Lock()

    @classmethod
    def from_beir(
        cls,
        path: str | Path,
        *,
        bm25_algorithm: str = "BM25L",
        bm25_parameters: dict[str, float] | None = None,
        max_concurrency: int = 4,
    ) -> HaystackSearch:
        """``InMemoryDocumentStore`` + ``InMemoryBM25Retriever`` over a BEIR collection folder.

        ``Document.id`` is the BEIR doc id and ``content`` is title + text. The store and retriever are
        ``search.retriever.document_store`` and ``search.retriever``: put the same retriever in your pipeline.
        """
        from haystack.components.retrievers.in_memory import InMemoryBM25Retriever
        from haystack.document_stores.in_memory import InMemoryDocumentStore

        from .beir import beir_documents

        store = InMemoryDocumentStore(bm25_algorithm=bm25_algorithm, bm25_parameters=bm25_parameters)
        store.write_documents(beir_documents(path))
        return cls(retriever=InMemoryBM25Retriever(document_store=store), max_concurrency=max_concurrency)

    @classmethod
    def from_store(cls, path: str | Path, *, id_meta_key: str | None = None,
                   max_concurrency: int = 4) -> HaystackSearch:
        """An ``InMemoryBM25Retriever`` over the ``InMemoryDocumentStore`` saved in ``path`` (``save_to_disk``), loaded
        with its own BM25 settings. The store is ``search.retriever.document_store``."""
        from haystack.components.retrievers.in_memory import InMemoryBM25Retriever

        from .stores import load_store

        return cls(retriever=InMemoryBM25Retriever(document_store=load_store(path)), id_meta_key=id_meta_key,
                   max_concurrency=max_concurrency)

    @classmethod
    def from_yaml(
        cls,
        path: str | Path,
        *,
        input_socket: str | Sequence[str] | None = None,
        output_socket: str | None = None,
        id_meta_key: str | None = None,
        top_k_socket: str | Sequence[str] | None = None,
        documents_from_beir: str | Path | None = None,
        max_concurrency: int = 4,
    ) -> HaystackSearch:
        """Load a retrieval pipeline saved with ``Pipeline.dump``; its document store must hold the documents.

        A server-backed store (Elasticsearch, Qdrant, ...) already does. An ``InMemoryDocumentStore`` does when it
        was filled in this process under the same ``index`` name, or pass ``documents_from_beir`` to write a BEIR
        corpus into the pipeline's stores (lexical retrieval only).
        """
        file = Path(path)
        if not file.is_file():
            raise FileNotFoundError(f"{file}: no such pipeline YAML; save one with Pipeline.dump(open(path, 'w'))")
        pipeline = load_pipeline(file)
        if documents_from_beir is not None:
            from .beir import write_beir_documents

            write_beir_documents(pipeline, documents_from_beir)
        return cls(
            pipeline=pipeline, input_socket=input_socket, output_socket=output_socket, top_k_socket=top_k_socket,
            id_meta_key=id_meta_key, max_concurrency=max_concurrency,
        )

    def search(self, queries: Sequence[str], k: int) -> list[list[str]]:
        """Ranked document ids (at most ``k``) for each query, in order."""
        return [self._ranking(output, k) for output in self._run_all(queries, k)]

    def search_documents(self, queries: Sequence[str], k: int) -> list[list[DocumentHit]]:
        """The ranked documents with their text (at most ``k``) for each query, in :meth:`search`'s order."""
        return [[self.hit(document) for document in self._documents(output, k)] for output in self._run_all(queries, k)]

    def hit(self, document: Document) -> DocumentHit:
        """A retrieved ``Document`` as the core's ``DocumentHit`` (the deployment component reads documents so too)."""
        return document_hit(document, doc_id=self._doc_id(document), title_meta_key=self.title_meta_key)

    def _run_all(self, queries: Sequence[str], k: int) -> list[dict[str, Any]]:
        check_k(k)
        queries = check_queries(queries)
        self.warm_up()
        outputs = []
        for query in queries:
            if self.pipeline is not None:
                outputs.append(self.pipeline.run(self._data(query, k), include_outputs_from={self.output_socket[0]}))
            else:
                outputs.append(self.retriever.run(**self._data(query, k)))
        return outputs

    async def asearch(self, queries: Sequence[str], k: int) -> list[list[str]]:
        """The async form of :meth:`search`: at most ``max_concurrency`` queries in flight."""
        check_k(k)
        queries = check_queries(queries)
        await asyncio.to_thread(self.warm_up)
        semaphore = asyncio.Semaphore(self.max_concurrency)

        async def one(query: str) -> list[str]:
            async with semaphore:
                return self._ranking(await self._arun(query, k), k)

        return list(await asyncio.gather(*(one(query) for query in queries)))

    def warm_up(self) -> None:
        """Warm the pipeline's or the retriever's components up once (model loads), before the first search."""
        with self._lock:
            if self._warm:
                return
            target = self.pipeline if self.pipeline is not None else self.retriever
            if hasattr(target, "warm_up"):
                target.warm_up()
            self._warm = True

    async def _arun(self, query: str, k: int) -> dict[str, Any]:
        data = self._data(query, k)
        if self.pipeline is not None:
            return await self.pipeline.run_async(data, include_outputs_from={self.output_socket[0]})
        if hasattr(self.retriever, "run_async"):
            return await self.retriever.run_async(**data)
        return await asyncio.to_thread(lambda: self.retriever.run(**data))

    def _data(self, query: str, k: int) -> dict[str, Any]:
        """Run inputs: ``{component: {socket: value}}`` for a pipeline, ``{socket: value}`` for a component."""
        if self.pipeline is None:
            return {**{socket: query for _, socket in self.input_sockets},
                    **{socket: k for _, socket in self.top_k_sockets}}
        data: dict[str, dict[str, Any]] = {}
        for (name, socket), value in [*((s, query) for s in self.input_sockets),
                                      *((s, k) for s in self.top_k_sockets)]:
            data.setdefault(name, {})[socket] = value
        return data

    def _ranking(self, output: dict[str, Any], k: int) -> list[str]:
        return [self._doc_id(document) for document in self._documents(output, k)]

    def _documents(self, output: dict[str, Any], k: int) -> list[Document]:
        """The output's documents in order, each id at its first rank, at most ``k``."""
        name, socket = self.output_socket
        documents = (output[name] if name is not None else output).get(socket)
        if documents is None:
            raise ValueError(f"the run returned no {socket!r} output (it returned {sorted(output)}); set output_socket")
        kept: list[Document] = []
        seen: set[str] = set()
        for document in documents:
            doc_id = self._doc_id(document)
            if doc_id not in seen:
                seen.add(doc_id)
                kept.append(document)
                if len(kept) == k:
                    break
        return kept

    def _doc_id(self, document: Document) -> str:
        if self.id_meta_key is None:
            return document.id
        try:
            return str(document.meta[self.id_meta_key])
        except KeyError:
            raise ValueError(
                f"document {document.id!r} has no meta[{self.id_meta_key!r}] (its meta keys: {sorted(document.meta)});"
                " set id_meta_key to a field every document has, or to None to use Document.id"
            ) from None


def search_from_config(retriever: Any, path: str) -> HaystackSearch:
    """What ``retriever.framework: haystack`` builds for ``deepretrieval train``/``eval`` (the package's entry point
    in the group ``deepretrieval.search_backends``): the pipeline YAML in ``path`` (``kind: pipeline``, with the
    config's sockets and id key), BM25 over the store saved in ``path`` (``kind: store``), else BM25 over the BEIR
    corpus in ``path``."""
    if retriever.kind == "store":
        return HaystackSearch.from_store(path, id_meta_key=retriever.id_meta_key)
    if retriever.kind == "pipeline":
        return HaystackSearch.from_yaml(path, input_socket=retriever.input_socket,
                                        output_socket=retriever.output_socket, id_meta_key=retriever.id_meta_key)
    return HaystackSearch.from_beir(path)


def load_pipeline(file: Path) -> Pipeline:
    """``Pipeline.loads`` of a YAML file, with every failure one error naming the file, the cause and the fix.

    The YAML is composed first (nothing built) to refuse aliases that repeat more than the core allows
    (:mod:`deepretrieval_trainer.common.yaml_files`): Haystack deep copies what it loads, which would visit every
    repetition of a "billion laughs".
    """
    import yaml
    from deepretrieval_trainer.common.yaml_files import check_yaml_aliases

    try:
        text = file.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{file}: not UTF-8 text (byte {exc.start}); save the pipeline YAML as UTF-8") from None
    except OSError as exc:
        raise ConfigError(f"{file}: cannot be read ({exc.strerror}); fix its permissions or the path") from None
    try:
        check_yaml_aliases(text, source=str(file))  # a ConfigError naming the file and the fix
    except (yaml.YAMLError, RecursionError):
        pass  # malformed or too deep: Pipeline.loads fails on it just below, and says so in its words
    try:
        return Pipeline.loads(text)
    except RecursionError:
        raise ConfigError(f"{file}: the YAML nests too deep to read; write the pipeline with Pipeline.dump") from None
    except Exception as exc:  # noqa: BLE001 - any failure to load the file is this one error (e.g. a top-level list)
        cause = f" ({' '.join(str(exc.__cause__).split())[:300]})" if exc.__cause__ else ""
        raise ConfigError(f"{file}: not a loadable Haystack pipeline: {' '.join(str(exc).split())[:600]}{cause}; "
                          "fix the YAML (save one with Pipeline.dump(open(path, 'w')))") from None


Socket = tuple[Any, str]  # (component name, or None for a bare component; socket name)


def _as_list(value: str | Sequence[str]) -> list[str]:
    return [value] if isinstance(value, str) else list(value)


def _component_sockets(retriever: Any, input_socket, output_socket, top_k_socket) -> tuple[list[Socket], Socket, list[Socket]]:
    inputs = getattr(retriever, "__haystack_input__", None)
    outputs = getattr(retriever, "__haystack_output__", None)
    if inputs is None or outputs is None:
        raise TypeError(f"{type(retriever).__name__} is not a Haystack component; pass a retriever or pipeline=...")
    names = _as_list(input_socket or "query")
    top_k = _as_list(top_k_socket) if top_k_socket is not None else [s for s in ("top_k",) if s in inputs]
    for socket in [*names, *top_k]:
        if socket not in inputs:
            raise ValueError(f"{type(retriever).__name__} has no input {socket!r}; its inputs are {list(inputs._sockets_dict)}")
    output = output_socket or "documents"
    if output not in outputs:
        raise ValueError(f"{type(retriever).__name__} has no output {output!r}; its outputs are {list(outputs._sockets_dict)}")
    return [(None, s) for s in names], (None, output), [(None, s) for s in top_k]


def _split(pipeline: Pipeline, address: str, kind: str) -> Socket:
    name, _, socket = address.partition(".")
    if not socket:
        raise ValueError(f"{kind}={address!r}: name a pipeline socket as 'component.socket', e.g. 'retriever.query'")
    try:
        instance = pipeline.get_component(name)
    except ValueError:
        raise ValueError(f"{kind}={address!r}: no component {name!r}; the pipeline has {[n for n, _ in pipeline.walk()]}") from None
    sockets = instance.__haystack_output__ if kind == "output_socket" else instance.__haystack_input__
    if socket not in sockets:
        raise ValueError(f"{kind}={address!r}: {name!r} has no such socket; it has {list(sockets._sockets_dict)}")
    return name, socket


def _pipeline_inputs(pipeline: Pipeline, input_socket) -> list[Socket]:
    if input_socket is not None:
        return [_split(pipeline, address, "input_socket") for address in _as_list(input_socket)]
    found = [(name, socket) for name, sockets in pipeline.inputs().items() for socket, spec in sockets.items()
             if socket in QUERY_SOCKET_NAMES and spec["type"] is str]
    if not found:
        raise ValueError(f"no unconnected str input named {QUERY_SOCKET_NAMES} in the pipeline (its inputs: "
                         f"{_describe(pipeline.inputs())}); set input_socket='component.socket'")
    return found


def _pipeline_output(pipeline: Pipeline, output_socket: str | None) -> Socket:
    if output_socket is not None:
        return _split(pipeline, output_socket, "output_socket")
    found = [(name, "documents") for name, sockets in pipeline.outputs().items() if "documents" in sockets]
    if len(found) != 1:
        raise ValueError(f"{len(found)} unconnected 'documents' outputs in the pipeline ({found}); "
                         "set output_socket='component.documents'")
    return found[0]


def _pipeline_top_k(pipeline: Pipeline, top_k_socket, output_component: str) -> list[Socket]:
    if top_k_socket is not None:
        return [_split(pipeline, address, "top_k_socket") for address in _as_list(top_k_socket)]
    if "top_k" in pipeline.get_component(output_component).__haystack_input__:
        return [(output_component, "top_k")]
    logger.info("%s has no top_k input: rankings are only cut at k (set top_k_socket to pass k on)", output_component)
    return []


def _describe(sockets: dict[str, dict[str, Any]]) -> list[str]:
    return [f"{name}.{socket}" for name, group in sockets.items() for socket in group]
