"""RM3 pseudo-relevance feedback through the same SearchBackend: the free baseline beside every trained model.

The raw query's first-pass documents (``DocumentSearch.search_documents``, the same retriever the model is scored
on) give a relevance model, RM3 as in Anserini/Pyserini (Abdul-Jaleel et al. 2004; Anserini's ``Rm3Reranker``):

1. each of the top ``docs`` documents (title + text) is tokenized the BM25 way (lowercase ``\\w\\w+`` tokens,
   bm25s's English stop words removed, Snowball-stemmed when ``stemmer`` is set), its term counts are cut to its
   ``terms`` most frequent terms and L1-normalized;
2. the documents are summed, each weighted by its retrieval score (uniformly when the retriever gives none), and the
   ``terms`` heaviest terms, L1-normalized, are the feedback model ``f``;
3. the final weights are ``weight * q(t) + (1 - weight) * f(t)``, ``q`` the L1-normalized query term counts.

Our retrievers take plain text, so the weights become repetitions: the original query text is repeated ``m`` times
and each feedback term (written as its most frequent surface form in the feedback documents) ``c(t)`` times, with
``m * |q| : sum(c) = weight : 1 - weight`` and ``c`` apportioned to ``f`` (largest remainders, about
:data:`UNITS_PER_TERM` repetitions per feedback term). A bm25s-based retriever (LlamaIndex ``BM25Retriever``, the core
``BM25Search``) sums a repeated query token once per repetition, so it scores exactly ``sum_t w(t) * bm25(t, d)`` up
to that rounding. Haystack's ``InMemoryBM25Retriever`` counts each distinct query token once: there the text cannot
carry weights, and every term (original or feedback) counts alike.

Why not a library: Pyserini/Anserini (and PyTerrier) implement RM3 on a Lucene/Terrier index through Java, which is
not among our dependencies and would be a second index beside the user's retriever; bm25s and rank-bm25 have no
feedback. Differences from Anserini: no document-frequency filter (a backend exposes no collection statistics), a
stop-word list instead; surface forms instead of index terms.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from .search import DocumentHit, SearchBackend, document_search

TOKEN = re.compile(r"(?u)\b\w\w+\b")
MAX_TERM_CHARS = 20  # Anserini skips longer terms
UNITS_PER_TERM = 3  # repetitions per feedback term, on average: the resolution of the weights in text


@dataclass(frozen=True)
class RM3:
    """RM3 settings: ``docs`` feedback documents, ``terms`` feedback terms, ``weight`` of the original query
    (Pyserini's defaults: 10, 10, 0.5); ``stemmer`` a PyStemmer language that merges inflections, or None."""

    docs: int = 10
    terms: int = 10
    weight: float = 0.5
    stemmer: str | None = "english"

    def __post_init__(self) -> None:
        for name in ("docs", "terms"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"prf {name}={value!r} must be a positive integer")
        if not isinstance(self.weight, (int, float)) or not 0 <= self.weight <= 1:
            raise ValueError(f"prf weight={self.weight!r}: the original query's weight must be in [0, 1]")
        if self.stemmer is not None:
            import Stemmer

            if self.stemmer not in Stemmer.algorithms():
                raise ValueError(f"prf stemmer={self.stemmer!r} is not a PyStemmer algorithm; choose one of "
                                 f"{Stemmer.algorithms()} or none")

    @classmethod
    def parse(cls, text: str) -> RM3:
        """Settings from ``docs=5,terms=10,weight=0.5,stem=none`` (any subset, any order; empty = defaults)."""
        values: dict[str, object] = {}
        for item in filter(None, (part.strip() for part in text.split(","))):
            key, sep, value = item.partition("=")
            key = key.strip()
            if not sep or key not in ("docs", "terms", "weight", "stem"):
                raise ValueError(f"prf setting {item!r} not understood: use docs=N, terms=N, weight=W (0-1) and "
                                 "stem=english|none, e.g. prf:docs=5,terms=10,weight=0.5")
            try:
                values[key] = (None if value.strip() == "none" else value.strip()) if key == "stem" else (
                    float(value) if key == "weight" else int(value))
            except ValueError:
                raise ValueError(f"prf setting {item!r}: {key} must be a number") from None
        if "stem" in values:
            values["stemmer"] = values.pop("stem")
        return cls(**values)  # type: ignore[arg-type]

    def label(self) -> str:
        """A short source name for these settings, e.g. ``d5:t10:w0.5`` (``:nostem`` without stemming)."""
        return f"d{self.docs}:t{self.terms}:w{self.weight:g}" + ("" if self.stemmer else ":nostem")


class Analyzer:
    """Text -> (surface token, term key) pairs: BM25's token pattern, English stop words, optional stemming."""

    def __init__(self, stemmer: str | None) -> None:
        from bm25s.stopwords import STOPWORDS_EN

        self.stopwords = frozenset(STOPWORDS_EN)
        self.stemmer_name = stemmer

    @cached_property
    def _stemmer(self):
        import Stemmer

        return Stemmer.Stemmer(self.stemmer_name) if self.stemmer_name else None

    def tokens(self, text: str) -> list[tuple[str, str]]:
        words = [w for w in TOKEN.findall(text.lower()) if w not in self.stopwords and len(w) <= MAX_TERM_CHARS]
        keys = self._stemmer.stemWords(words) if self._stemmer is not None and words else words
        return list(zip(words, keys, strict=True))


def feedback_model(analyzer: Analyzer, hits: Sequence[DocumentHit],
                   terms: int) -> tuple[dict[str, float], dict[str, str]]:
    """The L1-normalized feedback model ``{term key: weight}`` of ``hits`` and each key's surface form."""
    vocab: dict[str, int] = {}
    surface: dict[str, dict[str, int]] = {}
    rows = []
    for hit in hits:
        row: dict[int, int] = {}
        for word, key in analyzer.tokens(f"{hit.title} {hit.text}"):
            index = vocab.setdefault(key, len(vocab))
            row[index] = row.get(index, 0) + 1
            forms = surface.setdefault(key, {})
            forms[word] = forms.get(word, 0) + 1
        rows.append(row)
    if not vocab:
        return {}, {}
    counts = np.zeros((len(rows), len(vocab)))
    for i, row in enumerate(rows):
        counts[i, list(row)] = list(row.values())
    counts = _keep_top(counts, terms)
    norms = counts.sum(axis=1, keepdims=True)
    scores = [hit.score for hit in hits]
    weights = np.array(scores if all(s is not None and s > 0 for s in scores) else [1.0] * len(hits))
    model = (np.divide(counts, norms, out=np.zeros_like(counts), where=norms > 0) * weights[:, None]).sum(axis=0)
    model = _keep_top(model[None, :], terms)[0]
    if model.sum() <= 0:
        return {}, {}
    keys = list(vocab)
    order = sorted(np.flatnonzero(model), key=lambda i: (-model[i], i))  # heaviest first, ties by first appearance
    forms = {keys[i]: max(surface[keys[i]].items(), key=lambda item: item[1])[0] for i in order}
    return {keys[i]: float(model[i] / model.sum()) for i in order}, forms


def _keep_top(matrix: np.ndarray, n: int) -> np.ndarray:
    """Each row with only its ``n`` largest entries (ties: the earlier column), the rest zeroed."""
    if matrix.shape[1] <= n:
        return matrix
    order = np.argsort(-matrix, axis=1, kind="stable")[:, :n]
    kept = np.zeros_like(matrix)
    rows = np.arange(matrix.shape[0])[:, None]
    kept[rows, order] = matrix[rows, order]
    return kept


def apportion(total: int, weights: Mapping[str, float]) -> dict[str, int]:
    """``total`` whole repetitions split in proportion to ``weights`` (largest remainders; ties by order)."""
    quotas = {key: total * weight for key, weight in weights.items()}
    counts = {key: int(quota) for key, quota in quotas.items()}
    by_remainder = sorted(quotas, key=lambda key: -(quotas[key] - counts[key]))  # sorted() is stable: ties by order
    for key in by_remainder[: total - sum(counts.values())]:
        counts[key] += 1
    return counts


def expanded_query(query: str, model: Mapping[str, float], forms: Mapping[str, str], query_terms: int,
                   weight: float) -> str:
    """The search text carrying ``weight * q + (1 - weight) * f`` as repetitions (see the module docstring)."""
    if not model or weight >= 1:
        return query
    if weight <= 0:
        copies, units = 0, UNITS_PER_TERM * len(model)
    else:
        ratio = weight / (1 - weight)  # original : feedback
        copies = max(1, round(UNITS_PER_TERM * len(model) * ratio / query_terms))
        units = max(1, round(copies * query_terms / ratio))
    repeated = [forms[key] for key, count in apportion(units, model).items() for _ in range(count)]
    return " ".join([query] * copies + repeated)


@dataclass(frozen=True)
class Candidates:
    """A first pass's candidate terms, most weighted first: ``weights`` (term key -> RM3 feedback weight, summing to 1)
    and ``forms`` (term key -> the surface form shown in the prompt and searched)."""

    weights: Mapping[str, float]
    forms: Mapping[str, str]

    def to_json(self) -> str:
        return json.dumps([[key, self.forms[key], weight] for key, weight in self.weights.items()])

    @classmethod
    def from_json(cls, text: str) -> Candidates:
        rows = json.loads(text) if text else []
        return cls({key: float(weight) for key, _, weight in rows}, {key: form for key, form, _ in rows})


@functools.lru_cache(maxsize=4)
def analyzer(stemmer: str | None = "english") -> Analyzer:
    """The shared :class:`Analyzer` of a stemmer (its stop-word set and stemmer load once)."""
    return Analyzer(stemmer)


def candidate_terms(hits: Sequence[DocumentHit], terms: int = 10, stemmer: str | None = "english") -> Candidates:
    """RM3's feedback model of ``hits`` (all of them: the caller cuts the first pass), cut to ``terms`` terms."""
    weights, forms = feedback_model(analyzer(stemmer), hits, terms)
    return Candidates(weights, forms)


def steered_query(query: str, answer: str, candidates: Candidates, query_weight: int = 1,
                  stemmer: str | None = "english") -> str:
    """The search text of framing ``steer``: RM3 restricted to what ``answer`` keeps.

    ``answer`` names terms (any separators); each candidate it names keeps its RM3 weight, and each word of its own
    (not a candidate, not a query word) gets the candidates' mean weight, at most as many as there are candidates.
    The weights are not renormalized: keeping every candidate is RM3 itself (the original query's weight
    ``query_weight / (query_weight + 1)``, 0.5 at 1, Pyserini's default), keeping fewer shrinks the feedback's mass
    towards the raw query, and keeping none is the raw query. Written as repetitions as RM3 writes them
    (:func:`expanded_query`), which a bm25s-based retriever counts; one that counts a repeated word once still sees
    which terms were kept.
    """
    words = analyzer(stemmer)
    query_terms = len(words.tokens(query))
    if query_terms == 0 or not candidates.weights:
        return query
    named = dict.fromkeys(key for _, key in words.tokens(answer))
    own = {word: key for word, key in words.tokens(answer) if key not in candidates.weights}
    query_keys = {key for _, key in words.tokens(query)}
    kept = {key: weight for key, weight in candidates.weights.items() if key in named}
    forms = dict(candidates.forms)
    mean = 1.0 / len(candidates.weights)
    for word, key in list(own.items())[: len(candidates.weights)]:
        if key not in query_keys and key not in kept:
            kept[key] = mean
            forms.setdefault(key, word)
    mass = sum(kept.values())
    if mass <= 0:
        return query
    weight = query_weight / (query_weight + 1)
    return expanded_query(query, {key: value / mass for key, value in kept.items()}, forms, query_terms,
                          weight / (weight + (1 - weight) * mass))


class PseudoRelevanceFeedback:
    """RM3 over the first-pass documents of ``search``, which must be a
    :class:`~deepretrieval_trainer.retrieval.search.DocumentSearch` (``deepretrieval eval --source prf`` serves it as a
    query source: :class:`deepretrieval_trainer.evaluation.sources.FeedbackRewriter`)."""

    def __init__(self, search: SearchBackend, settings: RM3 | None = None) -> None:
        self.search = document_search(search, purpose="pseudo-relevance feedback (prf)")
        self.settings = settings or RM3()
        self.analyzer = Analyzer(self.settings.stemmer)

    def expand(self, query: str, hits: Sequence[DocumentHit]) -> str:
        """The RM3 search text of ``query`` given its first-pass ``hits`` (the first ``docs`` are used)."""
        query_terms = len(self.analyzer.tokens(query))
        if query_terms == 0:
            return query
        model, forms = feedback_model(self.analyzer, list(hits)[: self.settings.docs], self.settings.terms)
        return expanded_query(query, model, forms, query_terms, self.settings.weight)
