"""Documents where users keep them, streamed: the source protocol, the BEIR corpus file, a screen and a sampler.

A document source is any iterable of :class:`SourceDocument` (document id, title, text), with a ``name`` that
messages show. A record it cannot read as a document (a line that is not JSON, a node without text) comes as an
:class:`Unreadable`, which the sampler counts and reports: one bad record never stops the others.

On the command line a source is ``SCHEME:PATH``. ``beir`` is the core's own (:class:`BeirDocuments`, a BEIR
``corpus.jsonl`` read line by line); the plugins register theirs in the entry-point group :data:`ENTRY_POINTS`
(``llamaindex``: a persisted index folder; ``haystack``: a saved ``InMemoryDocumentStore``), each a callable
``(path: str) -> DocumentSource``, so the core names them without importing a plugin.

:func:`sample_documents` reads a source once and keeps a uniform random sample (a reservoir): memory holds the
sample, plus 8 bytes per document for the duplicate-id check, however large the source.
"""

from __future__ import annotations

import array
import logging
import random
import re
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, Callable, Protocol, Union, runtime_checkable

from ..common.errors import ConfigError, DataError
from ..common.fields import bounded_repr
from ..common.plugins import load_entry_point
from .data import check_id, corpus_file, json_line

logger = logging.getLogger(__name__)

ENTRY_POINTS = "deepretrieval.document_sources"
SCHEMES = {
    "beir": "a BEIR collection folder or its corpus.jsonl",
    "llamaindex": "a folder written by StorageContext.persist or BM25Retriever.persist",
    "haystack": "a JSON file written by InMemoryDocumentStore.save_to_disk",
}
REPEATED_ID = "an id that occurs more than once"
ID_PROBLEM = "a missing id, or one a qrels file cannot hold"
MIN_WORDS = 8  # fewer words leave nothing to crop a query from, and nothing for a model to summarize
MAX_CHARS = 1000  # what a pseudo-query is written from: a document's first ~200 words (a 1 MB document too)
MAX_LINE_BYTES = 16 << 20  # a longer JSONL line is skipped unread (counted), not held in memory
_WORD = re.compile(r"\w+")
_LETTER = re.compile(r"[^\W\d_]")
_BINARY = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffd\ud800-\udfff]")  # controls, U+FFFD, lone surrogates


@dataclass(frozen=True)
class SourceDocument:
    """One document: its id (what the retriever returns for it), ``title`` (may be empty) and ``text``, the body
    without the title."""

    doc_id: str
    title: str = ""
    text: str = ""

    @classmethod
    def of(cls, doc_id: Any, content: str | None, title: str | None = "") -> SourceDocument:
        """A document from the content an index holds, which may begin with the title (the BEIR loaders of both
        plugins index ``title + " " + text``): the body is what follows the title."""
        title = (title or "").strip()
        body = (content or "").strip()
        if title and body.startswith(title):
            body = body[len(title):].lstrip()
        return cls(str(doc_id), title, body)

    @property
    def content(self) -> str:
        """Title and body, as a query is written from them."""
        return f"{self.title} {self.text}".strip()


@dataclass(frozen=True)
class Unreadable:
    """A record a source could not read as a document: ``reason`` (a short phrase, counted) and ``where`` (file and
    line, or the record's id)."""

    reason: str
    where: str


@runtime_checkable
class DocumentSource(Protocol):
    """An iterable of documents with a ``name`` for messages (``beir:PATH``). ``ids_unique`` (default True): each
    document has its own id, so a repeated id is a defect; False where several passages share their document's id
    (LlamaIndex chunks)."""

    name: str

    def __iter__(self) -> Iterator[SourceDocument | Unreadable]: ...


class IterableDocuments:
    """Any iterable of :class:`SourceDocument` or ``(doc_id, title, text)`` tuples as a :class:`DocumentSource`."""

    def __init__(self, documents: Iterable[Any], *, name: str = "documents", ids_unique: bool = True) -> None:
        if isinstance(documents, (str, bytes)):
            raise TypeError(f"documents={bounded_repr(documents)} is text: pass a DocumentSource, 'beir:PATH' to "
                            "open_documents, or an iterable of (doc_id, title, text)")
        self.documents = documents
        self.name = name
        self.ids_unique = ids_unique

    def __iter__(self) -> Iterator[SourceDocument | Unreadable]:
        for number, item in enumerate(self.documents, start=1):
            if isinstance(item, (SourceDocument, Unreadable)):
                yield item
            elif isinstance(item, (tuple, list)) and len(item) == 3:
                doc_id, title, text = item
                if not isinstance(title, (str, type(None))) or not isinstance(text, (str, type(None))):
                    yield Unreadable("title or text is not text", f"{self.name} item {number}")
                else:
                    yield SourceDocument.of(doc_id, text, title)
            else:
                raise TypeError(f"{self.name} item {number} is a {type(item).__name__}: give SourceDocument objects "
                                "or (doc_id, title, text) tuples")


class BeirDocuments:
    """The documents of a BEIR ``corpus.jsonl`` (a collection folder or the file itself), read line by line."""

    ids_unique = True

    def __init__(self, path: str | Path) -> None:
        path = Path(path).expanduser()
        self.file = path if path.is_file() else corpus_file(path)  # a DataError naming the fix when neither
        self.root = self.file.parent
        self.name = f"beir:{path}"

    def __iter__(self) -> Iterator[SourceDocument | Unreadable]:
        with self.file.open("rb") as handle:
            number = 0
            while True:
                raw = handle.readline(MAX_LINE_BYTES + 1)
                if not raw:
                    return
                number += 1
                where = f"{self.file}:{number}"
                if len(raw) > MAX_LINE_BYTES and not raw.endswith(b"\n"):
                    while raw and not raw.endswith(b"\n"):  # skip the rest of the line without holding it
                        raw = handle.readline(MAX_LINE_BYTES)
                    yield Unreadable(f"a line over {MAX_LINE_BYTES >> 20} MB", where)
                    continue
                if raw.strip():
                    yield self._document(raw, where, number)

    def _document(self, raw: bytes, where: str, number: int) -> SourceDocument | Unreadable:
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError:
            return Unreadable("not UTF-8", where)
        try:
            row = json_line(self.file, number, line, shape="a JSON object", used=("_id", "title", "text"))
        except DataError:
            return Unreadable("not JSON", where)
        if not isinstance(row, dict):
            return Unreadable("not a JSON object", where)
        try:
            doc_id = check_id(row.get("_id"), where)
        except DataError:
            return Unreadable(ID_PROBLEM, where)
        title, text = row.get("title"), row.get("text")
        if not isinstance(title, (str, type(None))) or not isinstance(text, (str, type(None))):
            return Unreadable("title or text is not text", where)
        return SourceDocument(doc_id, (title or "").strip(), (text or "").strip())


def open_documents(spec: str | DocumentSource | Iterable[Any]) -> DocumentSource:
    """The source ``spec`` names: ``beir:PATH``, or ``SCHEME:PATH`` for a scheme a plugin registers in
    :data:`ENTRY_POINTS`. A :class:`DocumentSource` or an iterable of documents is returned as a source."""
    if isinstance(spec, Path):
        raise ConfigError(f"documents={str(spec)!r} is a path: name the store as SCHEME:PATH, e.g. beir:{spec}")
    if not isinstance(spec, str):
        return spec if isinstance(spec, DocumentSource) else IterableDocuments(spec)
    scheme, sep, path = spec.partition(":")
    if not sep or not path.strip() or not scheme:
        raise ConfigError(f"documents={bounded_repr(spec)}: name the store as SCHEME:PATH, one of "
                          + "; ".join(f"{name}:PATH ({what})" for name, what in SCHEMES.items()))
    if not Path(path).expanduser().exists():
        raise ConfigError(f"documents={bounded_repr(spec)}: {path} does not exist; fix the path")
    if scheme == "beir":
        return BeirDocuments(path)
    return document_source_builder(scheme)(path)


def document_source_builder(scheme: str) -> Callable[[str], DocumentSource]:
    """The ``(path) -> DocumentSource`` callable a plugin registers for ``scheme``, loaded."""
    builder = load_entry_point(ENTRY_POINTS, scheme, f"documents {scheme}:PATH")
    if builder is None:
        known = sorted({"beir", *(entry.name for entry in entry_points(group=ENTRY_POINTS))})
        raise ConfigError(f"documents scheme {scheme!r}: no package registers it (entry-point group {ENTRY_POINTS!r}; "
                          f"known: {known}); reinstall deepretrieval (pip install -e '.[{scheme}]')")
    return builder


def screen(document: SourceDocument, *, min_words: int = MIN_WORDS, max_chars: int = MAX_CHARS
           ) -> tuple[SourceDocument | None, str | None]:
    """``(document, None)`` when a query can be written from it, its body cut to ``max_chars`` at a word boundary
    (``"cut"`` said as the second value); else ``(None, reason)``: an id that cannot go into a qrels file, binary
    junk (control characters, U+FFFD, or under 30% letters in its first characters), or fewer than ``min_words``
    words."""
    try:
        check_id(document.doc_id, "id")
    except DataError:
        return None, ID_PROBLEM
    content = document.content
    head = content[: 2 * max_chars]
    if head and (len(_BINARY.findall(head)) > 0.01 * len(head)
                 or len(_LETTER.findall(head)) < 0.3 * (len(head) - head.count(" "))):
        return None, "binary or not text"
    if len(_WORD.findall(content[: 40 * min_words + 200])) < min_words:
        return None, f"fewer than {min_words} words"
    if len(content) <= max_chars:
        return document, None
    room = max(max_chars - len(document.title) - 1, max_chars // 2)
    cut = document.text[:room]
    cut = cut[: cut.rfind(" ")] if " " in cut[room // 2:] else cut
    return SourceDocument(document.doc_id, document.title[:max_chars], cut), "cut"


@dataclass
class DocumentSample:
    """What :func:`sample_documents` read and kept."""

    source: str
    documents: list[SourceDocument]
    read: int = 0  # records the source gave
    usable: int = 0  # documents that passed the screen (what was sampled from)
    skipped: Counter = field(default_factory=Counter)  # reason -> records left out
    examples: dict[str, str] = field(default_factory=dict)  # reason -> the first record left out for it
    cut: int = 0  # sampled documents longer than max_chars, cut to it
    seconds: float = 0.0

    def report(self) -> dict[str, Any]:
        return {"source": self.source, "read": self.read, "usable": self.usable, "sampled": len(self.documents),
                "cut_to_max_chars": self.cut, "skipped": dict(self.skipped), "skipped_examples": self.examples,
                "seconds": round(self.seconds, 2)}


def sample_documents(source: DocumentSource | str | Iterable[Any], size: int, *, seed: int = 0,
                     min_words: int = MIN_WORDS, max_chars: int = MAX_CHARS, progress: bool = False) -> DocumentSample:
    """A uniform random sample of ``size`` usable documents of ``source`` (all of them when it has fewer), read in
    one pass (reservoir sampling), in the order the source gave them. Documents the screen refuses, and in a source
    whose ids are unique every document whose id occurs more than once (which of them would a qrel judge?), are
    left out and counted. An empty source, or one with no usable document, is a :class:`DataError` naming it."""
    from tqdm.auto import tqdm

    if not isinstance(size, int) or isinstance(size, bool) or size < 1:
        raise ConfigError(f"sample={bounded_repr(size)} must be a positive number of documents")
    source = open_documents(source)
    rng = random.Random(seed)
    reservoir: list[tuple[int, SourceDocument, bool]] = []
    result = DocumentSample(source.name, [])
    unique = getattr(source, "ids_unique", True)
    hashes = array.array("Q")
    start = time.perf_counter()
    for item in tqdm(source, desc=f"reading {source.name}", unit=" docs", disable=not progress, mininterval=1.0):
        result.read += 1
        document, reason = screen(item, min_words=min_words, max_chars=max_chars) if isinstance(
            item, SourceDocument) else (None, getattr(item, "reason", "unreadable"))
        if unique and isinstance(item, SourceDocument):
            hashes.append(hash(item.doc_id) & 0xFFFF_FFFF_FFFF_FFFF)
        if document is None:
            result.skipped[reason] += 1
            result.examples.setdefault(reason, item.where if isinstance(item, Unreadable) else
                                       f"document {bounded_repr(item.doc_id, 60)}")
            continue
        result.usable += 1
        entry = (result.usable, document, reason == "cut")
        if len(reservoir) < size:
            reservoir.append(entry)
        else:
            slot = rng.randrange(result.usable)
            if slot < size:
                reservoir[slot] = entry
    result.seconds = time.perf_counter() - start
    reservoir.sort(key=lambda entry: entry[0])
    repeated = _repeated(hashes) if unique else set()
    for _, document, cut in reservoir:
        if repeated and hash(document.doc_id) & 0xFFFF_FFFF_FFFF_FFFF in repeated:
            result.skipped[REPEATED_ID] += 1
            result.examples.setdefault(REPEATED_ID, f"document {bounded_repr(document.doc_id, 60)}")
            continue
        result.documents.append(document)
        result.cut += cut
    _check_sample(result)
    return result


def _repeated(hashes: array.array) -> set[int]:
    """The id hashes that occur more than once (64-bit: a false repeat among a billion ids is ~3 in 100,000)."""
    import numpy as np

    if len(hashes) < 2:
        return set()
    values = np.sort(np.frombuffer(hashes, dtype=np.uint64))
    return {int(v) for v in values[1:][values[1:] == values[:-1]]}


def _check_sample(sample: DocumentSample) -> None:
    if sample.read == 0:
        raise DataError(f"{sample.source}: holds no documents; index your documents first, or name the store that "
                        f"holds them ({', '.join(f'{k}:PATH' for k in SCHEMES)})")
    if not sample.documents:
        reasons = "; ".join(f"{count} {reason} (first: {sample.examples.get(reason)})"
                            for reason, count in sample.skipped.most_common())
        raise DataError(f"{sample.source}: none of its {sample.read} records can be made into a query: {reasons}. "
                        "Give documents of words of text, each with its own id")
    if sample.skipped:
        logger.info("%s: left out %s", sample.source, dict(sample.skipped))


Documents = Union[DocumentSource, str, Iterable[Any]]
