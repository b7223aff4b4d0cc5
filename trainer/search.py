"""The SearchBackend protocol: what the reward and the evaluation call to search the host retriever.

A backend returns, for each query, the ranked ids of up to ``k`` documents. The LlamaIndex and Haystack
plugins implement it over the user's own retriever, so the reward scores what deployment will serve.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Protocol, runtime_checkable


@runtime_checkable
class SearchBackend(Protocol):
    def search(self, queries: Sequence[str], k: int) -> list[list[str]]:
        """Ranked document ids (best first, at most ``k``) for each query, in order."""
        ...

    async def asearch(self, queries: Sequence[str], k: int) -> list[list[str]]:
        """The async form of :meth:`search`."""
        ...


class ThreadedAsyncSearch:
    """Mixin: ``asearch`` runs the sync ``search`` in a worker thread (for in-process CPU retrievers)."""

    async def asearch(self, queries: Sequence[str], k: int) -> list[list[str]]:
        return await asyncio.to_thread(self.search, queries, k)  # type: ignore[attr-defined]


def check_k(k: int) -> int:
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise ValueError(f"k={k!r}: the number of documents to return must be a positive integer")
    return k


def check_queries(queries: Sequence[str]) -> list[str]:
    """The queries as a list; a bare string or an empty/non-text query is a caller error."""
    if isinstance(queries, str):
        raise TypeError("search() takes a list of queries; wrap a single query as [query]")
    queries = list(queries)
    for query in queries:
        if not isinstance(query, str) or not query.strip():
            raise ValueError(f"query {query!r} is empty or not text: pass non-empty strings")
    return queries
