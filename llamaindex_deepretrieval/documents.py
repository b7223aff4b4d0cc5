"""A LlamaIndex index's own documents as a core document source, streamed (``--documents llamaindex:PATH``).

- A folder written by ``StorageContext.persist``: the nodes of ``docstore.json``, parsed incrementally (ijson), so a
  docstore larger than memory is read one node at a time. Where the docstore holds no node, the node text that a
  vector-store file keeps in its metadata (``_node_content``, as the vector stores that keep text write it). An empty
  docstore beside a vector store that keeps only embeddings (``SimpleVectorStore``) has no text to read: a
  ``DataError`` names the folder and the fix.
- A folder written by ``BM25Retriever.persist``: its ``corpus.jsonl`` (each node's metadata and text), line by line.
- A live index (:func:`index_documents`): the nodes of its docstore, else of its vector store when that keeps text.

Each node is a passage of its document. Its id is the one :class:`~llamaindex_deepretrieval.LlamaIndexSearch`
returns for it (``ref_doc_id``, else the node id, or ``metadata[id_key]``), so passages of one document share an id
(``ids_unique = False``); its title is ``metadata["title"]`` (where the BEIR loader keeps it).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Optional

from deepretrieval_trainer.common.errors import DataError
from deepretrieval_trainer.retrieval.documents import IterableDocuments, SourceDocument, Unreadable

_SOURCE = "1"  # NodeRelationship.SOURCE: the document a node was cut from


class StorageDocuments:
    """The nodes of a persisted LlamaIndex folder (``StorageContext.persist`` or ``BM25Retriever.persist``)."""

    ids_unique = False

    def __init__(self, persist_dir: str | Path, *, id_key: Optional[str] = None,
                 title_key: Optional[str] = "title") -> None:
        self.root = Path(persist_dir).expanduser()
        self.name = f"llamaindex:{self.root}"
        self.id_key = id_key
        self.title_key = title_key
        if not self.root.is_dir():
            raise DataError(f"{self.name}: not a folder; pass the folder StorageContext.persist(persist_dir) or "
                            "BM25Retriever.persist(path) wrote")
        self.bm25 = (self.root / "retriever.json").is_file() and (self.root / "corpus.jsonl").is_file()
        if not ((self.root / "docstore.json").is_file() or self.bm25):
            beir = " (it is a BEIR collection: name it beir:PATH)" if (self.root / "corpus.jsonl").is_file() else ""
            raise DataError(f"{self.name}: neither docstore.json (StorageContext.persist) nor retriever.json and "
                            f"corpus.jsonl (BM25Retriever.persist){beir}; pass a folder written by one of them")

    def __iter__(self) -> Iterator[SourceDocument | Unreadable]:
        if (self.root / "docstore.json").is_file():
            found = yield from self._docstore()
            if not found:
                yield from self._vector_stores()
        else:
            yield from self._bm25_corpus()

    def _docstore(self):
        ijson = _ijson()
        file = self.root / "docstore.json"
        found = 0
        with file.open("rb") as handle:
            try:
                for node_id, entry in ijson.kvitems(handle, "docstore/data", use_float=True):
                    found += 1
                    data = entry.get("__data__") if isinstance(entry, dict) else None
                    if isinstance(data, str):  # older versions stored each node as a JSON string
                        data = _loads(data)
                    yield self._document(data, f"{file} node {node_id}")
            except ijson.JSONError as exc:
                raise DataError(f"{file}: not valid JSON after {found} nodes ({exc}); persist the index again"
                                ) from None
        return found

    def _vector_stores(self):
        ijson = _ijson()
        entries: dict[str, int] = {}
        texts = 0
        for file in sorted(self.root.glob("*vector_store.json")):
            with file.open("rb") as handle:
                try:
                    for node_id, metadata in ijson.kvitems(handle, "metadata_dict", use_float=True):
                        entries[file.name] = entries.get(file.name, 0) + 1
                        content = metadata.get("_node_content") if isinstance(metadata, dict) else None
                        data = _loads(content) if isinstance(content, str) else None
                        document = self._document(data, f"{file} node {node_id}")
                        if isinstance(document, SourceDocument):
                            texts += 1
                            yield document
                except ijson.JSONError as exc:
                    raise DataError(f"{file}: not valid JSON ({exc}); persist the index again") from None
        if not texts:
            kept = (" and " + ", ".join(f"{name} keeps only embeddings and metadata for {count} nodes"
                                        for name, count in entries.items()) + ", no text") if entries else ""
            raise DataError(f"{self.name}: docstore.json holds no nodes{kept}, so there is no text to write queries "
                            "from. Persist the index with its docstore (VectorStoreIndex(..., "
                            "store_nodes_override=True), then storage_context.persist), or name the documents "
                            "themselves: beir:PATH, or index_documents(nodes) in Python")

    def _bm25_corpus(self):
        file = self.root / "corpus.jsonl"
        with file.open("rb") as handle:
            for number, raw in enumerate(handle, start=1):
                if not raw.strip():
                    continue
                row = _loads(raw)
                content = row.get("_node_content") if isinstance(row, dict) else None
                data = _loads(content) if isinstance(content, str) else None
                yield self._document(data, f"{file}:{number}")

    def _document(self, data: Any, where: str) -> SourceDocument | Unreadable:
        return node_document(data, where, id_key=self.id_key, title_key=self.title_key)


def node_document(data: Any, where: str, *, id_key: Optional[str] = None,
                  title_key: Optional[str] = "title") -> SourceDocument | Unreadable:
    """A serialized node (``node.to_dict()``: ``id_``, ``text`` or ``text_resource``, ``metadata``,
    ``relationships``) as a document, or why it is not one."""
    if not isinstance(data, dict):
        return Unreadable("not a node", where)
    text = data.get("text")
    if text is None and isinstance(data.get("text_resource"), dict):
        text = data["text_resource"].get("text")
    if not isinstance(text, str) or not text.strip():
        return Unreadable("a node without text", where)
    metadata = data.get("metadata") if isinstance(data.get("metadata"), dict) else {}
    if id_key is not None:
        doc_id = metadata.get(id_key)
        if doc_id is None:
            return Unreadable(f"a node without metadata[{id_key!r}]", where)
    else:
        source = (data.get("relationships") or {}).get(_SOURCE)
        doc_id = (source.get("node_id") if isinstance(source, dict) else None) or data.get("id_")
    if doc_id is None:
        return Unreadable("a node without an id", where)
    title = metadata.get(title_key) if title_key else None
    return SourceDocument.of(doc_id, text, str(title) if title is not None else "")


def storage_documents(path: str) -> StorageDocuments:
    """The entry point of ``llamaindex`` in the group ``deepretrieval.document_sources``."""
    return StorageDocuments(path)


def index_documents(index: Any, *, id_key: Optional[str] = None, title_key: Optional[str] = "title"):
    """The documents of a LlamaIndex index as a core document source: a persisted folder (a path), a live index
    (its docstore's nodes; where that is empty, its vector store's, when it keeps text), or an iterable of nodes."""
    from llama_index.core.indices.base import BaseIndex
    from llama_index.core.schema import BaseNode

    if isinstance(index, (str, Path)):
        return StorageDocuments(index, id_key=id_key, title_key=title_key)
    if isinstance(index, BaseIndex):
        nodes: Iterable[BaseNode] = list(index.docstore.docs.values())
        if not nodes:
            nodes = _vector_store_nodes(index)
        name = f"llamaindex:{type(index).__name__}"
    elif isinstance(index, Iterable):
        nodes, name = index, "llamaindex:nodes"
    else:
        raise TypeError(f"index={type(index).__name__}: pass a persisted folder, a LlamaIndex index or nodes")
    documents = (node_document(node.to_dict() if isinstance(node, BaseNode) else node, f"node {_node_id(node)}",
                               id_key=id_key, title_key=title_key) for node in nodes)
    return IterableDocuments(documents, name=name, ids_unique=False)


def _vector_store_nodes(index: Any) -> list:
    store = getattr(index, "vector_store", None)
    if store is None or not getattr(store, "stores_text", False):
        raise DataError(f"{type(index).__name__}: its docstore holds no nodes and its vector store "
                        f"({type(store).__name__}) keeps no text; build the index with store_nodes_override=True, or "
                        "pass the documents themselves")
    try:
        return list(store.get_nodes())
    except NotImplementedError:
        raise DataError(f"{type(store).__name__} cannot list its nodes (get_nodes); pass the documents themselves: "
                        "index_documents(nodes), or beir:PATH") from None


def _node_id(node: Any) -> str:
    return str(getattr(node, "node_id", None) or (node.get("id_") if isinstance(node, dict) else "?"))


def _loads(text: str | bytes) -> Any:
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        return None


def _ijson():
    try:
        import ijson
    except ImportError as exc:
        raise ImportError("reading a persisted docstore incrementally needs ijson: pip install "
                          "'deepretrieval[llamaindex]'") from exc
    return ijson
