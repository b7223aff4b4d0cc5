"""Feedback-conditioned prompts: the raw query's first-pass results, from the same retriever, as prompt text.

A task with a :class:`Feedback` format (``Task.feedback``; :func:`~deepretrieval_trainer.rewriting.tasks.with_feedback`
makes one from a built-in task)
shows the model, beside the query, what the retriever returns for the query now: the titles (or leading sentences)
of the top few documents. A small model can then learn which retrieved words discriminate. The query-only prompt
of the paper stays the default.

:meth:`Feedback.text` is the one function that turns a first-pass ranking into prompt text. Training (the prompt
dataset), evaluation (``deepretrieval eval``), the LlamaIndex ``DeepRetrievalRetriever`` and the Haystack
``DeepRetrievalQueryRewriter`` all call it, on :class:`~deepretrieval_trainer.retrieval.search.DocumentHit` lists that
:func:`~deepretrieval_trainer.rewriting.tasks.first_pass` (or the plugins, from the documents their retriever returned) build the same way.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, get_args

from ..retrieval.prf import Candidates, candidate_terms
from ..retrieval.search import DocumentHit

Field = Literal["title", "sentence", "title+sentence", "terms"]
NO_RESULTS = "(no results)"
# appended to the task's user template
FEEDBACK_BLOCK = ("\nThe search engine's top results for this query now (keep the words of relevant ones, leave out "
                  "what pulls in off-topic ones):\n{feedback}")
# what the worked example of a feedback prompt shows (its query is the tasks' aspirin example)
EXAMPLE_FEEDBACK = ("1. Aspirin resistance and cardiovascular morbidity\n"
                    "2. Low-dose aspirin for the primary prevention of myocardial infarction\n"
                    "3. Heart attack symptoms in women")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


@dataclass(frozen=True)
class Feedback:
    """How the first pass appears in the prompt: the top ``docs`` documents, each as its ``field`` (``title``, with
    the leading sentence when a document has no title; ``sentence``; or ``title+sentence``), whitespace collapsed and
    cut at a word boundary to ``max_chars``, one numbered line each. ``terms``: instead of documents, the ``terms``
    candidate terms RM3 mines from the top ``docs`` documents (:meth:`candidates`), most weighted first, on one line:
    the corpus-steered prompt, whose answer picks among them (framing ``steer``)."""

    docs: int = 3
    field: Field = "title"
    max_chars: int = 160
    terms: int = 10

    def __post_init__(self) -> None:
        if not isinstance(self.docs, int) or isinstance(self.docs, bool) or self.docs < 1:
            raise ValueError(f"feedback docs={self.docs!r} must be a positive integer (0 turns feedback off)")
        if self.field not in get_args(Field):
            raise ValueError(f"feedback field={self.field!r}: choose one of {list(get_args(Field))}")
        if not isinstance(self.max_chars, int) or self.max_chars < 20:
            raise ValueError(f"feedback max_chars={self.max_chars!r} must be an integer >= 20")
        if not isinstance(self.terms, int) or isinstance(self.terms, bool) or self.terms < 1:
            raise ValueError(f"feedback terms={self.terms!r} must be a positive integer (candidate terms shown)")

    def text(self, hits: Sequence[DocumentHit]) -> str:
        """The prompt text of a first-pass ranking (best first); :data:`NO_RESULTS` when it is empty."""
        if self.field == "terms":
            return ", ".join(self.candidates(hits).forms.values()) or NO_RESULTS
        lines = [f"{rank}. {self._snippet(hit)}" for rank, hit in enumerate(list(hits)[: self.docs], start=1)]
        return "\n".join(lines) or NO_RESULTS

    def candidates(self, hits: Sequence[DocumentHit]) -> Candidates:
        """The candidate terms of a first-pass ranking: RM3's feedback model of its top ``docs`` documents, cut to
        ``terms`` terms (:func:`deepretrieval_trainer.retrieval.prf.feedback_model`, Pyserini's RM3 with a stemmer).
        The prompt shows them and framing ``steer`` weights what the answer keeps of them, from this one function."""
        return candidate_terms(list(hits)[: self.docs], self.terms) if hits else Candidates({}, {})

    def _snippet(self, hit: DocumentHit) -> str:
        title, sentence = _clean(hit.title), leading_sentence(hit.text)
        if self.field == "sentence":
            snippet = sentence or title
        elif self.field == "title+sentence":
            snippet = f"{title}: {sentence}" if title and sentence else title or sentence
        else:
            snippet = title or sentence
        return _cut(snippet or "(empty document)", self.max_chars)


def leading_sentence(text: str) -> str:
    """The first sentence of ``text`` (up to the first ``.``, ``!`` or ``?`` followed by a space), whitespace
    collapsed."""
    return _SENTENCE_END.split(_clean(text), maxsplit=1)[0]


def _clean(text: str) -> str:
    return " ".join((text or "").split())


def _cut(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    head = text[: limit - 3]
    space = head.rfind(" ")
    return (head[:space] if space > limit // 2 else head).rstrip(" ,;:") + "..."
