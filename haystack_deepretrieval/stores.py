"""A Haystack document store's documents as a core document source (``--documents haystack:PATH``).

- :class:`SavedStoreDocuments`: the JSON file ``InMemoryDocumentStore.save_to_disk(path)`` writes
  (``{"init_parameters": ..., "documents": [Document.to_dict(), ...]}``), parsed incrementally (ijson): one document
  in memory at a time, whatever the file's size (``load_from_disk`` reads it whole).
- :class:`StoreDocuments`: any live ``DocumentStore``. An ``InMemoryDocumentStore`` is walked in place; any other
  store through ``filter_documents(filters)``, which returns its matches as one list (narrow it with ``filters``).

A document's id is what :class:`~haystack_deepretrieval.HaystackSearch` returns for it (``Document.id``, or
``meta[id_meta_key]``), its text ``content`` (a document with only a blob has none), its title ``meta["title"]``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from deepretrieval_trainer.common.errors import DataError
from deepretrieval_trainer.retrieval.documents import SourceDocument, Unreadable

_FIELDS = {"id", "content", "blob", "meta", "score", "embedding", "sparse_embedding"}


class SavedStoreDocuments:
    """The documents of a file written by ``InMemoryDocumentStore.save_to_disk``, streamed."""

    def __init__(self, path: str | Path, *, id_meta_key: str | None = None, title_meta_key: str | None = "title"):
        self.file = Path(path).expanduser()
        self.root = self.file.parent
        self.name = f"haystack:{self.file}"
        self.id_meta_key = id_meta_key
        self.title_meta_key = title_meta_key
        self.ids_unique = id_meta_key is None  # a meta key (a file id) may be shared by a file's chunks
        if not self.file.is_file():
            raise DataError(f"{self.name}: not a file; pass the JSON file InMemoryDocumentStore.save_to_disk(path) "
                            "wrote")

    def __iter__(self) -> Iterator[SourceDocument | Unreadable]:
        try:
            import ijson
        except ImportError as exc:
            raise ImportError("reading a saved document store incrementally needs ijson: pip install "
                              "'deepretrieval[haystack]'") from exc
        count = 0
        with self.file.open("rb") as handle:
            try:
                for row in ijson.items(handle, "documents.item", use_float=True):
                    count += 1
                    yield document_of(row, f"{self.file} document {count}", id_meta_key=self.id_meta_key,
                                      title_meta_key=self.title_meta_key)
            except ijson.JSONError as exc:
                raise DataError(f"{self.name}: not valid JSON after {count} documents ({exc}); save the store again "
                                "with InMemoryDocumentStore.save_to_disk") from None
        if count == 0 and not _has_documents_key(self.file):
            raise DataError(f"{self.name}: no 'documents' list; pass the JSON file that "
                            "InMemoryDocumentStore.save_to_disk(path) wrote")


class StoreDocuments:
    """The documents of a live ``DocumentStore`` (``filters``: passed to ``filter_documents``)."""

    def __init__(self, store: Any, *, filters: dict[str, Any] | None = None, id_meta_key: str | None = None,
                 title_meta_key: str | None = "title") -> None:
        if not callable(getattr(store, "filter_documents", None)):
            raise TypeError(f"store={type(store).__name__} is not a Haystack DocumentStore (no filter_documents); "
                            "pass one, or the path of a store saved with save_to_disk")
        self.store = store
        self.filters = filters
        self.name = f"haystack:{type(store).__name__}"
        self.id_meta_key = id_meta_key
        self.title_meta_key = title_meta_key
        self.ids_unique = id_meta_key is None

    def __iter__(self) -> Iterator[SourceDocument | Unreadable]:
        storage = getattr(self.store, "storage", None)
        in_place = self.filters is None and isinstance(storage, dict)  # InMemoryDocumentStore: no copy of the list
        documents = storage.values() if in_place else self.store.filter_documents(filters=self.filters)
        for number, document in enumerate(documents, start=1):
            row = {"id": document.id, "content": document.content, "meta": document.meta}
            yield document_of(row, f"{self.name} document {number}", id_meta_key=self.id_meta_key,
                              title_meta_key=self.title_meta_key)


def document_of(row: Any, where: str, *, id_meta_key: str | None = None,
                title_meta_key: str | None = "title") -> SourceDocument | Unreadable:
    """A serialized Haystack ``Document`` (``to_dict()``, its meta nested or flattened) as a document, or why not."""
    if not isinstance(row, dict):
        return Unreadable("not a document", where)
    meta = row.get("meta") if isinstance(row.get("meta"), dict) else {k: v for k, v in row.items() if k not in _FIELDS}
    content = row.get("content")
    if not isinstance(content, str) or not content.strip():
        return Unreadable("a document without text content", where)
    doc_id = meta.get(id_meta_key) if id_meta_key is not None else row.get("id")
    if doc_id is None:
        return Unreadable(f"a document without {'meta[' + repr(id_meta_key) + ']' if id_meta_key else 'an id'}", where)
    title = meta.get(title_meta_key) if title_meta_key else None
    return SourceDocument.of(doc_id, content, str(title) if title is not None else "")


def _has_documents_key(file: Path) -> bool:
    import ijson

    with file.open("rb") as handle:
        try:
            return any(prefix == "" and event == "map_key" and value == "documents"
                       for prefix, event, value in ijson.parse(handle))
        except ijson.JSONError:
            return False


def saved_store_documents(path: str) -> SavedStoreDocuments:
    """The entry point of ``haystack`` in the group ``deepretrieval.document_sources``."""
    return SavedStoreDocuments(path)


def load_store(path: str | Path):
    """``InMemoryDocumentStore.load_from_disk(path)``, a failure named with the fix."""
    from haystack.document_stores.in_memory import InMemoryDocumentStore

    file = Path(path).expanduser()
    if not file.is_file():
        raise DataError(f"{file}: no such file; pass the JSON file InMemoryDocumentStore.save_to_disk(path) wrote")
    try:
        return InMemoryDocumentStore.load_from_disk(str(file))
    except Exception as exc:  # noqa: BLE001 - Haystack raises DocumentStoreError, KeyError, TypeError, ...
        raise DataError(f"{file}: not a saved InMemoryDocumentStore ({type(exc).__name__}: "
                        f"{' '.join(str(exc).split())[:300]}); save it with InMemoryDocumentStore.save_to_disk"
                        ) from None

