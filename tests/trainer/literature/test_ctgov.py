"""ClinicalTrialsSearch against a real loopback HTTP server answering in the API v2 /studies JSON format.

The tests run offline: they exercise everything up to the wire against the loopback server, never the live
ClinicalTrials.gov service."""

from __future__ import annotations

import pytest

from deepretrieval_trainer.literature.ctgov import DEFAULT_RATE, NCT_FIELD, ClinicalTrialsSearch
from deepretrieval_trainer.literature.http import HttpPolicy, SearchServiceError
from deepretrieval_trainer.retrieval.dates import DateRange, search_with_dates

from .loopback import Answer, Loopback, fake_studies, nct_ids

FAST = HttpPolicy(requests_per_second=200, backoff_s=0.01, max_backoff_s=2.0, max_retries=2, timeout_s=5)
IDS = nct_ids(23)


@pytest.fixture
def server():
    with Loopback(fake_studies(IDS)) as loopback:
        yield loopback


def engine(server, **kwargs) -> ClinicalTrialsSearch:
    return ClinicalTrialsSearch(base_url=server.url, policy=kwargs.pop("policy", FAST), **kwargs)


def test_pages_with_tokens_up_to_k_asking_only_for_the_nct_id(server):
    assert engine(server, page_size=5).search(["aspirin AND stroke"], 12) == [IDS[:12]]
    assert [r.params.get("pageToken") for r in server.requests] == [None, "tok5", "tok10"]
    first = server.requests[0]
    assert first.path == "/studies"
    assert first.params == {"query.term": "aspirin AND stroke", "pageSize": "5", "fields": NCT_FIELD, "format": "json"}


def test_stops_without_a_next_page_token_and_on_empty_results(server):
    assert engine(server, page_size=10).search(["aspirin"], 3000) == [IDS]
    assert len(server.requests) == 3
    server.requests.clear()
    assert engine(server).search(["nothing"], 100) == [[]]
    assert len(server.requests) == 1


def test_date_window_becomes_an_essie_range(server):
    dates = [DateRange.before("2015/06"), DateRange(start="2001"), None]
    assert search_with_dates(engine(server), ["a", "b", "c"], 3, dates) == [IDS[:3]] * 3
    filters = [r.params.get("filter.advanced") for r in server.requests]
    assert filters == ["AREA[StudyFirstPostDate]RANGE[MIN,2015-06-30]", "AREA[StudyFirstPostDate]RANGE[2001-01-01,MAX]",
                       None]


def test_429_500_and_malformed_json_are_retried(server):
    server.queue(Answer(429, "Too Many Requests", {"Retry-After": "0.3"}), Answer(500, "oops"),
                 Answer(200, '{"studies": [{"protocolSection"'))
    policy = HttpPolicy(requests_per_second=200, backoff_s=0.01, max_backoff_s=2.0, max_retries=3)
    assert engine(server, policy=policy).search(["aspirin"], 4) == [IDS[:4]]
    assert len(server.requests) == 4
    assert server.requests[1].time - server.requests[0].time >= 0.28


def test_persistent_failure_and_client_errors_raise(server):
    server.queue(*[Answer(503, "Service Unavailable")] * 3)
    with pytest.raises(SearchServiceError, match=r"failed after 3 attempt\(s\): HTTP 503"):
        engine(server).search(["aspirin"], 4)
    server.queue(Answer(400, "Invalid query.term: unbalanced parenthesis"))
    with pytest.raises(SearchServiceError, match="HTTP 400: Invalid query.term"):
        engine(server).search(["(aspirin"], 4)


def test_an_answer_without_nct_ids_is_an_error(server):
    server.queue(Answer(200, {"studies": [{"protocolSection": {}}]}))
    with pytest.raises(SearchServiceError, match="lacking protocolSection.identificationModule.nctId"):
        engine(server).search(["aspirin"], 4)
    server.queue(Answer(200, {"totalCount": 3}))
    with pytest.raises(SearchServiceError, match="without a 'studies' list"):
        engine(server).search(["aspirin"], 4)


async def test_async_search(server):
    assert await engine(server, page_size=10).asearch(["a", "nothing"], 15) == [IDS[:15], []]
    assert len(server.requests) == 3


def test_default_rate_spaces_requests(server):
    ClinicalTrialsSearch(base_url=server.url, page_size=10).search(["aspirin"], 30)
    times = [r.time for r in server.requests]
    assert len(times) == 3
    assert times[-1] - times[0] >= 2 / DEFAULT_RATE - 0.05
