"""The user's LlamaIndex retriever as a core SearchBackend: what the reward and the evaluation search.

Any ``BaseRetriever`` works (BM25Retriever, a VectorStoreIndex retriever, a fusion retriever, an index loaded from a
storage dir). A node's document id is ``node.ref_doc_id`` (the Document a chunk came from), else ``node.node_id``
(a Document indexed whole), or ``node.metadata[id_key]`` when ``id_key`` is given. Chunks of one document collapse to
the document's best rank, so the ranking is the retriever's own, read as documents.

``k``: a retriever with a ``similarity_top_k`` attribute (BM25Retriever, VectorIndexRetriever, QueryFusionRetriever)
gets it set to ``k`` for the batch and restored afterwards; the result is then truncated to ``k`` documents. When
chunks collapse, fewer than ``k`` documents can come back. A retriever without ``similarity_top_k`` returns what it
returns, truncated to ``k``. Batches on one instance run one at a time (the top-k setting is shared).

Document text (:meth:`LlamaIndexSearch.search_documents`, the core ``DocumentSearch`` capability): each document's
best chunk, its text without metadata, and its title from ``node.metadata[title_key]`` (``"title"``; the BEIR loader
keeps it there, excluded from what BM25 indexes). There the retriever runs with its own ``similarity_top_k`` when that
is at least ``k`` (so the first pass of training matches a deployed retriever's), else with ``k``.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Optional

from llama_index.core.base.base_retriever import BaseRetriever
from llama_index.core.schema import BaseNode, MetadataMode, NodeWithScore, QueryType

from deepretrieval_trainer.retrieval.search import DocumentHit, check_k, check_queries

logger = logging.getLogger(__name__)


class LlamaIndexSearch:
    """SearchBackend over ``retriever``; ``asearch`` runs at most ``max_concurrency`` ``aretrieve`` calls at once."""

    def __init__(self, retriever: BaseRetriever, *, id_key: Optional[str] = None, max_concurrency: int = 8,
                 title_key: Optional[str] = "title") -> None:
        if not isinstance(retriever, BaseRetriever):
            raise TypeError(f"retriever={retriever!r} is not a llama_index BaseRetriever; pass one, or use from_beir/"
                            "from_storage")
        if max_concurrency < 1:
            raise ValueError(f"max_concurrency={max_concurrency} must be >= 1")
        self.retriever = retriever
        self.id_key = id_key
        self.title_key = title_key
        self.max_concurrency = max_concurrency
        self._lock = threading.Lock()

    def doc_id(self, node: BaseNode) -> str:
        if self.id_key is not None:
            try:
                return str(node.metadata[self.id_key])
            except KeyError:
                raise ValueError(
                    f"node {node.node_id!r} has no metadata key {self.id_key!r} (keys: {sorted(node.metadata)}); "
                    "set id_key to a key every node has, or None to use ref_doc_id"
                ) from None
        return node.ref_doc_id or node.node_id

    def ranking(self, nodes: Sequence[NodeWithScore], k: int) -> list[str]:
        """Document ids in the retriever's order, each at its best chunk's rank, at most ``k``."""
        ranked: dict[str, None] = {}
        for node in nodes:
            ranked.setdefault(self.doc_id(node.node), None)
            if len(ranked) == k:
                break
        return list(ranked)

    def hits(self, nodes: Sequence[NodeWithScore], k: int) -> list[DocumentHit]:
        """Like :meth:`ranking`, as documents with their text (each document's best chunk) and score."""
        return node_hits(nodes, k, doc_id=self.doc_id, title_key=self.title_key)

    def search(self, queries: Sequence[str], k: int) -> list[list[str]]:
        check_k(k)
        queries = check_queries(queries)
        with self._lock, self._top_k(k):
            return [self.ranking(self.retriever.retrieve(query), k) for query in queries]

    def search_documents(self, queries: Sequence[str], k: int) -> list[list[DocumentHit]]:
        """The ranked documents with their text, at most ``k`` per query (see the module docstring)."""
        check_k(k)
        queries = check_queries(queries)
        with self._lock, self._top_k(k, at_least=True):
            return [self.hits(self.retriever.retrieve(query), k) for query in queries]

    async def asearch(self, queries: Sequence[str], k: int) -> list[list[str]]:
        """Awaits the retriever's own ``aretrieve`` (retrievers without a native async path run it synchronously)."""
        check_k(k)
        found = await self.aretrieve_nodes(check_queries(queries), k, at_least=False)
        return [self.ranking(nodes, k) for nodes in found]

    def retrieve_nodes(self, queries: Sequence[QueryType], k: int) -> list[list[NodeWithScore]]:
        """The retriever's own nodes for each query, asked for at least ``k`` results (a retriever with a smaller
        ``similarity_top_k`` is raised to ``k`` for these calls only)."""
        with self._lock, self._top_k(k, at_least=True):
            return [self.retriever.retrieve(query) for query in queries]

    async def aretrieve_nodes(self, queries: Sequence[QueryType], k: int, *,
                              at_least: bool = True) -> list[list[NodeWithScore]]:
        """The async form of :meth:`retrieve_nodes` (``at_least=False``: exactly ``k``), at most
        ``max_concurrency`` ``aretrieve`` calls at once."""
        while not self._lock.acquire(blocking=False):  # polling stays cancellable, unlike a blocking acquire
            await asyncio.sleep(0.005)
        try:
            with self._top_k(k, at_least=at_least):
                limit = asyncio.Semaphore(self.max_concurrency)

                async def one(query: QueryType) -> list[NodeWithScore]:
                    async with limit:
                        return await self.retriever.aretrieve(query)

                return list(await asyncio.gather(*(one(query) for query in queries)))
        finally:
            self._lock.release()

    @contextmanager
    def _top_k(self, k: int, *, at_least: bool = False) -> Iterator[None]:
        retriever = self.retriever
        if not hasattr(retriever, "similarity_top_k") or (at_least and (retriever.similarity_top_k or 0) >= k):
            yield
            return
        previous = retriever.similarity_top_k
        retriever.similarity_top_k = min(k, _corpus_size(retriever) or k)
        try:
            yield
        finally:
            retriever.similarity_top_k = previous

    @classmethod
    def from_beir(
        cls,
        path: str | Path,
        *,
        k1: Optional[float] = None,
        b: Optional[float] = None,
        stemmer: Optional[str] = "english",
        language: Optional[str] = "en",
        max_concurrency: int = 8,
    ) -> "LlamaIndexSearch":
        """A ``BM25Retriever`` over a BEIR corpus (one node per document, text = title + text, ``id_`` = doc id).

        ``k1``/``b`` default to bm25s's (1.5, 0.75), as ``BM25Retriever`` does; ``stemmer`` is a PyStemmer
        language or None for no stemming; ``language`` names the stop-word list (None keeps every word).
        Nothing is written to disk.
        """
        from .bm25 import build_beir_bm25

        return cls(build_beir_bm25(path, k1=k1, b=b, stemmer=stemmer, language=language),
                   max_concurrency=max_concurrency)

    @classmethod
    def from_storage(
        cls,
        persist_dir: str | Path,
        *,
        id_key: Optional[str] = None,
        index_id: Optional[str] = None,
        embed_model: Any = None,
        stemmer: Optional[str] = "english",
        similarity_top_k: int = 10,
        max_concurrency: int = 8,
    ) -> "LlamaIndexSearch":
        """Load a persisted retriever or index.

        - a ``BM25Retriever.persist(dir)`` folder (it has ``retriever.json``): loaded with the stemmer and token
          pattern recorded by :func:`llamaindex_deepretrieval.bm25.persist_bm25`, else ``stemmer`` and
          BM25Retriever's token pattern (BM25Retriever itself does not save them);
        - a ``StorageContext.persist(dir)`` folder (``docstore.json``): ``load_index_from_storage`` (``index_id``
          when it holds several indexes) and ``index.as_retriever()``. A vector index needs the same ``embed_model``
          it was built with (else ``Settings.embed_model``).
        """
        from .bm25 import load_bm25

        root = Path(persist_dir)
        if (root / "retriever.json").is_file():
            retriever = load_bm25(root, stemmer=stemmer)
        elif (root / "docstore.json").is_file():
            retriever = _load_index(root, index_id, embed_model).as_retriever(similarity_top_k=similarity_top_k)
        else:
            raise FileNotFoundError(
                f"{root}: neither retriever.json (BM25Retriever.persist) nor docstore.json (StorageContext.persist); "
                "pass a folder written by one of them"
            )
        return cls(retriever, id_key=id_key, max_concurrency=max_concurrency)


def search_from_config(retriever: Any, path: str) -> LlamaIndexSearch:
    """What ``retriever.framework: llamaindex`` builds for ``deepretrieval train``/``eval`` (the package's entry point
    in the group ``deepretrieval.search_backends``): the persisted storage in ``path`` (``kind: storage``, with the
    config's id key), else BM25 over the BEIR corpus in ``path``."""
    if retriever.kind == "storage":
        return LlamaIndexSearch.from_storage(path, id_key=retriever.id_key)
    return LlamaIndexSearch.from_beir(path)


def node_hits(nodes: Sequence[NodeWithScore], k: int, *, doc_id: Callable[[BaseNode], str] | None = None,
              title_key: Optional[str] = "title") -> list[DocumentHit]:
    """Retrieved nodes as core ``DocumentHit`` objects, each document once at its best chunk's rank, at most ``k``:
    the chunk's text without metadata, the title from ``metadata[title_key]``. ``doc_id``: a node's document id
    (default ``ref_doc_id``, else ``node_id``)."""
    found: dict[str, DocumentHit] = {}
    for node in nodes:
        key = doc_id(node.node) if doc_id is not None else (node.node.ref_doc_id or node.node.node_id)
        if key not in found:
            title = node.node.metadata.get(title_key) if title_key else None
            found[key] = DocumentHit.from_content(key, node.node.get_content(metadata_mode=MetadataMode.NONE),
                                                  title=str(title) if title is not None else "", score=node.score)
            if len(found) == k:
                break
    return list(found.values())


def _load_index(root: Path, index_id: Optional[str], embed_model: Any):
    from llama_index.core import StorageContext, load_index_from_storage

    storage = StorageContext.from_defaults(persist_dir=str(root))
    kwargs = {"embed_model": embed_model} if embed_model is not None else {}
    return load_index_from_storage(storage, index_id=index_id, **kwargs)


def _corpus_size(retriever: BaseRetriever) -> Optional[int]:
    """Documents in a bm25s-backed retriever: bm25s refuses a top-k above it."""
    scores = getattr(getattr(retriever, "bm25", None), "scores", None)
    if isinstance(scores, dict) and scores.get("num_docs"):
        return int(scores["num_docs"])
    return None
