"""Tasks: a chat prompt template, the metric that scores a rewrite, and the reward tiers.

A task turns a user query (or, for literature search, PICO fields) into chat messages asking for
``<think>...</think><answer>{"query": "..."}</answer>``. Users pass their own :class:`Task` or change the
``system``/``user`` templates of a built-in one with :func:`dataclasses.replace`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, Union

from ..retrieval.search import DocumentHit, SearchBackend, document_search
from .answer import MAX_QUERY_CHARS, Rewrite, parse_answer
from .feedback import EXAMPLE_FEEDBACK, FEEDBACK_BLOCK, NO_RESULTS, Feedback

QueryInput = Union[str, Mapping[str, str]]
Metric = Literal["recall", "ndcg", "hit_rank", "execution"]

_FORMAT = (
    "Think briefly inside <think> </think>, then give only the final query as JSON inside <answer> </answer>, "
    'for example: <think>...</think>\n<answer>{"query": "..."}</answer>'
)

RETRIEVAL_SYSTEM = (
    "You rewrite search queries for a keyword (BM25) search engine. Add the specific terms, synonyms and "
    "technical vocabulary that relevant documents are likely to contain. " + _FORMAT
)
DENSE_SYSTEM = (
    "You rewrite search queries for a semantic (embedding) search engine. Keep the original meaning, make it "
    "explicit and complete, and expand it with closely related concepts. " + _FORMAT
)
QA_SYSTEM = (
    "You turn a question into a search query that finds the passage containing its answer. Name the entities "
    "and the facts the evidence must mention. " + _FORMAT
)
LITERATURE_SYSTEM = (
    "You write Boolean search queries for a medical literature search engine (PubMed syntax). Combine the key "
    "concepts with AND, their synonyms with OR, use parentheses and quoted phrases, and optionally field tags "
    "such as [tiab] or [mh]. Aim for high recall. " + _FORMAT
)
# Text-to-SQL (deepretrieval_trainer.sql): the user turn is the schema then the question (sql.schema.prompt_input).
SQL_SYSTEM = (
    "You write one SQL query that answers the question over the database described. Use only the tables and "
    "columns listed, in the database's dialect. Think briefly inside <think> </think>, then give only the SQL "
    "inside <answer> </answer>, for example: <think>...</think>\n<answer>SELECT ...</answer>"
)
# HyDE (Gao et al. 2022): the prompted baseline users try first. The model writes a short passage that would answer
# the query, and the passage (with the query, see deepretrieval_trainer.evaluation.evaluate) is what gets searched.
HYDE_SYSTEM = (
    "Write a short passage, in the style of a scientific abstract, that answers the query or supports the claim. "
    "Use the specific technical terms such a document would contain. Write only the passage inside <answer> </answer>."
)
PICO_FIELDS = ("P", "I", "C", "O")
_PICO_NAMES = {"P": "Population", "I": "Intervention", "C": "Comparison", "O": "Outcome"}


@dataclass(frozen=True)
class Tiers:
    """Piecewise-constant reward: the first ``(threshold, reward)`` whose threshold the value meets, else ``floor``.

    ``higher_is_better`` is False for ranks (rank <= threshold).
    """

    steps: tuple[tuple[float, float], ...]
    floor: float
    higher_is_better: bool = True

    def __post_init__(self) -> None:
        thresholds = [t for t, _ in self.steps]
        ordered = sorted(thresholds, reverse=self.higher_is_better)
        if thresholds != ordered:
            direction = "descending" if self.higher_is_better else "ascending"
            raise ValueError(f"tier thresholds {thresholds} must be {direction}; sort them")

    def __call__(self, value: float) -> float:
        for threshold, reward in self.steps:
            if (value >= threshold) if self.higher_is_better else (value <= threshold):
                return reward
        return self.floor


# Paper (DeepRetrieval): recall tiers for literature search; hit-rank tiers for evidence QA.
RECALL_TIERS = Tiers(((0.7, 5.0), (0.5, 4.0), (0.4, 3.0), (0.3, 1.0), (0.1, 0.5), (0.05, 0.1)), floor=-3.5)
HIT_RANK_TIERS = Tiers(((5, 5.0), (20, 4.0), (50, 2.0), (100, 1.0), (1000, 0.5)), floor=-3.5, higher_is_better=False)


@dataclass(frozen=True)
class Task:
    """Prompt template + answer key + metric + reward shaping for one kind of rewriting."""

    name: str
    system: str
    user: str = "Query: {query}"
    metric: Metric = "ndcg"
    k: int = 10
    train_k: int | None = None
    tiers: Tiers | None = None
    reward_scale: float = 1.0
    format_valid: float = 0.1
    format_invalid: float = -2.0
    extra: Mapping[str, str] = field(default_factory=dict)
    examples: tuple[tuple[str, str], ...] = ()
    prefill: str = "<think>"
    # generation stops after the first of these (nothing after the answer is parsed); the same in training,
    # in-process rewriting and served requests
    stop: tuple[str, ...] = ("</answer>",)
    # feedback-conditioned prompts (with_feedback below): the user template's {feedback}
    # shows the query's first-pass results in this format; example_feedback is what each worked example shows
    feedback: Feedback | None = None
    example_feedback: tuple[str, ...] = ()
    # the JSON field of the answer that holds the query ("terms" for the corpus-steered task), and whether the trained
    # format starts with a <think> block
    answer_key: str = "query"
    think: bool = True

    def __post_init__(self) -> None:
        if "{query}" not in self.user:
            raise ValueError(f"task {self.name!r}: the user template {self.user!r} must contain '{{query}}'")
        if (self.feedback is not None) != ("{feedback}" in self.user):
            raise ValueError(f"task {self.name!r}: a user template with '{{feedback}}' goes with a Feedback format and "
                             f"back (feedback={self.feedback!r}, user={self.user!r}); build it with with_feedback()")
        if self.k < 1:
            raise ValueError(f"task {self.name!r}: k={self.k} must be >= 1")

    @property
    def reward_k(self) -> int:
        """The cutoff used for the reward in training (``train_k``, else ``k``)."""
        return self.train_k or self.k

    def user_text(self, query: QueryInput, feedback: str | None = None) -> str:
        """The user turn; ``feedback`` is the first-pass text (:meth:`Feedback.text`) a feedback task requires."""
        if isinstance(query, Mapping):
            query = format_pico(query)
        if not isinstance(query, str) or not query.strip():
            raise ValueError(f"task {self.name!r}: the query must be non-empty text, got {query!r}")
        values = dict(self.extra)
        if self.feedback is not None:
            if feedback is None:
                raise ValueError(f"task {self.name!r} shows the query's first-pass results: pass them (hits=...), "
                                 "as deepretrieval_trainer.rewriting.tasks.first_pass returns them")
            values["feedback"] = feedback
        return self.user.format(query=query.strip(), **values)

    def messages(self, query: QueryInput, hits: Sequence[DocumentHit] | None = None) -> list[dict[str, str]]:
        """Chat messages for one query: system prompt, the worked examples as earlier turns, then the query (with
        its first-pass ``hits`` as :meth:`Feedback.text` writes them, for a feedback task; ignored otherwise).

        The assistant turn is not included; backends start it with :attr:`prefill` (``<think>`` by default),
        and the completion is parsed as ``prefill + completion`` (see :meth:`completion_text`).
        """
        feedback = self.feedback.text(hits) if self.feedback is not None and hits is not None else None
        messages = [{"role": "system", "content": self.system}]
        for index, (example_query, example_answer) in enumerate(self.examples):
            shown = self.example_feedback[index] if index < len(self.example_feedback) else NO_RESULTS
            messages.append({"role": "user", "content": self.user_text(example_query, shown)})
            messages.append({"role": "assistant", "content": example_answer})
        messages.append({"role": "user", "content": self.user_text(query, feedback)})
        return messages

    def completion_text(self, completion: str) -> str:
        """The full assistant text: the prefill the backend started with, then the generated completion."""
        return self.prefill + completion

    def parse(self, completion: object, *, max_chars: int = MAX_QUERY_CHARS) -> Rewrite:
        """The rewrite in a completion (generated after :attr:`prefill`); never raises on model text."""
        text = self.completion_text(completion) if isinstance(completion, str) else completion
        return parse_answer(text, max_chars=max_chars, key=self.answer_key)

    def well_formed(self, parsed: Rewrite) -> bool:
        """Whether a parsed completion has the exact trained format: a JSON answer with a usable query, after a
        ``<think>`` block when the task thinks."""
        return parsed.ok and parsed.is_json and not parsed.repaired and (parsed.has_think or not self.think)


def format_pico(fields: Mapping[str, str]) -> str:
    """PICO fields (any may be empty) or ``{"topic": ...}`` as prompt text."""
    lines = [f"{_PICO_NAMES[key]}: {fields[key].strip()}" for key in PICO_FIELDS if (fields.get(key) or "").strip()]
    topic = (fields.get("topic") or "").strip()
    if topic:
        lines.insert(0, f"Topic: {topic}")
    unknown = sorted(set(fields) - set(PICO_FIELDS) - {"topic"})
    if unknown:
        raise ValueError(f"unknown PICO keys {unknown}: use P, I, C, O or topic")
    if not lines:
        raise ValueError("all PICO fields and the topic are empty: give at least one")
    return "\n".join(lines)


# One worked example per task: small models (the embedded 135M one) follow the format far more often with it.
_RETRIEVAL_EXAMPLE = (
    "aspirin prevents heart attacks",
    "<think>Relevant documents mention aspirin, myocardial infarction and cardiovascular prevention.</think>\n"
    '<answer>{"query": "aspirin myocardial infarction heart attack cardiovascular prevention"}</answer>',
)
_DENSE_EXAMPLE = (
    "aspirin prevents heart attacks",
    "<think>The question is whether aspirin lowers the risk of myocardial infarction.</think>\n"
    '<answer>{"query": "does taking aspirin lower the risk of heart attack (myocardial infarction)"}</answer>',
)
_QA_EXAMPLE = (
    "who discovered penicillin",
    "<think>The evidence names the discoverer of penicillin, Alexander Fleming, 1928.</think>\n"
    '<answer>{"query": "penicillin discovered by Alexander Fleming 1928 discovery"}</answer>',
)
_LITERATURE_EXAMPLE = (
    "Topic: aspirin for prevention of heart attacks",
    "<think>Two concepts: aspirin, and myocardial infarction prevention, each with synonyms.</think>\n"
    '<answer>{"query": "(aspirin[tiab] OR \\"acetylsalicylic acid\\"[tiab]) AND (\\"myocardial infarction\\"[tiab] '
    'OR \\"heart attack\\"[tiab])"}</answer>',
)

_HYDE_EXAMPLE = (
    "aspirin prevents heart attacks",
    "<answer>Low-dose aspirin (acetylsalicylic acid) inhibits platelet aggregation and reduces the risk of "
    "myocardial infarction in patients with cardiovascular disease.</answer>",
)

# Made up (no Spider database): a join, a filter and an aggregate in the trained answer shape.
_SQL_EXAMPLE = (
    "Database: library (sqlite)\nauthor(author_id INTEGER primary key, name TEXT, country TEXT)\n"
    "book(book_id INTEGER primary key, title TEXT, year INTEGER, author_id INTEGER)\n"
    "Foreign keys: book.author_id -> author.author_id\nQuestion: How many books were written by authors from France?",
    "<think>Join book to author on author_id, keep country France, count the books.</think>\n"
    "<answer>SELECT count(*) FROM book AS T1 JOIN author AS T2 ON T1.author_id = T2.author_id "
    "WHERE T2.country = 'France'</answer>",
)
# More worked examples, also made up, each a query shape the single example lacks (a projection, an ordering with a
# limit, a grouping). TASKS["sql"] shows the first SQL_EXAMPLES of this pool, the join first; sql_task(shots) any
# other count. Measured for the embedded 135M model in
# docs/experiments/sql-recipes.md#how-many-worked-examples-should-the-sql-prompt-show.
_SQL_MORE_EXAMPLES = (
    (
        "Database: shop (sqlite)\nproduct(product_id INTEGER primary key, name TEXT, price REAL, category TEXT)\n"
        "Question: What is the name of the most expensive product?",
        "<think>Order products by price, highest first, keep one.</think>\n"
        "<answer>SELECT name FROM product ORDER BY price DESC LIMIT 1</answer>",
    ),
    (
        "Database: school (sqlite)\nstudent(student_id INTEGER primary key, name TEXT, age INTEGER, city TEXT)\n"
        "Question: How many students live in each city?",
        "<think>Group students by city and count each group.</think>\n"
        "<answer>SELECT city, count(*) FROM student GROUP BY city</answer>",
    ),
    (
        "Database: shop (sqlite)\nproduct(product_id INTEGER primary key, name TEXT, price REAL, category TEXT)\n"
        "Question: List the names and prices of products that cost less than 10.",
        "<think>Two columns of product, filtered on price.</think>\n"
        "<answer>SELECT name, price FROM product WHERE price < 10</answer>",
    ),
)
SQL_EXAMPLE_POOL = (_SQL_EXAMPLE, *_SQL_MORE_EXAMPLES)
# 4 of them: on 32 easy train questions the untrained model's sampled answers were format-valid 16% vs 8% with one, and
# 9% vs 3% of 8-sample groups held a right answer
# (docs/experiments/sql-recipes.md#how-many-worked-examples-should-the-sql-prompt-show)
SQL_EXAMPLES = 4
# Execution reward: 1 when the result matches the reference, 0 when it runs but differs, the floor when it fails
# (an error, a timeout, too many rows, a refused statement); the value scored is 1 / 0 / -1.
EXECUTION_TIERS = Tiers(((1.0, 1.0), (0.0, 0.0)), floor=-0.5)

# The corpus-steered task: the prompt shows the candidate terms RM3 mines from the query's first pass (the same
# retriever's top 10 documents), and the answer copies the ones that fit; framing "steer" searches RM3 restricted to
# them. No <think>: with one, the untrained embedded model looped on 87 of 100 NFCorpus dev queries. The answer's
# JSON field is "terms", not "query": asked for a "query", it echoed the user's query instead of choosing among the
# candidates, while "terms" makes it copy the list, so its untrained start is RM3 itself
# (docs/experiments/retrieval-recipes.md#a-corpus-steered-prompt-what-does-the-untrained-model-start-from).
STEER_SYSTEM = (
    "You choose search terms for a keyword (BM25) search engine. You see a user's query and candidate terms found in "
    "the engine's top results for it. Copy the candidate terms that fit what the query means, in their order, and "
    "leave out the ones that drift to other topics. Give only the terms as JSON inside <answer> </answer>."
)
_STEER_CANDIDATES = "aspirin, myocardial, infarction, platelet, cardiovascular, risk, prevention, bleeding, trial, stroke"
_STEER_EXAMPLE = (
    "aspirin prevents heart attacks",
    '<answer>{"terms": "aspirin, myocardial, infarction, platelet, cardiovascular, risk, prevention, stroke"}</answer>',
)

TASKS: dict[str, Task] = {
    "retrieval": Task("retrieval", RETRIEVAL_SYSTEM, metric="ndcg", k=10, train_k=100,
                      examples=(_RETRIEVAL_EXAMPLE,)),
    "dense": Task("dense", DENSE_SYSTEM, metric="ndcg", k=10, train_k=100, examples=(_DENSE_EXAMPLE,)),
    "qa": Task("qa", QA_SYSTEM, "Question: {query}", metric="hit_rank", k=1000, tiers=HIT_RANK_TIERS,
               format_valid=1.0, format_invalid=-4.0, examples=(_QA_EXAMPLE,)),
    "literature": Task("literature", LITERATURE_SYSTEM, "{query}", metric="recall", k=3000, tiers=RECALL_TIERS,
                       format_valid=1.0, format_invalid=-4.0, examples=(_LITERATURE_EXAMPLE,)),
    "sql": Task("sql", SQL_SYSTEM, "{query}", metric="execution", k=1, tiers=EXECUTION_TIERS,
                format_valid=0.1, format_invalid=-2.0, examples=SQL_EXAMPLE_POOL[:SQL_EXAMPLES]),
    "steer": Task("steer", STEER_SYSTEM, "Query: {query}\nCandidate terms: {feedback}", metric="ndcg", k=10,
                  train_k=100, examples=(_STEER_EXAMPLE,), prefill='<answer>{"terms": "', answer_key="terms",
                  think=False, feedback=Feedback(docs=10, field="terms", terms=10),
                  example_feedback=(_STEER_CANDIDATES,)),
}
# Not in TASKS: a prompted baseline for evaluation (`deepretrieval eval --source hyde`), not a trained format.
HYDE_TASK = Task("hyde", HYDE_SYSTEM, metric="ndcg", k=10, examples=(_HYDE_EXAMPLE,), prefill="<answer>")


def get_task(task: str | Task) -> Task:
    """A built-in task by name, or the given :class:`Task` unchanged."""
    if isinstance(task, Task):
        return task
    try:
        return TASKS[task]
    except KeyError:
        raise ValueError(f"unknown task {task!r}: choose one of {sorted(TASKS)} or pass a Task") from None


def sql_task(shots: int) -> Task:
    """The ``sql`` task showing the first ``shots`` worked examples of :data:`SQL_EXAMPLE_POOL` (1 to its size)."""
    if isinstance(shots, bool) or not isinstance(shots, int) or not 1 <= shots <= len(SQL_EXAMPLE_POOL):
        raise ValueError(f"shots={shots!r}: the sql task has {len(SQL_EXAMPLE_POOL)} worked examples; "
                         f"show 1 to {len(SQL_EXAMPLE_POOL)} of them")
    return dataclasses.replace(TASKS["sql"], examples=SQL_EXAMPLE_POOL[:shots])


def with_feedback(task: str | Task, feedback: Feedback | int = 3) -> Task:
    """``task`` with the first-pass results in its prompt: :data:`FEEDBACK_BLOCK` after its user template (unless
    the template already has ``{feedback}``) and the worked examples shown with :data:`EXAMPLE_FEEDBACK`.
    ``feedback``: a :class:`Feedback` or a number of documents."""
    task = get_task(task)
    if isinstance(feedback, int) and not isinstance(feedback, bool):
        # a number of documents: the task's own feedback format (the corpus-steered one's terms) with that many
        feedback = dataclasses.replace(task.feedback, docs=feedback) if task.feedback else Feedback(docs=feedback)
    if not isinstance(feedback, Feedback):
        raise TypeError(f"feedback={feedback!r}: pass a Feedback or a number of documents")
    if task.feedback is not None:
        return dataclasses.replace(task, feedback=feedback)
    user = task.user if "{feedback}" in task.user else task.user + FEEDBACK_BLOCK
    return dataclasses.replace(task, user=user, feedback=feedback,
                               example_feedback=tuple(EXAMPLE_FEEDBACK for _ in task.examples))


def first_pass(search: SearchBackend, queries: Sequence[str], task: Task) -> list[list[DocumentHit]]:
    """The first-pass documents of each raw query that ``task``'s prompt shows, from ``search`` (which must be a
    ``DocumentSearch``): what training and evaluation compute before rewriting."""
    if task.feedback is None:
        raise ValueError(f"task {task.name!r} shows no first-pass results (task.feedback is None)")
    backend = document_search(search, purpose=f"the feedback prompt of task {task.name!r}")
    return backend.search_documents(list(queries), task.feedback.docs)
