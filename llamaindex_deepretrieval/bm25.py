"""BM25Retriever over a BEIR corpus, and a persist/load pair that keeps the tokenizer settings.

``BM25Retriever.persist`` saves the index and ``similarity_top_k`` but not the stemmer, the stop-word language or
the token pattern; ``from_persist_dir`` then silently uses its defaults. :func:`persist_bm25` writes them beside the
index (``deepretrieval_bm25.json``) and :func:`load_bm25` reads them back.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

from llama_index.core.schema import MetadataMode, TextNode

SETTINGS_FILE = "deepretrieval_bm25.json"
DEFAULT_TOKEN_PATTERN = r"(?u)\b\w\w+\b"


def beir_nodes(path: str | Path) -> list[TextNode]:
    """One node per BEIR document: ``id_`` = the document id, text = title + text, and the title also in
    ``metadata["title"]`` (for the first-pass documents of feedback), excluded from the embedded and LLM text so
    that what a retriever indexes is title + text alone."""
    from deepretrieval_trainer.retrieval.data import load_corpus

    corpus = load_corpus(path)
    return [TextNode(id_=doc_id, text=f"{doc['title']} {doc['text']}".strip(), metadata={"title": doc["title"]},
                     excluded_embed_metadata_keys=["title"], excluded_llm_metadata_keys=["title"])
            for doc_id, doc in corpus.items()]


def _stemmer(name: Optional[str]):
    import Stemmer

    if name is None:
        return None
    if name not in Stemmer.algorithms():
        raise ValueError(f"stemmer={name!r} is not a PyStemmer algorithm; choose one of {Stemmer.algorithms()} or None")
    return Stemmer.Stemmer(name)


def build_bm25(nodes: list[TextNode], *, k1: Optional[float] = None, b: Optional[float] = None,
               stemmer: Optional[str] = "english", language: Optional[str] = "en", similarity_top_k: int = 10):
    """A ``BM25Retriever`` over ``nodes``; with ``k1``/``b`` the bm25s index is built here with the same
    tokenization BM25Retriever uses (it has no ``k1``/``b`` arguments)."""
    import bm25s
    from llama_index.core.vector_stores.utils import node_to_metadata_dict
    from llama_index.retrievers.bm25 import BM25Retriever

    stem = _stemmer(stemmer)
    common = {"stemmer": stem, "skip_stemming": stem is None, "similarity_top_k": similarity_top_k}
    if k1 is None and b is None:
        return BM25Retriever(nodes=nodes, language=language, **common)
    index = bm25s.BM25(**{name: value for name, value in (("k1", k1), ("b", b)) if value is not None})
    tokens = bm25s.tokenize([node.get_content(metadata_mode=MetadataMode.EMBED) for node in nodes], stopwords=language,
                            stemmer=stem, token_pattern=DEFAULT_TOKEN_PATTERN, show_progress=False)
    index.index(tokens, show_progress=False)
    index.corpus = [node_to_metadata_dict(node) | {"node_id": node.node_id} for node in nodes]
    return BM25Retriever(existing_bm25=index, **common)


def build_beir_bm25(path: str | Path, **settings: Any):
    """:func:`build_bm25` over :func:`beir_nodes` of a BEIR collection folder."""
    return build_bm25(beir_nodes(path), **settings)


def persist_bm25(retriever, persist_dir: str | Path, *, stemmer: Optional[str] = "english") -> None:
    """``retriever.persist(persist_dir)`` plus its tokenizer settings. ``stemmer`` must name the PyStemmer
    algorithm the retriever was built with (a PyStemmer object does not know its own name); it is ignored
    when the retriever skips stemming."""
    root = Path(persist_dir)
    root.mkdir(parents=True, exist_ok=True)
    retriever.persist(str(root))
    settings = {"stemmer": None if retriever.skip_stemming else stemmer, "token_pattern": retriever.token_pattern}
    (root / SETTINGS_FILE).write_text(json.dumps(settings, indent=2), encoding="utf-8")


def load_bm25(persist_dir: str | Path, *, stemmer: Optional[str] = "english"):
    """A persisted ``BM25Retriever``; the settings file written by :func:`persist_bm25` wins over ``stemmer``."""
    import bm25s
    from llama_index.retrievers.bm25 import BM25Retriever

    root = Path(persist_dir)
    args = json.loads((root / "retriever.json").read_text(encoding="utf-8"))
    settings_file = root / SETTINGS_FILE
    settings = json.loads(settings_file.read_text(encoding="utf-8")) if settings_file.is_file() else {}
    stem = _stemmer(settings.get("stemmer", stemmer))
    index = bm25s.BM25.load(str(root), load_corpus=True)
    return BM25Retriever(existing_bm25=index, stemmer=stem, skip_stemming=stem is None,
                         token_pattern=settings.get("token_pattern", DEFAULT_TOKEN_PATTERN), **args)
