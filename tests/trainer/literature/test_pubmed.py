"""PubMedSearch against a real loopback HTTP server answering in esearch's JSON format.

The tests run offline: they exercise everything up to the wire against the loopback server, never the live
NCBI service."""

from __future__ import annotations

import logging
import time

import pytest

from deepretrieval_trainer.literature.http import HttpPolicy, SearchServiceError
from deepretrieval_trainer.literature.pubmed import RATE_WITH_KEY, RATE_WITHOUT_KEY, PubMedSearch
from deepretrieval_trainer.retrieval.dates import DateRange

from .loopback import Answer, Loopback, fake_esearch, pubmed_ids

FAST = HttpPolicy(requests_per_second=200, backoff_s=0.01, max_backoff_s=2.0, max_retries=3, timeout_s=5)
IDS = pubmed_ids(57)


@pytest.fixture
def server():
    with Loopback(fake_esearch(IDS)) as loopback:
        yield loopback


def engine(server, **kwargs) -> PubMedSearch:
    kwargs.setdefault("policy", FAST)
    kwargs.setdefault("api_key", "")
    return PubMedSearch(base_url=server.url, **kwargs)


def test_pages_with_retstart_retmax_up_to_k(server):
    ids = engine(server, page_size=10, email="me@example.org").search(["aspirin[tiab] AND stroke"], 25)
    assert ids == [IDS[:25]]
    assert [(r.params["retstart"], r.params["retmax"]) for r in server.requests] == [("0", "10"), ("10", "10"), ("20", "5")]
    first = server.requests[0]
    assert first.path == "/esearch.fcgi"
    assert first.params["term"] == "aspirin[tiab] AND stroke"
    assert (first.params["db"], first.params["retmode"], first.params["sort"]) == ("pubmed", "json", "relevance")
    assert (first.params["tool"], first.params["email"]) == ("deepretrieval", "me@example.org")
    assert "api_key" not in first.params and "mindate" not in first.params


def test_stops_at_the_result_count_and_on_empty_results(server):
    assert engine(server, page_size=50).search(["aspirin"], 3000) == [IDS]
    assert len(server.requests) == 2  # 50 + the 7 left: count reached
    server.requests.clear()
    assert engine(server).search(["nothing"], 3000) == [[]]
    assert len(server.requests) == 1


def test_date_window_per_query(server):
    results = engine(server).search_dated(["a", "b", "c"], 5, [DateRange.before("2015-06"), None,
                                                               DateRange("2001", "2002/02/28")])
    assert results == [IDS[:5]] * 3
    windows = [(r.params.get("datetype"), r.params.get("mindate"), r.params.get("maxdate")) for r in server.requests]
    assert windows == [("pdat", "1700/01/01", "2015/06"), (None, None, None), ("pdat", "2001", "2002/02/28")]


def test_429_is_retried_after_retry_after(server):
    server.queue(Answer(429, {"error": "API rate limit exceeded", "count": "4", "limit": "3"}, {"Retry-After": "1"}))
    assert engine(server).search(["aspirin"], 10) == [IDS[:10]]
    assert len(server.requests) == 2
    assert server.requests[1].time - server.requests[0].time >= 0.95


def test_500_and_malformed_json_are_retried_with_backoff(server, caplog):
    server.queue(Answer(500, "Internal Server Error"), Answer(200, '{"esearchresult": {"count": "5", "idl'),
                 Answer(502, "Bad Gateway"))
    policy = HttpPolicy(requests_per_second=200, backoff_s=0.05, max_backoff_s=1.0, max_retries=3)
    with caplog.at_level(logging.WARNING):
        assert engine(server, policy=policy).search(["aspirin"], 10) == [IDS[:10]]
    times = [r.time for r in server.requests]
    assert len(times) == 4
    gaps = [b - a for a, b in zip(times, times[1:])]
    assert gaps[0] >= 0.05 and gaps[1] >= 0.1 and gaps[2] >= 0.2  # exponential backoff
    assert "malformed JSON" in caplog.text and "HTTP 500" in caplog.text


def test_gives_up_after_max_retries_with_a_clear_error(server):
    server.queue(*[Answer(200, "<html>not json</html>")] * 4)
    with pytest.raises(SearchServiceError, match=r"after 4 attempt\(s\): malformed JSON: <html>not json"):
        engine(server).search(["aspirin"], 10)
    assert len(server.requests) == 4


def test_client_errors_fail_at_once_and_never_show_the_api_key(server):
    server.queue(Answer(400, {"error": "bad request"}))
    with pytest.raises(SearchServiceError, match="HTTP 400") as caught:
        engine(server, api_key="s3cret-key").search(["aspirin"], 10)
    assert len(server.requests) == 1
    assert server.requests[0].params["api_key"] == "s3cret-key"
    assert "s3cret-key" not in str(caught.value) and "'api_key': '***'" in str(caught.value)


def test_esearch_error_answer_is_reported(server):
    with pytest.raises(SearchServiceError, match="rejected 'bad query': Invalid query syntax"):
        engine(server).search(["bad query"], 10)


def test_api_key_from_the_environment_sets_the_rate(server, monkeypatch):
    monkeypatch.setenv("NCBI_API_KEY", "env-key")
    keyed = PubMedSearch(base_url=server.url)
    assert keyed.service.policy.requests_per_second == RATE_WITH_KEY
    keyed.search(["aspirin"], 3)
    assert server.requests[-1].params["api_key"] == "env-key"
    monkeypatch.delenv("NCBI_API_KEY")
    assert PubMedSearch(base_url=server.url).service.policy.requests_per_second == RATE_WITHOUT_KEY


def test_requests_without_a_key_are_spaced_by_the_documented_limit(server):
    start = time.monotonic()
    PubMedSearch(base_url=server.url, api_key="", page_size=10).search(["aspirin"], 40)
    times = [r.time for r in server.requests]
    assert len(times) == 4
    # the n-th request may not leave before its slot (arrival can lag a slot, never lead it)
    assert all(t - start >= n / RATE_WITHOUT_KEY for n, t in enumerate(times))


async def test_async_search_keeps_order_and_the_rate(server):
    policy = HttpPolicy(requests_per_second=20, backoff_s=0.01)
    start = time.monotonic()
    results = await engine(server, policy=policy, page_size=20).asearch(["a", "nothing", "b"], 30)
    assert results == [IDS[:30], [], IDS[:30]]
    times = sorted(r.time for r in server.requests)
    assert len(times) == 5
    assert all(t - start >= n / 20 for n, t in enumerate(times))  # concurrent queries still share the slots


def test_bad_arguments_are_rejected_before_any_request(server):
    with pytest.raises(ValueError, match="k=10000 is above"):
        engine(server).search(["aspirin"], 10_000)
    with pytest.raises(ValueError, match="query is empty"):
        engine(server).search(["  "], 10)
    with pytest.raises(ValueError, match="page_size=0"):
        engine(server, page_size=0)
    with pytest.raises(ValueError, match="must start with http"):
        PubMedSearch(base_url="eutils.ncbi.nlm.nih.gov")
    assert server.requests == []


def test_a_default_date_range_applies_to_plain_search(server):
    engine(server, date_range=DateRange.before("2012")).search(["aspirin"], 3)
    assert (server.requests[0].params["mindate"], server.requests[0].params["maxdate"]) == ("1700/01/01", "2012")
