"""``LiteratureSearchRetriever``: the literature engines (embedded FTS5, PubMed, ClinicalTrials.gov) as a Haystack
component.

It takes a Boolean ``query`` (e.g. from ``DeepRetrievalQueryRewriter`` with ``task="literature"``) and returns
``documents``: the id is the engine's id (corpus id, PMID or NCT id, also in ``meta``), the content is title +
abstract where the engine holds it (the embedded one; the HTTP engines return ids only), the score is
``1 / (rank + 1)``. ``mindate``/``maxdate`` limit the HTTP engines to a publication-date window. Every init
parameter serializes; the NCBI API key only as its environment-variable form.
"""

from __future__ import annotations

from typing import Any

from haystack import Document, component, default_from_dict, default_to_dict
from haystack.utils import Secret, deserialize_secrets_inplace

from deepretrieval_trainer.common.fields import check_arguments
from deepretrieval_trainer.literature.engines import ENGINES, EngineName, build_engine, hits, id_key
from deepretrieval_trainer.retrieval.dates import DateRange, asearch_with_dates, search_with_dates
from deepretrieval_trainer.retrieval.search import check_k

from .serialization import refuse_clear_secrets


@component
class LiteratureSearchRetriever:
    """Searches ``engine`` (``"fts5"`` over ``collection``, ``"pubmed"``, ``"ctgov"``) for up to ``top_k`` ids.

    ``base_url`` points the HTTP engines elsewhere (a mirror or a test server); ``api_key``/``email`` are PubMed's.
    The engine is built in :meth:`warm_up` (the FTS5 index is built once and cached on disk).
    """

    def __init__(self, *, engine: EngineName = "fts5", collection: str | None = None, top_k: int = 100,
                 base_url: str | None = None,
                 api_key: Secret | None = Secret.from_env_var("NCBI_API_KEY", strict=False),  # noqa: B008
                 email: str | None = None, timeout: float = 30.0, max_retries: int = 4) -> None:
        check_arguments(LiteratureSearchRetriever.__init__, {k: v for k, v in locals().items() if k != "self"})
        if engine not in ENGINES:
            raise ValueError(f"engine={engine!r}: choose one of {list(ENGINES)}")
        if engine == "fts5" and not collection:
            raise ValueError("engine='fts5' needs collection: a BEIR collection folder (corpus.jsonl) to index")
        self.engine, self.collection, self.top_k = engine, collection, check_k(top_k)
        self.base_url, self.api_key, self.email = base_url, api_key, email
        self.timeout, self.max_retries = timeout, max_retries
        self._engine = None

    def warm_up(self) -> None:
        if self._engine is None:
            key = self.api_key.resolve_value() if self.api_key is not None else ""
            self._engine = build_engine(self.engine, collection=self.collection, base_url=self.base_url,
                                        api_key=key or "", email=self.email, timeout_s=self.timeout,
                                        max_retries=self.max_retries)

    @component.output_types(documents=list[Document])
    def run(self, query: str, top_k: int | None = None, mindate: str | None = None,
            maxdate: str | None = None) -> dict[str, Any]:
        self.warm_up()
        k, dates = self._arguments(top_k, mindate, maxdate)
        return self._outputs(search_with_dates(self._engine, [query], k, dates)[0])

    @component.output_types(documents=list[Document])
    async def run_async(self, query: str, top_k: int | None = None, mindate: str | None = None,
                        maxdate: str | None = None) -> dict[str, Any]:
        self.warm_up()
        k, dates = self._arguments(top_k, mindate, maxdate)
        return self._outputs((await asearch_with_dates(self._engine, [query], k, dates))[0])

    def _arguments(self, top_k: int | None, mindate: str | None, maxdate: str | None):
        dates = [DateRange(mindate, maxdate)] if mindate or maxdate else None
        return check_k(top_k if top_k is not None else self.top_k), dates

    def _outputs(self, ids: list[str]) -> dict[str, Any]:
        key = id_key(self._engine)
        documents = [Document(id=hit.id, content=hit.content or None, score=hit.score,
                              meta={key: hit.id, "source": self.engine, "rank": hit.rank})
                     for hit in hits(self._engine, ids)]
        return {"documents": documents}

    def to_dict(self) -> dict[str, Any]:
        return default_to_dict(
            self, engine=self.engine, collection=self.collection, top_k=self.top_k, base_url=self.base_url,
            api_key=self.api_key.to_dict() if self.api_key is not None else None, email=self.email,
            timeout=self.timeout, max_retries=self.max_retries,
        )

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LiteratureSearchRetriever:
        refuse_clear_secrets(data, ["api_key"])
        data = {**data, "init_parameters": dict(data.get("init_parameters", {}))}
        deserialize_secrets_inplace(data["init_parameters"], keys=["api_key"])
        return default_from_dict(cls, data)
