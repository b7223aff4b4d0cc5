"""An answer is read decoded only up to its cap, whatever its compression, in every component that reads one.

Each body is a valid answer followed by whitespace (which JSON allows) up to a decoded size far past the cap, so a
client that decodes it whole accepts it. Without the cap the 32 MiB bodies here were accepted as answers (a
rewrite, PubMed ids); the subprocess test shows the memory side: without the cap, a process's peak memory grew by
about twice the decoded size.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest
from deepretrieval_trainer.common.deadline import ACCEPT_ENCODING
from deepretrieval_trainer.literature.ctgov import ClinicalTrialsSearch
from deepretrieval_trainer.literature.http import MAX_RESPONSE_BYTES, HttpPolicy, SearchServiceError
from deepretrieval_trainer.literature.pubmed import PubMedSearch
from deepretrieval_trainer.rewriting.openai_compat import OpenAIRewriter
from llama_index.core.instrumentation import get_dispatcher
from llama_index.core.instrumentation.event_handlers import BaseEventHandler
from llama_index.core.schema import QueryBundle

from tests.trainer.compression import MiB, compressed, encoding_params
from tests.trainer.literature.loopback import Answer, Loopback, fake_esearch, fake_studies, nct_ids, pubmed_ids
from tests.trainer.test_openai_compat import answer, server  # noqa: F401 - the loopback chat server fixture

ROOT = Path(__file__).resolve().parents[2]
BOMB = 32 * MiB  # decoded; far past both default caps (96 KiB for a completion, 4 MiB for a search answer)
CHAT_CAP = OpenAIRewriter("m").config.response_cap
POLICY = {"requests_per_second": 100, "timeout_s": 30.0, "max_retries": 2, "backoff_s": 0.01}


def chat_body(query: str) -> bytes:
    return json.dumps({"choices": [{"index": 0, "message": {"role": "assistant", "content": answer(query)}}]}).encode()


class Events(BaseEventHandler):
    events: list = []

    def handle(self, event, **kwargs) -> None:
        self.events.append(event)


def _llamaindex(url: str, query: str):
    from llamaindex_deepretrieval import DeepRetrievalQueryTransform

    handler = Events(events=[])
    get_dispatcher().add_event_handler(handler)
    try:
        with OpenAIRewriter("m", base_url=url, timeout=30) as rewriter:
            bundle = DeepRetrievalQueryTransform(rewriter=rewriter).run(QueryBundle(query))
    finally:
        get_dispatcher().event_handlers.remove(handler)
    [event] = [e for e in handler.events if type(e).__name__ == "QueryRewriteEvent"]
    assert bundle.query_str == event.query
    return event.query, event.fell_back, event.reason


def _haystack(url: str, query: str):
    from haystack_deepretrieval import DeepRetrievalQueryRewriter

    component = DeepRetrievalQueryRewriter(backend="openai", model="m", base_url=url, timeout=30.0, api_key=None)
    try:
        output = component.run(query)
    finally:
        component.close()
    return output["query"], output["meta"]["fell_back"], output["meta"]["reason"]


def _core(url: str, query: str):
    with OpenAIRewriter("m", base_url=url, timeout=30) as rewriter:
        result = rewriter.rewrite([query])[0]
    return result.query, result.fell_back, result.reason


async def _core_async(url: str, query: str):
    async with OpenAIRewriter("m", base_url=url, timeout=30) as rewriter:
        result = (await rewriter.arewrite([query]))[0]
    return result.query, result.fell_back, result.reason


REWRITERS = {"core": _core, "core-async": _core_async, "haystack": _haystack, "llamaindex": _llamaindex}


async def _rewrite(component: str, url: str, query: str):
    outcome = REWRITERS[component](url, query)
    return await outcome if component == "core-async" else outcome


@pytest.mark.parametrize("encoding", encoding_params())
@pytest.mark.parametrize("component", REWRITERS)
async def test_a_compressed_completion_past_the_cap_falls_back_unread(server, component, encoding):  # noqa: F811
    header, body = compressed(encoding, chat_body("bomb"), BOMB)
    server.plan["q"] = [("bytes", 200, body, {"Content-Encoding": header})]
    query, fell_back, reason = await _rewrite(component, server.url, "q")
    assert (query, fell_back) == ("q", True)
    if encoding in ("br", "zstd"):  # never asked for: refused before a byte is decoded
        assert f"Content-Encoding '{encoding}', which was not asked for" in reason
    else:
        assert f"more than {CHAT_CAP:,} bytes" in reason
    assert server.requests[0]["headers"]["Accept-Encoding"] == ACCEPT_ENCODING
    assert server.hits("q") == 1  # not retried


@pytest.mark.parametrize("encoding", encoding_params(("gzip", "deflate", "deflate-raw", "gzip,gzip")))
@pytest.mark.parametrize("component", REWRITERS)
async def test_a_compressed_completion_within_the_cap_is_read(server, component, encoding):  # noqa: F811
    header, body = compressed(encoding, chat_body("rewrite of q"), CHAT_CAP - 1024)
    server.plan["q"] = [("bytes", 200, body, {"Content-Encoding": header})]
    assert await _rewrite(component, server.url, "q") == ("rewrite of q", False, None)


def test_an_error_answer_is_cut_not_refused_so_it_is_still_retried(server):  # noqa: F811
    header, body = compressed("gzip", b'{"error": "busy"}', BOMB)
    server.plan["q"] = [("bytes", 503, body, {"Content-Encoding": header})]
    with OpenAIRewriter("m", base_url=server.url, retry_backoff=0.01) as rewriter:
        result = rewriter.rewrite(["q"])[0]
    assert (result.query, result.fell_back) == ("rewrite of q", False)
    assert server.hits("q") == 2


def test_max_response_bytes_sets_the_cap(server):  # noqa: F811
    header, body = compressed("gzip", chat_body("rewrite of q"), 50_000)
    server.plan["q"] = [("bytes", 200, body, {"Content-Encoding": header})] * 2
    with OpenAIRewriter("m", base_url=server.url, max_response_bytes=40_000) as rewriter:
        assert "more than 40,000 bytes" in rewriter.rewrite(["q"])[0].reason
    with OpenAIRewriter("m", base_url=server.url, max_tokens=512) as rewriter:  # 64 KiB + 256 B per token
        assert rewriter.config.response_cap == 64 * 1024 + 256 * 512
        assert not rewriter.rewrite(["q"])[0].fell_back
    with pytest.raises(ValueError, match="max_response_bytes=10 must be >= 1024"):
        OpenAIRewriter("m", max_response_bytes=10)


# -- the literature engines ----------------------------------------------------------------------------------------

def _pubmed(url: str):
    return PubMedSearch(base_url=url, api_key="", policy=HttpPolicy(**POLICY)).search(["aspirin"], 5)


async def _pubmed_async(url: str):
    return await PubMedSearch(base_url=url, api_key="", policy=HttpPolicy(**POLICY)).asearch(["aspirin"], 5)


def _ctgov(url: str):
    return ClinicalTrialsSearch(base_url=url, policy=HttpPolicy(**POLICY)).search(["aspirin"], 5)


def _haystack_literature(url: str):
    from haystack_deepretrieval.literature import LiteratureSearchRetriever

    component = LiteratureSearchRetriever(engine="pubmed", base_url=url, api_key=None, top_k=5, max_retries=2)
    return [[document.id for document in component.run("aspirin")["documents"]]]


ENGINES = {"pubmed": (_pubmed, fake_esearch(pubmed_ids(5))), "pubmed-async": (_pubmed_async, fake_esearch(pubmed_ids(5))),
           "ctgov": (_ctgov, fake_studies(nct_ids(5))), "haystack-literature": (_haystack_literature, fake_esearch(pubmed_ids(5)))}


async def _search(engine: str, url: str):
    outcome = ENGINES[engine][0](url)
    return await outcome if engine == "pubmed-async" else outcome


def _first_page(engine: str, url: str) -> bytes:
    params = {"query.term": "aspirin", "pageSize": "5"} if engine == "ctgov" else {"term": "aspirin", "retmax": "5"}
    path = "/studies" if engine == "ctgov" else "/esearch.fcgi"
    return json.dumps(ENGINES[engine][1](path, params).body).encode()


@pytest.mark.parametrize("encoding", encoding_params(("gzip", "deflate", "deflate-raw", "gzip,gzip")))
@pytest.mark.parametrize("engine", ENGINES)
async def test_a_compressed_search_answer_past_the_cap_fails_unread(engine, encoding):
    with Loopback(ENGINES[engine][1]) as loopback:
        header, body = compressed(encoding, _first_page(engine, loopback.url), BOMB)
        loopback.queue(Answer(200, body, {"Content-Encoding": header}))
        with pytest.raises(SearchServiceError) as caught:
            await _search(engine, loopback.url)
    assert f"more than {MAX_RESPONSE_BYTES:,} bytes (HttpPolicy.max_response_bytes)" in str(caught.value)
    assert len(loopback.requests) == 1  # not retried: the same request gets the same answer
    assert loopback.requests[0].headers["Accept-Encoding"] == ACCEPT_ENCODING


@pytest.mark.parametrize("encoding", encoding_params(("br", "zstd")))
@pytest.mark.parametrize("engine", ENGINES)
async def test_a_search_answer_in_an_encoding_not_asked_for_is_retried_unread(engine, encoding, caplog):
    with Loopback(ENGINES[engine][1]) as loopback:
        header, body = compressed(encoding, _first_page(engine, loopback.url), BOMB)
        loopback.queue(Answer(200, body, {"Content-Encoding": header}))
        found = await _search(engine, loopback.url)
    assert found == [nct_ids(5) if engine == "ctgov" else pubmed_ids(5)]  # from the retry's plain answer
    assert len(loopback.requests) == 2
    assert f"Content-Encoding '{encoding}', which was not asked for" in caplog.text


@pytest.mark.parametrize("encoding", encoding_params(("gzip", "deflate", "deflate-raw", "gzip,gzip")))
@pytest.mark.parametrize("engine", ENGINES)
async def test_a_compressed_search_answer_within_the_cap_is_read(engine, encoding):
    with Loopback(ENGINES[engine][1]) as loopback:
        header, body = compressed(encoding, _first_page(engine, loopback.url), MAX_RESPONSE_BYTES - 1024)
        loopback.queue(Answer(200, body, {"Content-Encoding": header}))
        found = await _search(engine, loopback.url)
    assert found == [nct_ids(5) if engine == "ctgov" else pubmed_ids(5)]


def test_the_largest_real_page_is_far_within_the_search_cap():
    """A full esearch page (9,999 PMIDs, retmax's limit) and a full /studies page (1,000 NCT ids)."""
    with Loopback(fake_esearch(pubmed_ids(9999))) as loopback:
        engine = PubMedSearch(base_url=loopback.url, api_key="", policy=HttpPolicy(**POLICY))
        assert len(engine.search(["aspirin"], 9999)[0]) == 9999
    with Loopback(fake_studies(nct_ids(1000))) as loopback:
        engine = ClinicalTrialsSearch(base_url=loopback.url, policy=HttpPolicy(**POLICY))
        assert len(engine.search(["aspirin"], 1000)[0]) == 1000
    page = json.dumps(fake_esearch(pubmed_ids(9999))("/esearch.fcgi", {"retmax": "9999", "term": "x" * 1000}).body)
    assert len(page) * 30 < MAX_RESPONSE_BYTES


# -- memory ------------------------------------------------------------------------------------------------------

def _probe(component: str, encoding: str, mib: int) -> dict:
    def limit() -> None:  # a bound for the uncapped code too: it needs about twice the decoded size
        resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))

    done = subprocess.run([sys.executable, "-m", "tests.trainer.bomb_probe", component, encoding, str(mib)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300, preexec_fn=limit, check=False,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("encoding", encoding_params(("gzip", "br", "zstd")))
@pytest.mark.parametrize("component", ["openai", "pubmed"])
def test_peak_memory_does_not_grow_with_the_decoded_size(component, encoding):
    small, large = _probe(component, encoding, 64), _probe(component, encoding, 256)
    for outcome in (small, large):
        assert outcome.get("fell_back") or "error" in outcome, outcome  # refused, not accepted
        assert outcome["peak_growth_kib"] < 24 * 1024, outcome  # the cap (<= 4 MiB) and a few decode steps
    assert large["peak_growth_kib"] < small["peak_growth_kib"] + 8 * 1024  # 4x the bomb, no more memory
