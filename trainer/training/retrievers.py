"""The host retriever a :class:`~.config.RetrieverConfig` names, built for the CLI's train, eval and demo.

The plugin packages implement the retrievers of their frameworks and depend on this core, so the core finds them the
way Python finds plugins: through the entry points of the group :data:`ENTRY_POINTS` (``pyproject.toml`` registers
``llamaindex`` and ``haystack``), never by importing them. Each entry point is a callable
``(retriever: RetrieverConfig, path: str) -> SearchBackend``. ``bm25s``, the core's own BM25, needs no plugin.
"""

from __future__ import annotations

from typing import Callable

from ..common.errors import ConfigError
from ..common.plugins import load_entry_point
from ..retrieval.search import SearchBackend
from .config import RetrieverConfig

ENTRY_POINTS = "deepretrieval.search_backends"

Builder = Callable[[RetrieverConfig, str], SearchBackend]


def build_search(retriever: RetrieverConfig, data_path: str) -> SearchBackend:
    """The SearchBackend ``retriever`` names: BM25 over the BEIR corpus in ``retriever.path`` (default ``data_path``),
    or the persisted LlamaIndex storage / Haystack pipeline YAML that ``retriever.path`` names."""
    path = retriever.path or data_path
    if not path:
        raise ConfigError(f"retriever.framework={retriever.framework!r}, kind={retriever.kind!r} has nothing to index: "
                          "give data.path (a BEIR collection folder) or retriever.path")
    builder = _bm25s if retriever.framework == "bm25s" else plugin_builder(retriever.framework)
    return builder(retriever, path)


def plugin_builder(framework: str) -> Builder:
    """The builder the plugin package of ``framework`` registers, loaded (which imports the framework)."""
    builder = load_entry_point(ENTRY_POINTS, framework, f"retriever.framework={framework!r}")
    if builder is None:
        raise ConfigError(f"retriever.framework={framework!r}: no package registers a search backend for it (entry "
                          f"point group {ENTRY_POINTS!r}); reinstall deepretrieval (pip install -e '.[{framework}]')")
    return builder


def _bm25s(retriever: RetrieverConfig, path: str) -> SearchBackend:
    from ..retrieval.bm25 import BM25Search
    from ..retrieval.data import load_corpus

    return BM25Search(load_corpus(path))
