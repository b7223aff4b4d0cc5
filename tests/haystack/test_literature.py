"""The literature engines as a real Haystack component: FTS5 over MEDLINE in a Pipeline after the rewriter,
PubMed / ClinicalTrials.gov on a loopback server (the live services are unreachable here), YAML round trip."""

from __future__ import annotations

import pytest
from haystack import Document, Pipeline

from deepretrieval_trainer.literature.fts5 import FTS5Search
from haystack_deepretrieval.component import DeepRetrievalQueryRewriter
from haystack_deepretrieval.literature import LiteratureSearchRetriever
from tests.conftest import ScriptedRewriter, collection_path
from tests.trainer.literature.loopback import Loopback, fake_esearch, fake_studies, nct_ids, pubmed_ids

MEDLINE = str(collection_path("medline"))


def test_fts5_in_a_pipeline_after_the_rewriter():
    rewriter = ScriptedRewriter('</think>\n<answer>{"query": "\\"crystalline lens\\" OR cataract*"}</answer>',
                                task="literature", strict=True)
    pipeline = Pipeline()
    pipeline.add_component("rewriter", DeepRetrievalQueryRewriter.from_rewriter(rewriter))
    pipeline.add_component("search", LiteratureSearchRetriever(engine="fts5", collection=MEDLINE, top_k=8))
    pipeline.connect("rewriter.query", "search.query")
    documents = pipeline.run({"rewriter": {"query": "the crystalline lens"}})["search"]["documents"]
    expected = FTS5Search.from_path(MEDLINE).search(['"crystalline lens" OR cataract*'], 8)[0]
    assert [d.id for d in documents] == expected
    assert all(isinstance(d, Document) and d.meta["source"] == "fts5" for d in documents)
    assert documents[0].score == 1.0 and "lens" in documents[0].content.lower()


async def test_pubmed_component_with_a_date_window_sync_and_async(monkeypatch):
    monkeypatch.setenv("NCBI_API_KEY", "from-env")
    ids = pubmed_ids(30)
    with Loopback(fake_esearch(ids)) as server:
        search = LiteratureSearchRetriever(engine="pubmed", base_url=server.url, top_k=5, max_retries=1)
        documents = search.run("aspirin AND stroke", mindate="2001", maxdate="2010/06")["documents"]
        later = (await search.run_async("aspirin", top_k=3))["documents"]
    assert [d.id for d in documents] == ids[:5] and documents[0].meta["pmid"] == ids[0]
    assert [d.id for d in later] == ids[:3]
    first = server.requests[0].params
    assert (first["mindate"], first["maxdate"], first["api_key"]) == ("2001", "2010/06", "from-env")
    assert "mindate" not in server.requests[1].params


def test_ctgov_component_returns_nct_ids():
    ids = nct_ids(4)
    with Loopback(fake_studies(ids)) as server:
        documents = LiteratureSearchRetriever(engine="ctgov", base_url=server.url).run("apixaban")["documents"]
    assert [d.id for d in documents] == ids and documents[0].meta == {"nct_id": ids[0], "source": "ctgov", "rank": 0}


def test_yaml_round_trip_keeps_every_parameter_and_no_secret():
    component = LiteratureSearchRetriever(engine="pubmed", top_k=250, base_url="http://127.0.0.1:9/",
                                          email="me@example.org", timeout=7.5, max_retries=2)
    pipeline = Pipeline()
    pipeline.add_component("search", component)
    text = pipeline.dumps()
    assert "NCBI_API_KEY" in text and "from-env" not in text
    loaded = Pipeline.loads(text).get_component("search")
    assert loaded.to_dict() == component.to_dict()
    params = loaded.to_dict()["init_parameters"]
    assert params == {"engine": "pubmed", "collection": None, "top_k": 250, "base_url": "http://127.0.0.1:9/",
                      "api_key": {"type": "env_var", "env_vars": ["NCBI_API_KEY"], "strict": False},
                      "email": "me@example.org", "timeout": 7.5, "max_retries": 2}


def test_bad_parameters_say_what_to_fix():
    with pytest.raises(ValueError, match="needs collection"):
        LiteratureSearchRetriever(engine="fts5")
    with pytest.raises(ValueError, match="choose one of"):
        LiteratureSearchRetriever(engine="scopus")
