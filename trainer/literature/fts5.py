"""The embedded Boolean engine: SQLite FTS5 over a collection's title + abstract, ranked by ``bm25()``.

The index is built once per corpus and cached on disk in ``cache_dir()/literature/`` under a name made of the
corpus fingerprint and the index settings; a later engine over the same corpus loads it instead of rebuilding.
Queries are PubMed-style Boolean text (see :mod:`.boolean`); the translated FTS5 expression is bound as an SQL
parameter on a read-only connection, never spliced into SQL.
"""

from __future__ import annotations

import hashlib
import logging
import os
import sqlite3
import tempfile
import threading
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path

from ..common.errors import DataError
from ..common.fields import bounded_repr
from ..retrieval.search import DocumentHit, ThreadedAsyncSearch, check_k
from .boolean import ABSTRACT, TITLE, BooleanQueryError, text_tokens, translate

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 1
TOKENIZER = "porter unicode61 remove_diacritics 2"
_SEARCH_SQL = "SELECT doc_id FROM docs WHERE docs MATCH ? ORDER BY rank LIMIT ?"


def english_stopwords() -> frozenset[str]:
    """The stop words PubMed-like search ignores (bm25s's English list, the one the BM25 reference uses)."""
    from bm25s.stopwords import STOPWORDS_EN

    return frozenset(STOPWORDS_EN)


def corpus_fingerprint(corpus: Mapping[str, Mapping[str, str]]) -> str:
    """A content hash of the documents (ids, titles, texts, in order)."""
    digest = hashlib.sha256()
    for doc_id, doc in corpus.items():
        for part in (doc_id, doc.get("title") or "", doc.get("text") or ""):
            digest.update(_utf8(doc_id, part))
            digest.update(b"\x00")
    return digest.hexdigest()[:16]


def _utf8(doc_id: str, text: str) -> bytes:
    """``text`` as UTF-8; text that has none (a lone surrogate) is a DataError naming the document, not a
    UnicodeEncodeError halfway through building the index."""
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise DataError(f"document {bounded_repr(doc_id)} holds a lone surrogate (\\u{ord(text[exc.start]):04x} at "
                        f"character {exc.start + 1}), which SQLite cannot store: fix the text (load_corpus names the "
                        "file and line of such a document)") from None


class FTS5Search(ThreadedAsyncSearch):
    """A SearchBackend answering Boolean queries with up to ``k`` ids ranked by FTS5's bm25.

    ``corpus``: doc id -> {"title", "text"} (a :class:`~deepretrieval_trainer.retrieval.data.Collection`'s ``corpus``).
    ``fingerprint`` names the index in the cache (default: a hash of the corpus content); ``index_path`` puts the
    index file elsewhere; ``stopwords`` are removed from documents and queries alike (default: English, as PubMed
    ignores them; ``()`` keeps every word). ``rebuild=True`` ignores a cached index. ``malformed``: what
    :meth:`search` does with a query the parser rejects: ``"raise"`` a :class:`BooleanQueryError` (default), or
    return ``"empty"`` results for it and log why (for a reward that scores a batch and cannot take an exception).
    """

    def __init__(self, corpus: Mapping[str, Mapping[str, str]], *, fingerprint: str | None = None,
                 index_path: str | Path | None = None, stopwords: Collection[str] | None = None,
                 rebuild: bool = False, malformed: str = "raise") -> None:
        if malformed not in ("raise", "empty"):
            raise ValueError(f"malformed={malformed!r}: choose 'raise' or 'empty'")
        if not corpus:
            raise ValueError("the corpus is empty: give at least one document")
        self.malformed = malformed
        self.stopwords = english_stopwords() if stopwords is None else frozenset(stopwords)
        self.fingerprint = fingerprint or corpus_fingerprint(corpus)
        self.index_path = Path(index_path) if index_path else self.default_index_path()
        self.built = False
        if rebuild or not _index_ready(self.index_path):
            self._build(corpus)
            self.built = True
        else:
            logger.info("loading the cached FTS5 index %s", self.index_path)
        self._local = threading.local()
        self.size = self._connection().execute("SELECT count(*) FROM docs").fetchone()[0]

    @classmethod
    def from_path(cls, path: str | Path, **kwargs) -> FTS5Search:
        """An engine over the corpus of a BEIR-layout folder (no split needed)."""
        from ..retrieval.data import load_corpus

        return cls(load_corpus(path), **kwargs)

    def default_index_path(self) -> Path:
        from ..common.models import cache_dir

        settings = hashlib.sha256(f"{SCHEMA_VERSION}|{TOKENIZER}|{sorted(self.stopwords)}".encode()).hexdigest()[:8]
        return cache_dir() / "literature" / f"fts5-{self.fingerprint}-{settings}.sqlite"

    def _build(self, corpus: Mapping[str, Mapping[str, str]]) -> None:
        self.index_path.parent.mkdir(parents=True, exist_ok=True)
        logger.info("building the FTS5 index of %d documents at %s", len(corpus), self.index_path)
        handle, staging = tempfile.mkstemp(prefix=f".{self.index_path.name}-", dir=self.index_path.parent)
        os.close(handle)
        try:
            connection = sqlite3.connect(staging)
            with connection:
                connection.execute(f"CREATE VIRTUAL TABLE docs USING fts5(doc_id UNINDEXED, {TITLE}, {ABSTRACT}, "
                                   f"tokenize='{TOKENIZER}')")
                connection.execute("CREATE TABLE texts (doc_id TEXT PRIMARY KEY, title TEXT, text TEXT)")
                for doc_id, doc in corpus.items():
                    title, text = doc.get("title") or "", doc.get("text") or ""
                    for part in (doc_id, title, text):
                        _utf8(doc_id, part)
                    connection.execute("INSERT INTO docs VALUES (?, ?, ?)",
                                       (doc_id, self._normalize(title), self._normalize(text)))
                    connection.execute("INSERT INTO texts VALUES (?, ?, ?)", (doc_id, title, text))
                connection.execute("INSERT INTO docs(docs) VALUES ('optimize')")
                connection.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            connection.close()
            os.replace(staging, self.index_path)  # atomic: a reader never sees a half-built index
        finally:
            if os.path.exists(staging):
                os.unlink(staging)

    def _normalize(self, text: str) -> str:
        return " ".join(text_tokens(text, self.stopwords))

    def _connection(self) -> sqlite3.Connection:
        connection = getattr(self._local, "connection", None)
        if connection is None:
            connection = sqlite3.connect(f"file:{self.index_path}?mode=ro", uri=True)
            self._local.connection = connection
        return connection

    def translate(self, query: str) -> str:
        """The FTS5 expression for a Boolean query (raises :class:`BooleanQueryError`)."""
        return translate(query, stopwords=self.stopwords).expression

    def query_error(self, query: str) -> str | None:
        """Why this engine cannot run ``query`` (the syntax error), or None when it can.

        The trainer's rewards call this on every rewrite: a malformed Boolean query gets the format penalty
        and no retrieval reward, instead of failing the batch (see :func:`deepretrieval_trainer.training.rewards.build_rewards`).
        """
        try:
            self._search_one(query, 1)
        except BooleanQueryError as exc:
            return str(exc)
        return None

    def search(self, queries: Sequence[str], k: int) -> list[list[str]]:
        """Ranked ids per query; a malformed query raises :class:`BooleanQueryError` (or, with
        ``malformed="empty"``, gets no results)."""
        results = self.search_each(queries, k)
        for index, result in enumerate(results):
            if isinstance(result, BooleanQueryError):
                if self.malformed == "raise":
                    raise result
                logger.debug("no results for a malformed query: %s", result)
                results[index] = []
        return results  # type: ignore[return-value]

    def search_each(self, queries: Sequence[str], k: int) -> list[list[str] | BooleanQueryError]:
        """Like :meth:`search`, but a malformed query yields its :class:`BooleanQueryError` in its place.

        For a reward scoring a batch: each malformed query gets the format penalty, the others still count.
        """
        check_k(k)
        results: list[list[str] | BooleanQueryError] = []
        for query in queries:
            try:
                results.append(self._search_one(query, k))
            except BooleanQueryError as exc:
                results.append(exc)
        return results

    def _search_one(self, query: str, k: int) -> list[str]:
        expression = self.translate(query)
        try:
            rows = self._connection().execute(_SEARCH_SQL, (expression, k)).fetchall()
        except sqlite3.OperationalError as exc:  # e.g. an expression deeper than FTS5's limit
            raise BooleanQueryError(query, None, f"the FTS5 engine rejected it ({exc}); simplify the query") from None
        return [row[0] for row in rows]

    def documents(self, ids: Sequence[str]) -> dict[str, dict[str, str]]:
        """The original title and text of the given ids (unknown ids are left out), for a retriever's results."""
        connection = self._connection()
        found: dict[str, dict[str, str]] = {}
        for doc_id in ids:
            row = connection.execute("SELECT title, text FROM texts WHERE doc_id = ?", (doc_id,)).fetchone()
            if row is not None:
                found[doc_id] = {"title": row[0], "text": row[1]}
        return found

    def search_documents(self, queries: Sequence[str], k: int) -> list[list[DocumentHit]]:
        """:meth:`search` with each id's original title and text (see ``DocumentSearch``); FTS5 gives no score."""
        hits = []
        for ranking in self.search(queries, k):
            texts = self.documents(ranking)
            hits.append([DocumentHit(doc_id, (texts[doc_id]["title"] or "").strip(),
                                     (texts[doc_id]["text"] or "").strip()) for doc_id in ranking if doc_id in texts])
        return hits

    def close(self) -> None:
        connection = getattr(self._local, "connection", None)
        if connection is not None:
            connection.close()
            self._local.connection = None


def _index_ready(path: Path) -> bool:
    if not path.is_file():
        return False
    try:
        connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            return connection.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        finally:
            connection.close()
    except sqlite3.DatabaseError:
        logger.warning("the cached FTS5 index %s is unreadable; rebuilding it", path)
        return False
