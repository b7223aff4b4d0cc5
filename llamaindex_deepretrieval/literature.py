"""Literature engines (embedded FTS5, PubMed, ClinicalTrials.gov) as a LlamaIndex retriever.

``LiteratureRetriever(engine=FTS5Search.from_path(...))`` answers a Boolean query with up to ``top_k`` nodes:
the node id is the engine's id (corpus id, PMID or NCT id, also in ``metadata``), the text is title + abstract
where the engine holds it (the embedded one; the HTTP engines return ids only), the score is ``1 / (rank + 1)``.
An optional ``dates`` window limits the HTTP engines to a publication-date range.
"""

from __future__ import annotations

from typing import List, Optional

from llama_index.core.base.base_retriever import BaseRetriever
from llama_index.core.callbacks.base import CallbackManager
from llama_index.core.schema import NodeWithScore, QueryBundle, TextNode

from deepretrieval_trainer.literature.engines import Hit, engine_name, hits, id_key
from deepretrieval_trainer.retrieval.dates import DateRange, asearch_with_dates, search_with_dates
from deepretrieval_trainer.retrieval.search import SearchBackend, check_k


class LiteratureRetriever(BaseRetriever):
    """A literature engine (any SearchBackend, e.g. ``FTS5Search``, ``PubMedSearch``) as a ``BaseRetriever``."""

    def __init__(self, *, engine: SearchBackend, top_k: int = 100, dates: DateRange | None = None,
                 callback_manager: Optional[CallbackManager] = None, verbose: bool = False) -> None:
        if not callable(getattr(engine, "search", None)):
            raise TypeError(f"engine={engine!r} has no search(queries, k): pass FTS5Search, PubMedSearch or "
                            "ClinicalTrialsSearch")
        self.engine, self.top_k, self.dates = engine, check_k(top_k), dates
        super().__init__(callback_manager=callback_manager, verbose=verbose)

    def _retrieve(self, query_bundle: QueryBundle) -> List[NodeWithScore]:
        ids = search_with_dates(self.engine, [query_bundle.query_str], self.top_k, self._dates())[0]
        return self._nodes(hits(self.engine, ids))

    async def _aretrieve(self, query_bundle: QueryBundle) -> List[NodeWithScore]:
        ids = (await asearch_with_dates(self.engine, [query_bundle.query_str], self.top_k, self._dates()))[0]
        return self._nodes(hits(self.engine, ids))

    def _dates(self) -> list[DateRange | None] | None:
        return [self.dates] if self.dates is not None else None

    def _nodes(self, found: list[Hit]) -> List[NodeWithScore]:
        source, key = engine_name(self.engine), id_key(self.engine)
        return [NodeWithScore(node=TextNode(id_=hit.id, text=hit.content,
                                            metadata={key: hit.id, "source": source, "rank": hit.rank}),
                              score=hit.score) for hit in found]
