"""BEIR-layout collections: ``corpus.jsonl`` (or ``corpus.preprocessed.jsonl``), ``queries.jsonl``, ``qrels/<split>.tsv``.

Every problem is reported as a :class:`DataError` naming the file and line and saying what to fix.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..common.errors import DataError
from ..common.fields import bounded_repr

logger = logging.getLogger(__name__)

CORPUS_FILES = ("corpus.jsonl", "corpus.preprocessed.jsonl")
MAX_ID_CHARS = 1024  # an id is a short key; a longer cell is a misplaced column or a broken file
# Python converts at most this many digits (sys.get_int_max_str_digits); a longer JSON number is a DataError
MAX_NUMBER_DIGITS = getattr(sys, "get_int_max_str_digits", lambda: 4300)() or 4300
_ID_BREAKERS = re.compile(r"[\x00\t\n\r]")  # no id may hold these: qrels files are tab- and line-separated text
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")  # a JSON escape that may leave a lone surrogate


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
        row = json_line(path, number, line, shape="one flat JSON object of text fields", used=("_id", "title", "text"))
        if not isinstance(row, dict):
            raise DataError(f"{path}:{number}: expected a JSON object, got {type(row).__name__}")
        yield number, row


class _LongNumber(Exception):
    def __init__(self, digits: int) -> None:
        self.digits = digits


def _json_int(text: str) -> int:
    digits = len(text.lstrip("-"))
    if digits > MAX_NUMBER_DIGITS:
        raise _LongNumber(digits)
    return int(text)


_DECODER = json.JSONDecoder(parse_int=_json_int)  # one decoder: json.loads with a keyword builds one per call


def json_line(path: Path, number: int, line: str, *, shape: str, used: tuple[str, ...] | None = None) -> Any:
    """One JSONL line parsed; a problem is a :class:`DataError` naming ``path:number`` and the fix (``shape``: what
    each line must be). Text that cannot be written as UTF-8 (a lone surrogate left by a ``\\ud800`` escape) is
    refused here, before an index or a tokenizer meets it: in the keys ``used`` of an object (None: anywhere)."""
    try:
        row = _DECODER.decode(line)
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}:{number}: not valid JSON ({exc.msg}); each line must be {shape}") from None
    except RecursionError:
        raise DataError(f"{path}:{number}: the JSON nests too deep to read; each line must be {shape}") from None
    except _LongNumber as exc:
        raise DataError(f"{path}:{number}: a number of {exc.digits} digits is longer than Python reads "
                        f"({MAX_NUMBER_DIGITS}); write ids as JSON strings (\"...\"), each at most {MAX_ID_CHARS} "
                        "characters") from None
    if _SURROGATE_ESCAPE.search(line):
        checked = {key: row[key] for key in used if key in row} if used is not None and isinstance(row, dict) else row
        check_encodable(checked, f"{path}:{number}")
    return row


def check_encodable(value: Any, where: str) -> None:
    """Raise :class:`DataError` if any text in ``value`` (keys too, nested) cannot be written as UTF-8."""
    stack = [(value, None)]
    while stack:
        item, key = stack.pop()
        if isinstance(item, dict):
            stack.extend((k, k) for k in item if isinstance(k, str))
            stack.extend((v, k if isinstance(k, str) else key) for k, v in item.items())
        elif isinstance(item, list):
            stack.extend((v, key) for v in item)
        elif isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError as exc:
                field_name = f"{bounded_repr(key, 40)} " if key is not None else ""
                raise DataError(f"{where}: {field_name}holds a lone surrogate (\\u{ord(item[exc.start]):04x} at "
                                f"character {exc.start + 1}), which is not text: the tool that wrote the file split a "
                                "character in two; write it again as UTF-8 (e.g. json.dumps(row, ensure_ascii=False) "
                                "from the original text), or remove the escape") from None


def _text_cell(path: Path, number: int, row: dict, key: str) -> str:
    """A text field of a JSONL row: a string, or absent/null (empty); anything else is an error naming it."""
    value = row.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise DataError(f"{path}:{number}: {key!r} is {type(value).__name__} {bounded_repr(value, 60)}; it must be "
                        "text (a JSON string)")
    return value


def check_id(value: Any, where: str, what: str = "'_id'") -> str:
    """An id as text: a string, or an integer kept as its digits; a :class:`DataError` naming ``where`` otherwise
    (missing or empty, another type, longer than :data:`MAX_ID_CHARS`, or holding a tab, line break or NUL)."""
    if isinstance(value, (dict, list, tuple, bool, float)):
        raise DataError(f"{where}: {what} is {type(value).__name__} {bounded_repr(value, 60)}; it must be a string "
                        "(or an integer)")
    if isinstance(value, int) and value.bit_length() > 4 * MAX_ID_CHARS:
        raise DataError(f"{where}: {what} is an integer of about {int(value.bit_length() * 0.30103) + 1} digits; "
                        f"an id is at most {MAX_ID_CHARS} characters: check the column")
    text = "" if value is None else str(value)
    if not text.strip():
        raise DataError(f"{where}: missing {what}; every line needs a non-empty {what}")
    if len(text) > MAX_ID_CHARS:
        raise DataError(f"{where}: {what} {bounded_repr(text, 40)} is {len(text):,} characters long; an id is at "
                        f"most {MAX_ID_CHARS} characters: check that the columns (or fields) are in their place")
    bad = _ID_BREAKERS.search(text)
    if bad:
        raise DataError(f"{where}: {what} {bounded_repr(text, 40)} holds {bad.group()!r} at character "
                        f"{bad.start() + 1}; ids are written to tab-separated qrels and run files, so they hold no "
                        "tab, line break or NUL: remove it")
    return text


def _require_id(path: Path, number: int, row: dict, seen: set[str]) -> str:
    doc_id = check_id(row.get("_id"), f"{path}:{number}")
    if doc_id in seen:
        raise DataError(f"{path}:{number}: duplicate id {bounded_repr(doc_id)}; ids must be unique within the file")
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
    quoted = False
    for number, line in text_lines(file):
        # plain tab-separated text: a quote is part of its cell (csv's quoting would silently drop it)
        row = line.rstrip("\r\n").split("\t")
        if not "".join(row).strip():
            continue
        if number == 1 and row[0].strip().lower() in {"query-id", "query_id", "qid"}:
            continue
        if len(row) != 3:
            raise DataError(f"{file}:{number}: expected 3 tab-separated columns (query-id, corpus-id, score), got "
                            f"{len(row)}")
        qid, doc_id, score = (cell.strip() for cell in row)
        qid = check_id(qid, f"{file}:{number}", "the query-id")
        doc_id = check_id(doc_id, f"{file}:{number}", "the corpus-id")
        if not quoted and '"' in qid + doc_id:
            quoted = True
            logger.warning("%s:%d: a quoted id; qrels are plain tab-separated text, so the quotes are part of the id "
                           "(remove them if the ids in the corpus and queries have none)", file, number)
        grade = _grade(file, number, score)
        judged = qrels.setdefault(qid, {})
        if doc_id in judged and judged[doc_id] != grade:
            raise DataError(f"{file}:{number}: query {bounded_repr(qid)} grades document {bounded_repr(doc_id)} "
                            f"{score[:40]}, but line {first_line[(qid, doc_id)]} graded it {judged[doc_id]:g}; keep "
                            "one judgment per pair")
        first_line.setdefault((qid, doc_id), number)
        judged[doc_id] = grade
    if not qrels:
        raise DataError(f"{file}: no judgments")
    return qrels


def _grade(file: Path, number: int, score: str) -> float:
    try:
        grade = float(score)
    except ValueError:
        raise DataError(f"{file}:{number}: score {bounded_repr(score, 40)} is not a number; write a relevance grade "
                        "such as 0, 1 or 2") from None
    if not math.isfinite(grade):
        raise DataError(f"{file}:{number}: score {bounded_repr(score, 40)} is not a finite number; write a relevance "
                        "grade such as 0, 1 or 2")
    return grade


def _quote_hint(*ids: str) -> str:
    if any(i[:1] == '"' or i[-1:] == '"' for i in ids):
        return "; qrels are plain tab-separated text, so quotes around an id are part of it: remove them"
    return ""


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
            raise DataError(f"{qrels_file}: query {bounded_repr(qid)} is not in {root / 'queries.jsonl'}; fix the id "
                            f"or add the query{_quote_hint(qid)}")
        unknown = [doc for doc in judged if doc not in corpus]
        if unknown and not drop_unknown_docs:
            raise DataError(
                f"{qrels_file}: query {bounded_repr(qid)} judges documents not in the corpus: "
                f"{bounded_repr(unknown[:5], 300)} (pass drop_unknown_docs=True to ignore them){_quote_hint(*unknown)}"
            )
        for doc in unknown:
            del judged[doc]
        if not any(grade > 0 for grade in judged.values()):
            del qrels[qid]
    fingerprint = _fingerprint(corpus_file(root), root / "queries.jsonl", qrels_file)
    return Collection(root, split, corpus, queries, qrels, fingerprint)
