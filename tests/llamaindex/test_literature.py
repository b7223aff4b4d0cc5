"""The literature engines as a real LlamaIndex BaseRetriever: embedded FTS5 over MEDLINE, PubMed on a loopback
server (the live service is unreachable here), and the rewrite -> Boolean search deployment path."""

from __future__ import annotations

import pytest
from llama_index.core.base.base_retriever import BaseRetriever

from deepretrieval_trainer.literature.boolean import BooleanQueryError
from deepretrieval_trainer.literature.fts5 import FTS5Search
from deepretrieval_trainer.literature.http import HttpPolicy
from deepretrieval_trainer.literature.pubmed import PubMedSearch
from deepretrieval_trainer.retrieval.dates import DateRange
from llamaindex_deepretrieval import DeepRetrievalRetriever
from llamaindex_deepretrieval.literature import LiteratureRetriever
from tests.conftest import ScriptedRewriter, collection_path
from tests.trainer.literature.loopback import Loopback, fake_esearch, pubmed_ids


@pytest.fixture(scope="module")
def medline(tmp_path_factory):
    return FTS5Search.from_path(collection_path("medline"), index_path=tmp_path_factory.mktemp("fts") / "m.sqlite")


def test_fts5_nodes_carry_ids_text_and_rank_scores(medline):
    retriever = LiteratureRetriever(engine=medline, top_k=7)
    assert isinstance(retriever, BaseRetriever)
    nodes = retriever.retrieve('"crystalline lens" OR cataract*')
    assert [n.node.node_id for n in nodes] == medline.search(['"crystalline lens" OR cataract*'], 7)[0]
    assert [n.score for n in nodes] == [1 / (rank + 1) for rank in range(7)]
    assert nodes[0].node.metadata == {"doc_id": nodes[0].node.node_id, "source": "fts5", "rank": 0}
    assert "lens" in nodes[0].node.get_content().lower()


async def test_async_retrieve_matches_and_malformed_queries_raise(medline):
    retriever = LiteratureRetriever(engine=medline, top_k=5)
    assert [n.node.node_id for n in await retriever.aretrieve("lens AND protein")] == \
        [n.node.node_id for n in retriever.retrieve("lens AND protein")]
    with pytest.raises(BooleanQueryError, match="no right-hand operand"):
        retriever.retrieve("lens AND")


def test_pubmed_retriever_sends_the_date_window():
    ids = pubmed_ids(12)
    with Loopback(fake_esearch(ids)) as server:
        engine = PubMedSearch(base_url=server.url, api_key="", policy=HttpPolicy(requests_per_second=100))
        retriever = LiteratureRetriever(engine=engine, top_k=10, dates=DateRange.before("2018"))
        nodes = retriever.retrieve("aspirin[tiab] AND stroke[tiab]")
    assert [n.node.node_id for n in nodes] == ids[:10]
    assert nodes[3].node.metadata == {"pmid": ids[3], "source": "pubmed", "rank": 3}
    assert (server.requests[0].params["maxdate"], server.requests[0].params["datetype"]) == ("2018", "pdat")


def test_rewriter_then_boolean_search(medline):
    rewriter = ScriptedRewriter('</think>\n<answer>{"query": "(crystalline[tiab] OR cataract) AND lens"}</answer>',
                                task="literature", strict=True)
    retriever = DeepRetrievalRetriever(LiteratureRetriever(engine=medline, top_k=20), rewriter=rewriter,
                                       task="literature")
    nodes = retriever.retrieve("the crystalline lens in vertebrates")
    assert [n.node.node_id for n in nodes] == medline.search(["(crystalline[tiab] OR cataract) AND lens"], 20)[0]
    assert rewriter.calls  # the rewrite, not the raw text, reached the engine
