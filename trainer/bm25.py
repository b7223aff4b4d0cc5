"""An in-process BM25 SearchBackend over a BEIR corpus (bm25s): the project's reference lexical retriever.

The plugins search the user's own LlamaIndex or Haystack retriever; this one serves the CLI's quick paths and
benchmarks. Defaults follow the BM25 sanity figures of the shared collections (title + text, k1=0.9, b=0.4).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from .search import ThreadedAsyncSearch, check_k


class BM25Search(ThreadedAsyncSearch):
    def __init__(self, corpus: Mapping[str, Mapping[str, str]], *, k1: float = 0.9, b: float = 0.4,
                 stopwords: str | None = "en") -> None:
        import bm25s

        if not corpus:
            raise ValueError("the corpus is empty: give at least one document")
        self.doc_ids = list(corpus)
        texts = [f"{doc.get('title', '')} {doc.get('text', '')}".strip() for doc in corpus.values()]
        self._stopwords = stopwords
        self._retriever = bm25s.BM25(k1=k1, b=b)
        self._retriever.index(bm25s.tokenize(texts, stopwords=stopwords, show_progress=False), show_progress=False)

    def search(self, queries: Sequence[str], k: int) -> list[list[str]]:
        import bm25s

        check_k(k)
        if not queries:
            return []
        k = min(k, len(self.doc_ids))
        tokens = bm25s.tokenize(list(queries), stopwords=self._stopwords, show_progress=False)
        results, scores = self._retriever.retrieve(tokens, k=k, show_progress=False, n_threads=1)
        ranked = []
        for row, row_scores in zip(results, scores, strict=True):
            ranked.append([self.doc_ids[i] for i, s in zip(row, row_scores, strict=True) if s > 0])
        return ranked
