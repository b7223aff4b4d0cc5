"""BEIR-layout collections: ``corpus.jsonl`` (or ``corpus.preprocessed.jsonl``), ``queries.jsonl``, ``qrels/<split>.tsv``.

Every problem is reported as a :class:`DataError` naming the file and line and saying what to fix.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from ..common.errors import DataError

CORPUS_FILES = ("corpus.jsonl", "corpus.preprocessed.jsonl")


@dataclass
class Collection:
    """A loaded BEIR collection: documents, queries and judgments for one split."""

    path: Path
    split: str
    corpus: dict[str, dict[str, str]]
    queries: dict[str, str]
    qrels: dict[str, dict[str, float]]
    fingerprint: str = field(default="")

    @property
    def judged_queries(self) -> dict[str, str]:
        """Queries that have at least one judgment in this split, in file order."""
        return {qid: text for qid, text in self.queries.items() if qid in self.qrels}

    def doc_text(self, doc_id: str) -> str:
        doc = self.corpus[doc_id]
        return f"{doc['title']} {doc['text']}".strip()


def text_lines(path: Path) -> Iterator[tuple[int, str]]:
    """``(line number, text)`` of a UTF-8 file; a line that is not UTF-8 is a :class:`DataError` naming it."""
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise DataError(f"{path}:{number}: not UTF-8 text (byte {raw[exc.start]:#04x} at column "
                                f"{exc.start + 1}); save the file as UTF-8, e.g. iconv -f latin1 -t utf-8") from None
            yield number, text


def _jsonl(path: Path) -> Iterator[tuple[int, dict]]:
    for number, line in text_lines(path):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}:{number}: not valid JSON ({exc.msg}); each line must be one JSON object") from None
        except RecursionError:
            raise DataError(f"{path}:{number}: the JSON nests too deep to read; each line must be one flat "
                            "JSON object of text fields") from None
        if not isinstance(row, dict):
            raise DataError(f"{path}:{number}: expected a JSON object, got {type(row).__name__}")
        yield number, row


def _text_cell(path: Path, number: int, row: dict, key: str) -> str:
    """A text field of a JSONL row: a string, or absent/null (empty); anything else is an error naming it."""
    value = row.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise DataError(f"{path}:{number}: {key!r} is {type(value).__name__} {str(value)[:60]!r}; it must be text "
                        "(a JSON string)")
    return value


def _require_id(path: Path, number: int, row: dict, seen: set[str]) -> str:
    doc_id = row.get("_id")
    if isinstance(doc_id, (dict, list, bool, float)):
        raise DataError(f"{path}:{number}: '_id' is {type(doc_id).__name__} {str(doc_id)[:60]!r}; it must be a "
                        "string (or an integer)")
    if doc_id is None or str(doc_id).strip() == "":
        raise DataError(f"{path}:{number}: missing '_id'; every line needs a non-empty '_id'")
    doc_id = str(doc_id)
    if doc_id in seen:
        raise DataError(f"{path}:{number}: duplicate id {doc_id!r}; ids must be unique within the file")
    seen.add(doc_id)
    return doc_id


def corpus_file(path: str | Path) -> Path:
    """The corpus file of a collection folder (``corpus.jsonl``, else ``corpus.preprocessed.jsonl``)."""
    root = Path(path)
    if not root.is_dir():
        raise DataError(f"{root}: not a folder; pass the folder holding corpus.jsonl, queries.jsonl and qrels/")
    for name in CORPUS_FILES:
        if (root / name).is_file():
            return root / name
    raise DataError(f"{root}: no {' or '.join(CORPUS_FILES)}; a BEIR collection needs one of them")


def load_corpus(path: str | Path) -> dict[str, dict[str, str]]:
    """``doc id -> {"title", "text"}``; a document needs a non-empty title or text."""
    file = corpus_file(path)
    corpus: dict[str, dict[str, str]] = {}
    seen: set[str] = set()
    for number, row in _jsonl(file):
        doc_id = _require_id(file, number, row, seen)
        title, text = _text_cell(file, number, row, "title"), _text_cell(file, number, row, "text")
        if not (title.strip() or text.strip()):
            raise DataError(f"{file}:{number}: document {doc_id!r} has an empty title and text; remove it or fill it")
        corpus[doc_id] = {"title": title, "text": text}
    if not corpus:
        raise DataError(f"{file}: no documents")
    return corpus


def load_queries(path: str | Path) -> dict[str, str]:
    file = Path(path) / "queries.jsonl"
    if not file.is_file():
        raise DataError(f"{file}: missing; a BEIR collection needs queries.jsonl with '_id' and 'text'")
    queries: dict[str, str] = {}
    seen: set[str] = set()
    for number, row in _jsonl(file):
        qid = _require_id(file, number, row, seen)
        text = _text_cell(file, number, row, "text").strip()
        if not text:
            raise DataError(f"{file}:{number}: query {qid!r} has empty 'text'")
        queries[qid] = text
    return queries


def available_splits(path: str | Path) -> list[str]:
    return sorted(p.stem for p in (Path(path) / "qrels").glob("*.tsv"))


def load_qrels(path: str | Path, split: str) -> dict[str, dict[str, float]]:
    file = Path(path) / "qrels" / f"{split}.tsv"
    if not file.is_file():
        raise DataError(f"{file}: missing; splits here are {available_splits(path)}")
    qrels: dict[str, dict[str, float]] = {}
    first_line: dict[tuple[str, str], int] = {}
    for number, line in text_lines(file):
        row = next(csv.reader([line.rstrip("\r\n")], delimiter="\t"), [])
        if not row or not "".join(row).strip():
            continue
        if number == 1 and row[0].strip().lower() in {"query-id", "query_id", "qid"}:
            continue
        if len(row) != 3:
            raise DataError(f"{file}:{number}: expected 3 tab-separated columns (query-id, corpus-id, score), got {len(row)}")
        qid, doc_id, score = (cell.strip() for cell in row)
        grade = _grade(file, number, score)
        judged = qrels.setdefault(qid, {})
        if doc_id in judged and judged[doc_id] != grade:
            raise DataError(f"{file}:{number}: query {qid!r} grades document {doc_id!r} {score}, but line "
                            f"{first_line[(qid, doc_id)]} graded it {judged[doc_id]:g}; keep one judgment per pair")
        first_line.setdefault((qid, doc_id), number)
        judged[doc_id] = grade
    if not qrels:
        raise DataError(f"{file}: no judgments")
    return qrels


def _grade(file: Path, number: int, score: str) -> float:
    try:
        grade = float(score)
    except ValueError:
        raise DataError(f"{file}:{number}: score {score[:40]!r} is not a number; write a relevance grade such as 0, "
                        "1 or 2") from None
    if not math.isfinite(grade):
        raise DataError(f"{file}:{number}: score {score!r} is not a finite number; write a relevance grade such as "
                        "0, 1 or 2")
    return grade


def _fingerprint(*files: Path) -> str:
    digest = hashlib.sha256()
    for file in files:
        stat = file.stat()
        digest.update(f"{file.name}:{stat.st_size}:".encode())
        with file.open("rb") as handle:
            digest.update(hashlib.sha256(handle.read()).digest())
    return digest.hexdigest()[:16]


def load_beir(path: str | Path, split: str, *, drop_unknown_docs: bool = False) -> Collection:
    """Load and validate a collection and one split.

    A qrel naming an unknown query is an error. One naming an unknown document is an error too, unless
    ``drop_unknown_docs`` (NFCorpus's preprocessed corpus lacks 238 train-only documents): then it is dropped.
    """
    root = Path(path)
    corpus = load_corpus(root)
    queries = load_queries(root)
    qrels = load_qrels(root, split)
    qrels_file = root / "qrels" / f"{split}.tsv"
    for qid, judged in list(qrels.items()):
        if qid not in queries:
            raise DataError(f"{qrels_file}: query {qid!r} is not in {root / 'queries.jsonl'}; fix the id or add the query")
        unknown = [doc for doc in judged if doc not in corpus]
        if unknown and not drop_unknown_docs:
            raise DataError(
                f"{qrels_file}: query {qid!r} judges documents not in the corpus: {unknown[:5]}"
                " (pass drop_unknown_docs=True to ignore them)"
            )
        for doc in unknown:
            del judged[doc]
        if not any(grade > 0 for grade in judged.values()):
            del qrels[qid]
    fingerprint = _fingerprint(corpus_file(root), root / "queries.jsonl", qrels_file)
    return Collection(root, split, corpus, queries, qrels, fingerprint)
