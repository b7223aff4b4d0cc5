"""An in-process BM25 SearchBackend over a BEIR corpus (bm25s): the project's reference lexical retriever.

The plugins search the user's own LlamaIndex or Haystack retriever; this one serves the CLI's quick paths and
benchmarks. Defaults follow the BM25 sanity figures of the shared collections (title + text, k1=0.9, b=0.4).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from .search import DocumentHit, ThreadedAsyncSearch, check_k


class BM25Search(ThreadedAsyncSearch):
    def __init__(self, corpus: Mapping[str, Mapping[str, str]], *, k1: float = 0.9, b: float = 0.4,
                 stopwords: str | None = "en") -> None:
        import bm25s

        if not corpus:
            raise ValueError("the corpus is empty: give at least one document")
        self.doc_ids = list(corpus)
        self.titles = [doc.get("title") or "" for doc in corpus.values()]
        self.texts = [f"{doc.get('title') or ''} {doc.get('text') or ''}".strip() for doc in corpus.values()]
        self._stopwords = stopwords
        self._retriever = bm25s.BM25(k1=k1, b=b)
        self._retriever.index(bm25s.tokenize(self.texts, stopwords=stopwords, show_progress=False), show_progress=False)

    def search(self, queries: Sequence[str], k: int) -> list[list[str]]:
        return [[self.doc_ids[i] for i, _ in row] for row in self._ranked(queries, k)]

    def search_documents(self, queries: Sequence[str], k: int) -> list[list[DocumentHit]]:
        """The ranked documents with their title, text and BM25 score (see :class:`DocumentSearch`)."""
        return [[DocumentHit.from_content(self.doc_ids[i], self.texts[i], title=self.titles[i], score=score)
                 for i, score in row] for row in self._ranked(queries, k)]

    def _ranked(self, queries: Sequence[str], k: int) -> list[list[tuple[int, float]]]:
        import bm25s

        check_k(k)
        if not queries:
            return []
        k = min(k, len(self.doc_ids))
        tokens = bm25s.tokenize(list(queries), stopwords=self._stopwords, show_progress=False)
        results, scores = self._retriever.retrieve(tokens, k=k, show_progress=False, n_threads=1)
        return [[(int(i), float(s)) for i, s in zip(row, row_scores, strict=True) if s > 0]
                for row, row_scores in zip(results, scores, strict=True)]
