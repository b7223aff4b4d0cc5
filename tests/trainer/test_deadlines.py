"""A per-request deadline covers the whole request, and retries have an overall budget.

A stalled server trickles a valid answer one byte at a time, each byte well inside httpx's per-read timeout. Nothing
here times the client: the server reports how much of the answer it had sent when the client hung up, which is all
of it when the timeout is only per read.
"""

from __future__ import annotations

import time

import pytest

from deepretrieval_trainer.literature.http import HttpPolicy, SearchServiceError
from deepretrieval_trainer.literature.pubmed import PubMedSearch
from deepretrieval_trainer.rewriting.openai_compat import OpenAIRewriter
from tests.trainer.literature.loopback import Answer, Loopback, fake_esearch, pubmed_ids
from tests.trainer.test_openai_compat import server  # noqa: F401 - the loopback chat server fixture

TRICKLE_S = 0.25  # per byte; the 44-byte answer takes 11 s to arrive
EMPTY_ESEARCH = {"esearchresult": {"count": "0", "idlist": []}}


def _cut_short(trickled) -> bool:
    """Whether the server saw every trickled answer abandoned before its end (it notices at its next write)."""
    for _ in range(80):  # the server thread records a trickle when it ends: wait for it (a full one takes 11 s)
        if trickled:
            break
        time.sleep(0.05)
    return bool(trickled) and all(sent < length for sent, length in trickled)


@pytest.fixture
def pubmed_server():
    with Loopback(fake_esearch(pubmed_ids(5))) as server:
        yield server


def _stalled_pubmed(server, **policy):
    server.queue(*[Answer(200, EMPTY_ESEARCH, trickle_s=TRICKLE_S)] * 3)
    settings = {"requests_per_second": 100, "timeout_s": 1.0, "max_retries": 0, "backoff_s": 0.01, **policy}
    return PubMedSearch(base_url=server.url, api_key="", policy=HttpPolicy(**settings))


def test_pubmed_sync_request_is_cut_at_its_deadline(pubmed_server):
    engine = _stalled_pubmed(pubmed_server)
    with pytest.raises(SearchServiceError, match=r"DeadlineExceeded: .* within the 1s deadline"):
        engine.search(["aspirin"], 5)
    engine.close()
    assert _cut_short(pubmed_server.trickled)


async def test_pubmed_async_request_is_cut_at_its_deadline(pubmed_server):
    engine = _stalled_pubmed(pubmed_server)
    with pytest.raises(SearchServiceError, match="deadline"):
        await engine.asearch(["aspirin"], 5)
    assert _cut_short(pubmed_server.trickled)


def test_pubmed_retries_stop_when_the_budget_is_spent(pubmed_server):
    pubmed_server.queue(*[Answer(503, "busy", {"Retry-After": "0"})] * 60)
    policy = HttpPolicy(requests_per_second=100, timeout_s=1.0, max_retries=50, backoff_s=0.05, max_backoff_s=0.2,
                        total_timeout_s=1.0)
    engine = PubMedSearch(base_url=pubmed_server.url, api_key="", policy=policy)
    with pytest.raises(SearchServiceError, match=r"retry budget \(HttpPolicy.total_timeout_s=1s\) is spent"):
        engine.search(["aspirin"], 5)
    engine.close()
    assert 1 < len(pubmed_server.requests) < 51  # retried, but not max_retries times


def test_a_stalled_request_uses_the_retry_budget_not_a_fresh_deadline_each_time(pubmed_server):
    engine = _stalled_pubmed(pubmed_server, max_retries=2, timeout_s=1.0, total_timeout_s=1.5)
    with pytest.raises(SearchServiceError):
        engine.search(["aspirin"], 5)
    engine.close()
    assert len(pubmed_server.requests) == 2  # the second attempt got only what was left of 1.5 s


def test_openai_sync_and_async_requests_are_cut_at_their_deadline(server):  # noqa: F811
    server.plan["stalled"] = [("trickle", TRICKLE_S)] * 2
    with OpenAIRewriter("m", base_url=server.url, timeout=1.0, max_retries=0) as rewriter:
        result = rewriter.rewrite(["stalled"])[0]
    assert result.fell_back and "within the 1s deadline" in result.reason
    assert _cut_short(server.trickled)


async def test_openai_async_request_is_cut_at_its_deadline(server):  # noqa: F811
    server.plan["stalled"] = [("trickle", TRICKLE_S)]
    async with OpenAIRewriter("m", base_url=server.url, timeout=1.0, max_retries=0) as rewriter:
        result = (await rewriter.arewrite(["stalled"]))[0]
    assert result.fell_back and "deadline" in result.reason
    assert _cut_short(server.trickled)


def test_openai_retries_stop_when_the_budget_is_spent(server):  # noqa: F811
    server.plan["busy"] = [("status", 503, {"Retry-After": "0.05"})] * 60
    with OpenAIRewriter("m", base_url=server.url, timeout=1.0, max_retries=50, total_timeout=0.6) as rewriter:
        result = rewriter.rewrite(["busy"])[0]
    assert result.fell_back and "retry budget (total_timeout=0.6s) is spent" in result.reason
    assert 1 < server.hits("busy") < 51


def test_haystack_component_falls_back_at_the_deadline(server):  # noqa: F811
    from haystack_deepretrieval import DeepRetrievalQueryRewriter

    server.plan["stalled"] = [("trickle", TRICKLE_S)]
    component = DeepRetrievalQueryRewriter(backend="openai", model="m", base_url=server.url, timeout=1.0,
                                           max_retries=0, api_key=None)
    output = component.run("stalled")
    component.close()
    assert output["query"] == "stalled" and output["meta"]["fell_back"] and "deadline" in output["meta"]["reason"]
    assert _cut_short(server.trickled)


def test_call_within_abandons_a_call_that_blocks_and_passes_results_and_errors_through():
    import threading

    from deepretrieval_trainer.common.deadline import DeadlineExceeded, call_within

    release = threading.Event()
    with pytest.raises(DeadlineExceeded, match="the store did not return within 0.2s"):
        call_within(release.wait, 0.2, "the store")
    release.set()
    assert call_within(lambda: [["d1"]], 5, "search") == [["d1"]]
    with pytest.raises(KeyError, match="gone"):
        call_within(lambda: {}["gone"], 5, "search")
