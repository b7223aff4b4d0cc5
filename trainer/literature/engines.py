"""Building an engine by name (what the Haystack component serializes), and the text behind its ids.

``fts5`` needs a BEIR collection folder; ``pubmed`` and ``ctgov`` talk to the live services (or ``base_url``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Union

from .ctgov import CTGOV_URL, ClinicalTrialsSearch
from .fts5 import FTS5Search
from .http import HttpPolicy
from .pubmed import EUTILS_URL, RATE_WITH_KEY, RATE_WITHOUT_KEY, PubMedSearch

EngineName = Literal["fts5", "pubmed", "ctgov"]
ENGINES = ("fts5", "pubmed", "ctgov")
Engine = Union[FTS5Search, PubMedSearch, ClinicalTrialsSearch]
_ID_KEYS = {"fts5": "doc_id", "pubmed": "pmid", "ctgov": "nct_id"}


@dataclass(frozen=True)
class Hit:
    """One result: the engine's id, its 0-based rank, a rank score (1 / (rank + 1)), and text when known."""

    id: str
    rank: int
    title: str = ""
    text: str = ""

    @property
    def score(self) -> float:
        return 1.0 / (self.rank + 1)

    @property
    def content(self) -> str:
        return f"{self.title}\n{self.text}".strip()


def build_engine(engine: EngineName, *, collection: str | None = None, base_url: str | None = None,
                 api_key: str | None = None, email: str | None = None, timeout_s: float = 30.0,
                 max_retries: int = 4) -> Engine:
    """An engine from plain parameters. ``api_key``/``email``: PubMed only (None reads the environment)."""
    if engine == "fts5":
        if not collection:
            raise ValueError("engine='fts5' needs collection: a BEIR collection folder (corpus.jsonl) to index")
        return FTS5Search.from_path(collection)
    if engine == "pubmed":
        key = os.environ.get("NCBI_API_KEY", "") if api_key is None else api_key
        rate = RATE_WITH_KEY if key else RATE_WITHOUT_KEY
        policy = HttpPolicy(requests_per_second=rate, timeout_s=timeout_s, max_retries=max_retries)
        return PubMedSearch(base_url=base_url or EUTILS_URL, api_key=key, email=email, policy=policy)
    if engine == "ctgov":
        policy = HttpPolicy(requests_per_second=ClinicalTrialsSearch.default_rate, timeout_s=timeout_s,
                            max_retries=max_retries)
        return ClinicalTrialsSearch(base_url=base_url or CTGOV_URL, policy=policy)
    raise ValueError(f"engine={engine!r}: choose one of {list(ENGINES)}")


def engine_name(engine: object) -> str:
    for name, cls in (("fts5", FTS5Search), ("pubmed", PubMedSearch), ("ctgov", ClinicalTrialsSearch)):
        if isinstance(engine, cls):
            return name
    return type(engine).__name__


def id_key(engine: object) -> str:
    """The metadata key that names an id of this engine: ``doc_id``, ``pmid`` or ``nct_id``."""
    return _ID_KEYS.get(engine_name(engine), "doc_id")


def hits(engine: object, ids: Sequence[str]) -> list[Hit]:
    """Ranked ids as :class:`Hit` objects, with title and text where the engine holds them (the embedded one)."""
    texts = engine.documents(ids) if isinstance(engine, FTS5Search) else {}
    return [Hit(doc_id, rank, texts.get(doc_id, {}).get("title", ""), texts.get(doc_id, {}).get("text", ""))
            for rank, doc_id in enumerate(ids)]
