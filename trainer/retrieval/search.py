"""The SearchBackend protocol: what the reward and the evaluation call to search the host retriever.

A backend returns, for each query, the ranked ids of up to ``k`` documents. The LlamaIndex and Haystack
plugins implement it over the user's own retriever, so the reward scores what deployment will serve.

A backend that can also return the text of what it found says so explicitly by implementing
:class:`DocumentSearch` (``search_documents``): pseudo-relevance feedback and feedback-conditioned prompts read
the first-pass documents through it, from the same retriever, never from a second index. :func:`document_search`
checks the capability and says which backends have it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable


@runtime_checkable
class SearchBackend(Protocol):
    def search(self, queries: Sequence[str], k: int) -> list[list[str]]:
        """Ranked document ids (best first, at most ``k``) for each query, in order."""
        ...

    async def asearch(self, queries: Sequence[str], k: int) -> list[list[str]]:
        """The async form of :meth:`search`."""
        ...


@dataclass(frozen=True)
class DocumentHit:
    """One ranked document: its id, ``title`` (empty when the retriever has none) and ``text`` (the body, without
    the title), and the retriever's ``score`` when it gives one."""

    doc_id: str
    title: str = ""
    text: str = ""
    score: float | None = None

    @classmethod
    def from_content(cls, doc_id: str, content: str | None, *, title: str | None = "",
                     score: float | None = None) -> DocumentHit:
        """A hit from the content a retriever indexed, which may begin with the title (the BEIR loaders of both
        plugins index ``title + " " + text``): the body is what follows the title, so every backend over the same
        collection gives the same hit."""
        title = (title or "").strip()
        body = (content or "").strip()
        if title and body.startswith(title):
            body = body[len(title):].lstrip()
        return cls(str(doc_id), title, body, None if score is None else float(score))


@runtime_checkable
class DocumentSearch(Protocol):
    """A :class:`SearchBackend` that can also return the documents it ranks, with their text."""

    def search(self, queries: Sequence[str], k: int) -> list[list[str]]: ...

    def search_documents(self, queries: Sequence[str], k: int) -> list[list[DocumentHit]]:
        """The ranked documents (best first, at most ``k``, the same order as :meth:`search`) for each query."""
        ...


def document_search(search: object, *, purpose: str = "this feature") -> DocumentSearch:
    """``search`` itself when it can return document text, else a ``TypeError`` naming the fix."""
    if callable(getattr(search, "search_documents", None)):
        return search  # type: ignore[return-value]
    raise TypeError(
        f"{purpose} needs the text of the first-pass documents, and {type(search).__name__} cannot return it (it has "
        "no search_documents(queries, k)): use LlamaIndexSearch, HaystackSearch, BM25Search or FTS5Search, or give "
        "your backend a search_documents method returning DocumentHit lists"
    )


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
