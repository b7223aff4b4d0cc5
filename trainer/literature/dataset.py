"""The literature-search dataset: JSONL, one review topic per line.

Each line is a JSON object::

    {"id": "CD012345", "topic": "aspirin for primary prevention of stroke", "relevant": ["2918412", "3391112"],
     "pub_date": "2019/05/01"}
    {"id": "r2", "P": "adults with atrial fibrillation", "I": "apixaban", "C": "warfarin", "O": "stroke",
     "relevant": ["NCT00412984"]}

- ``id``: unique text (a number is accepted and kept as text).
- ``topic`` and/or the PICO fields ``P``, ``I``, ``C``, ``O``: at least one non-empty; any may be empty or absent.
- ``relevant``: the non-empty list of relevant document ids (PMIDs for PubMed, NCT ids for ClinicalTrials.gov,
  corpus ids for the embedded engine).
- ``pub_date`` (optional): the review's publication date, ``YYYY``, ``YYYY/MM`` or ``YYYY/MM/DD`` (``-`` also
  accepted). Searches for this row are limited to records published up to that date.
- ``meta`` (optional): any JSON object, carried along and ignored. Any other key is an error (a typo such as
  ``relevent`` would otherwise silently lose the judgments).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..common.errors import DataError
from ..common.fields import bounded_repr
from ..retrieval.data import (
    Collection,
    check_encodable,
    check_id,
    json_line,
    text_lines,
)
from ..retrieval.dates import DateRange, normalize_date
from ..rewriting.tasks import PICO_FIELDS

QUERY_KEYS = ("topic", *PICO_FIELDS)
ALLOWED_KEYS = frozenset({"id", "relevant", "pub_date", "meta", *QUERY_KEYS})


@dataclass(frozen=True)
class LiteratureExample:
    """One review topic: its query fields, its relevant ids, and its publication date if known."""

    id: str
    fields: dict[str, str]
    relevant: tuple[str, ...]
    pub_date: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def query(self) -> dict[str, str]:
        """What the literature task's prompt takes (``Topic: ...`` and/or the PICO lines, as in its example)."""
        return dict(self.fields)

    @property
    def date_range(self) -> DateRange | None:
        """The search window that keeps literature published after the review out (None: no cutoff)."""
        return DateRange.before(self.pub_date) if self.pub_date else None

    @property
    def qrels(self) -> dict[str, float]:
        return {doc_id: 1.0 for doc_id in self.relevant}

    def to_row(self) -> dict[str, Any]:
        """The JSON object of this example (what :func:`write_literature` writes)."""
        row: dict[str, Any] = {"id": self.id, **self.fields, "relevant": list(self.relevant)}
        if self.pub_date:
            row["pub_date"] = self.pub_date
        if self.meta:
            row["meta"] = self.meta
        return row


def parse_example(row: Any, where: str = "row") -> LiteratureExample:
    """Validate one row; a problem raises :class:`DataError` naming ``where`` and the fix."""
    if not isinstance(row, Mapping):
        raise DataError(f"{where}: expected a JSON object, got {type(row).__name__}")
    unknown = sorted(set(row) - ALLOWED_KEYS)
    if unknown:
        raise DataError(f"{where}: unknown keys {bounded_repr(unknown, 200)}; allowed are {sorted(ALLOWED_KEYS)} "
                        "(put extras in 'meta')")
    check_encodable(row, where)
    doc_id = row.get("id")
    if not isinstance(doc_id, (str, int)) or isinstance(doc_id, bool):
        raise DataError(f"{where}: 'id' must be non-empty text, got {bounded_repr(doc_id)}")
    doc_id = check_id(doc_id.strip() if isinstance(doc_id, str) else doc_id, where, "'id'")
    fields = {}
    for key in QUERY_KEYS:
        value = row.get(key)
        if value is not None and not isinstance(value, str):
            raise DataError(f"{where}: {key!r} must be text, got {type(value).__name__}")
        if value and value.strip():
            fields[key] = value.strip()
    if not fields:
        raise DataError(f"{where}: no query: give a non-empty 'topic' or at least one of the PICO fields P, I, C, O")
    relevant = row.get("relevant")
    if not isinstance(relevant, list) or not relevant:
        raise DataError(f"{where}: 'relevant' must be a non-empty list of document ids, got {bounded_repr(relevant)}")
    if not all(isinstance(item, int) and not isinstance(item, bool) or isinstance(item, str) and item.strip()
               for item in relevant):
        raise DataError(f"{where}: 'relevant' ids must be non-empty text or numbers, got {bounded_repr(relevant)}")
    relevant = [check_id(item.strip() if isinstance(item, str) else item, where, f"'relevant'[{i}]")
                for i, item in enumerate(relevant)]
    pub_date = row.get("pub_date")
    if pub_date is not None:
        try:
            pub_date = normalize_date(str(pub_date), field="pub_date")
        except ValueError as exc:
            raise DataError(f"{where}: {exc}") from None
    meta = row.get("meta")
    meta = {} if meta is None else meta
    if not isinstance(meta, dict):
        raise DataError(f"{where}: 'meta' must be a JSON object, got {type(meta).__name__}")
    return LiteratureExample(doc_id, fields, tuple(dict.fromkeys(relevant)), pub_date, meta)


def load_literature(path: str | Path) -> list[LiteratureExample]:
    """Read and validate a literature JSONL file (every problem names the file, the line and the fix)."""
    file = Path(path)
    if not file.is_file():
        raise DataError(f"{file}: no such file; give a literature JSONL file (see docs/literature-search.md)")
    examples: list[LiteratureExample] = []
    seen: set[str] = set()
    for number, line in text_lines(file):
        if not line.strip():
            continue
        where = f"{file}:{number}"
        row = json_line(file, number, line, shape="one JSON object of text fields and lists of ids")
        example = parse_example(row, where)
        if example.id in seen:
            raise DataError(f"{where}: duplicate id {bounded_repr(example.id)}; ids must be unique within the file")
        seen.add(example.id)
        examples.append(example)
    if not examples:
        raise DataError(f"{file}: no examples; the file is empty")
    return examples


def write_literature(path: str | Path, examples: Iterable[LiteratureExample]) -> int:
    """Write examples as JSONL; return how many."""
    file = Path(path)
    file.parent.mkdir(parents=True, exist_ok=True)
    count = 0
    with file.open("w", encoding="utf-8") as handle:
        for example in examples:
            handle.write(json.dumps(example.to_row(), ensure_ascii=False) + "\n")
            count += 1
    return count


def from_collection(collection: Collection) -> list[LiteratureExample]:
    """A BEIR collection split as literature examples: topic = the query text, relevant = ids graded > 0."""
    examples = []
    for qid, text in collection.judged_queries.items():
        relevant = tuple(doc for doc, grade in collection.qrels[qid].items() if grade > 0)
        if relevant:
            examples.append(LiteratureExample(qid, {"topic": text}, relevant,
                                              meta={"source": collection.path.name, "split": collection.split}))
    if not examples:
        raise DataError(f"{collection.path} split {collection.split!r}: no query has a relevant document")
    return examples


def training_rows(examples: Iterable[LiteratureExample]) -> list[dict[str, Any]]:
    """Rows for ``deepretrieval_trainer.training.retrieval.train``: ``{"query", "qrels", "query_id", "pub_date"}`` (the query is
    the topic text or the PICO fields, which the literature task formats; ``pub_date`` is the row's
    publication-date cutoff, which the reward applies through engines that filter by date)."""
    return [{"query": example.query, "qrels": example.qrels, "query_id": example.id, "pub_date": example.pub_date}
            for example in examples]
