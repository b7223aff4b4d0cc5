"""Pseudo-queries written from documents: by the model (doc2query) or without one (a cropped span).

Each writer turns documents into queries for which the document is the relevant one (training labels made from the
index itself, :mod:`deepretrieval_trainer.training.synthetic`). ``stream(documents)`` yields, document by document,
``(index of the document, query or None, why there is none)``, so a caller can show progress and stop early.

- :class:`CropWriter` (``crop``, no model): a random span of the document's words with its rarest words removed.
  The span is Contriever's cropping (Izacard et al. 2022), one short window instead of two; the removal keeps the
  query from matching its document by a word found nowhere else, which would rank it first and teach nothing.
- :class:`Doc2QueryWriter` (``doc2query``): the in-process model asked, as InPars/doc2query ask a larger one, for
  the query a user would type to find the document (:data:`DOC2QUERY_TASK`, answered as ``{"query": ...}``).
"""

from __future__ import annotations

import logging
import random
import re
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Optional, Protocol

from ..retrieval.documents import SourceDocument
from .tasks import Task

logger = logging.getLogger(__name__)

Written = tuple[int, Optional[str], Optional[str]]  # (document index, query or None, why none)

_WORD = re.compile(r"\w+")
# frequent English function words: never "rare", never counted as a query's content (bm25s's list is 33 words)
STOPWORDS = frozenset("""a about above after again against all am an and any are as at be because been before being
below between both but by can could did do does doing down during each few for from further had has have having he her
here hers him his how i if in into is it its itself just me more most my no nor not now of off on once only or other
our out over own same she should so some such than that the their them then there these they this those through to too
under until up very was we were what when where which while who whom why will with would you your also may might must
shall upon within without via using used use based new one two three""".split())


class QueryWriter(Protocol):
    method: str

    def stream(self, documents: Sequence[SourceDocument]) -> Iterator[Written]: ...

    def describe(self) -> dict: ...


class CropWriter:
    """``per_document`` queries per document, each a span of ``span`` words (at random, inclusive) from a random
    place, with the rarest ``drop_share`` of its distinct content words removed (at least one). Rarity is the
    document frequency over the documents given to :meth:`stream` (the sample: bounded memory, an estimate of the
    collection's), ties broken towards longer words."""

    method = "crop"

    # (6, 12) words, 60% dropped: on 300 SciFact documents through bm25s, 53% of the queries ranked their document
    # 2..100 (the default window), against 10% for Contriever-like spans of 6-16 words with a quarter dropped (most of
    # those ranked it first); on ADI's 82 documents 16% vs none
    def __init__(self, *, per_document: int = 1, seed: int = 0, span: tuple[int, int] = (6, 12),
                 drop_share: float = 0.6) -> None:
        if not 2 <= span[0] <= span[1]:
            raise ValueError(f"span={span!r}: give (shortest, longest) words, 2 <= shortest <= longest")
        if not 0 <= drop_share < 1:
            raise ValueError(f"drop_share={drop_share!r} must be in [0, 1)")
        self.per_document = per_document
        self.seed = seed
        self.span = span
        self.drop_share = drop_share

    def describe(self) -> dict:
        return {"method": self.method, "span_words": list(self.span), "drop_rarest_share": self.drop_share,
                "per_document": self.per_document, "seed": self.seed}

    def stream(self, documents: Sequence[SourceDocument]) -> Iterator[Written]:
        frequency: Counter = Counter()
        for document in documents:
            frequency.update({word.lower() for word in _WORD.findall(document.content)})
        rng = random.Random(self.seed)
        for index, document in enumerate(documents):
            words = _WORD.findall(document.content)
            for _ in range(self.per_document):
                query, reason = crop_query(words, frequency, rng, self.span, self.drop_share)
                yield index, query, reason


def crop_query(words: Sequence[str], frequency: Counter, rng: random.Random, span: tuple[int, int],
               drop_share: float) -> tuple[str | None, str | None]:
    """One cropped query from a document's ``words`` (see :class:`CropWriter`), or ``(None, reason)``."""
    if len(words) < span[0]:
        return None, f"fewer than {span[0]} words"
    length = rng.randint(span[0], min(span[1], len(words)))
    start = rng.randrange(len(words) - length + 1)
    window = words[start:start + length]
    content = sorted({w.lower() for w in window if _is_content(w)})
    drop = set()
    if len(content) >= 3:
        count = max(1, round(drop_share * len(content)))
        drop = set(sorted(content, key=lambda w: (frequency.get(w, 0), -len(w), w))[:count])
    kept = [w for w in window if w.lower() not in drop]
    while kept and kept[0].lower() in STOPWORDS:  # "of the X Y and" reads as a cut: start and end on content
        kept.pop(0)
    while kept and kept[-1].lower() in STOPWORDS:
        kept.pop()
    if sum(1 for w in kept if _is_content(w)) < 2:
        return None, "fewer than 2 content words in the span"
    return " ".join(kept), None


def _is_content(word: str) -> bool:
    lower = word.lower()
    return len(lower) > 1 and lower not in STOPWORDS and not lower.isdigit()


DOC2QUERY_SYSTEM = (
    "You write the search query that a user would type to find a document. Give only the query as JSON inside "
    "<answer> </answer>."
)
DOC2QUERY_USER = "Document: {query}\n\nWrite a short search query (3 to 10 words) that finds this document."
# One made-up worked example, and the instruction after the document. Measured on 16 SciFact documents with the
# embedded 135M model: so, every answer was a query about its own document; with the instruction in the system prompt
# alone it copied the worked example's query for 5 of them (with three examples, for 4: the last one's), and with no
# example 5 answers were not JSON and most others copied the title.
DOC2QUERY_EXAMPLES = (
    ("Low-dose aspirin and the prevention of myocardial infarction. In a randomized trial of 22,071 male physicians, "
     "325 mg of aspirin every other day reduced the risk of a first myocardial infarction by 44 percent.",
     '<answer>{"query": "aspirin risk of first heart attack trial"}</answer>'),
)
# The user turn holds the document (the Task's {query} slot). No <think>: the answer starts at once (prefill).
DOC2QUERY_TASK = Task("doc2query", DOC2QUERY_SYSTEM, DOC2QUERY_USER, examples=DOC2QUERY_EXAMPLES,
                      prefill='<answer>{"query": "', think=False)
MAX_PSEUDO_QUERY_CHARS = 300


class Doc2QueryWriter:
    """Queries written by a model in-process (:class:`~.rewriters.LocalRewriter` with :data:`DOC2QUERY_TASK`):
    ``model`` (None: the embedded one), greedy unless ``temperature`` > 0 (needed for ``per_document`` > 1),
    ``batch_size`` documents per generation batch, in ``dtype`` (``auto``: bf16 where the machine has it).
    ``rewriter``: an already built rewriter with that task, used instead."""

    method = "doc2query"

    def __init__(self, model: str | None = None, *, per_document: int = 1, temperature: float = 0.0,
                 batch_size: int = 16, max_new_tokens: int = 40, dtype: str = "auto", rewriter=None) -> None:
        if per_document > 1 and temperature <= 0:
            raise ValueError(f"per_document={per_document} with greedy decoding writes the same query each time: "
                             "set temperature > 0 (e.g. 0.7), or per_document 1")
        if rewriter is None:
            from .rewriters import LocalRewriter

            rewriter = LocalRewriter(model, task=DOC2QUERY_TASK, temperature=temperature, batch_size=batch_size,
                                     max_new_tokens=max_new_tokens, dtype=dtype,
                                     max_query_chars=MAX_PSEUDO_QUERY_CHARS)
        self.rewriter = rewriter
        self.per_document = per_document

    def describe(self) -> dict:
        from .card import model_name

        rewriter = self.rewriter
        return {"method": self.method, "model": model_name(getattr(rewriter, "model_name", None)),
                "dtype": getattr(rewriter, "resolved_dtype", None) or getattr(rewriter, "dtype", None),
                "temperature": getattr(rewriter, "temperature", None),
                "max_new_tokens": getattr(rewriter, "max_new_tokens", None), "per_document": self.per_document,
                "prompt": {"system": self.rewriter.task.system, "user": self.rewriter.task.user}}

    def stream(self, documents: Sequence[SourceDocument]) -> Iterator[Written]:
        batch = max(int(getattr(self.rewriter, "batch_size", 16)), 1)
        jobs = [index for index in range(len(documents)) for _ in range(self.per_document)]
        for start in range(0, len(jobs), batch):
            chunk = jobs[start:start + batch]
            with _quiet_fallbacks():
                results = self.rewriter.rewrite([documents[index].content for index in chunk])
            for index, result in zip(chunk, results, strict=True):
                if result.fell_back:
                    yield index, None, _short(result.reason)
                    continue
                query = " ".join(result.query.split())
                yield (index, query, None) if len(_WORD.findall(query)) >= 2 else (index, None, "fewer than 2 words")


def _short(reason: str | None) -> str:
    """A fallback reason as a count key: its first clause, without the model text it may quote."""
    text = (reason or "no query").split(":")[0].split("(")[0].strip()
    return text[:80] or "no query"


class _DropFallbackWarnings(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("query rewrite fell back")


@contextmanager
def _quiet_fallbacks() -> Iterator[None]:
    """The rewriter warns on every unusable answer, quoting its input (here a whole document); the writer counts
    them instead, so the warnings are held back while it runs."""
    target = logging.getLogger(f"{__package__}.rewriters")
    quiet = _DropFallbackWarnings()
    target.addFilter(quiet)
    try:
        yield
    finally:
        target.removeFilter(quiet)
