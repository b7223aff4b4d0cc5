"""Secrets never appear in any log record at any level, ours or a library's.

Every log record of a real request is captured at DEBUG (httpx's and httpcore's included), and the key must be
absent in plain and URL-encoded form, while the server did receive it.
"""

from __future__ import annotations

import logging
from urllib.parse import quote, quote_plus

import pytest

from deepretrieval_trainer.literature.http import HttpPolicy, SearchServiceError
from deepretrieval_trainer.literature.pubmed import PubMedSearch
from deepretrieval_trainer.rewriting.openai_compat import OpenAIRewriter
from tests.trainer.literature.loopback import Answer, Loopback, fake_esearch, pubmed_ids
from tests.trainer.test_openai_compat import server  # noqa: F401 - the loopback chat server fixture

KEY = "k3y/with+chars=&secret-0123456789"  # every character class httpx percent-encodes in a query string


def _leaks(caplog, secret: str) -> list[str]:
    forms = {secret, quote(secret, safe=""), quote_plus(secret, safe="")}
    texts = []
    for record in caplog.records:
        text = record.getMessage() + (record.exc_text or "") + (logging.Formatter().format(record))
        texts.extend(text for form in forms if form in text)
    return texts


@pytest.fixture
def debug_logs(caplog):
    caplog.set_level(logging.DEBUG)  # the root logger: every library's records
    return caplog


def test_pubmed_key_is_sent_but_never_logged(debug_logs):
    policy = HttpPolicy(requests_per_second=100, max_retries=2, backoff_s=0.01)
    with Loopback(fake_esearch(pubmed_ids(30))) as server:
        server.queue(Answer(500, "try again"))
        engine = PubMedSearch(base_url=server.url, api_key=KEY, policy=policy, page_size=10)
        assert engine.search(["aspirin"], 20) == [pubmed_ids(20)]
        server.queue(Answer(400, {"error": f"bad request {server.url}esearch.fcgi?api_key={quote(KEY, safe='')}"}))
        with pytest.raises(SearchServiceError) as caught:
            engine.search(["aspirin"], 5)
    assert all(request.params["api_key"] == KEY for request in server.requests)
    assert any(r.name == "httpx" and "HTTP Request" in r.getMessage() for r in debug_logs.records)  # it did log
    assert any(r.name.startswith("httpcore") for r in debug_logs.records)
    assert _leaks(debug_logs, KEY) == []
    assert KEY not in str(caught.value) and quote(KEY, safe="") not in str(caught.value)


def test_server_key_is_sent_but_never_logged_even_when_the_server_echoes_it(server, debug_logs):  # noqa: F811
    server.plan["q"] = [("echo", 401)]
    with OpenAIRewriter("m", base_url=server.url, api_key=KEY, max_retries=0) as rewriter:
        result = rewriter.rewrite(["q"])[0]
        again = rewriter.rewrite(["other"])[0]
    assert server.requests[0]["auth"] == f"Bearer {KEY}"
    assert result.fell_back and "HTTP 401" in result.reason and KEY not in result.reason
    assert not again.fell_back
    assert _leaks(debug_logs, KEY) == []


def test_a_logged_traceback_is_masked_too(debug_logs):
    from deepretrieval_trainer.common.redaction import register_secret

    register_secret("tb-secret-4567")
    try:
        raise RuntimeError("failed with tb-secret-4567")
    except RuntimeError:
        logging.getLogger("some.library").exception("request %s failed", "tb-secret-4567")
    assert _leaks(debug_logs, "tb-secret-4567") == []
    assert "***" in debug_logs.text
