"""Secrets never appear in any log record at any level, ours or a library's.

Every log record of a real request is captured at DEBUG (httpx's and httpcore's included), and the key must be
absent in plain and URL-encoded form, while the server did receive it.
"""

from __future__ import annotations

import json
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


# -- every shape a key takes ---------------------------------------------------------------------------------------
# A key read from a mounted secret file ends with a newline; error texts show it escaped (h11: b'Bearer sk-...\n'),
# JSON-escaped, URL-encoded, or cut. Nothing of 8 characters or more of it may show, in any of these.

SHAPED_KEY = "sk-shape-0123456789abcdef/+=&"
WHITESPACE = {"trailing newline": "{}\n", "CRLF": "{}\r\n", "leading space": " {}", "tabs and newline": "\t{}\t\n",
              "as is": "{}"}


def _pieces(text: str, key: str, size: int = 8) -> list[str]:
    """Every part of ``key`` of ``size`` characters that shows in ``text``."""
    return [key[i:i + size] for i in range(len(key) - size + 1) if key[i:i + size] in text]


def _shapes(value: str) -> dict[str, str]:
    """How error texts and logs show a header or parameter carrying ``value``."""
    from urllib.parse import quote, quote_plus

    return {
        "plain": f"failed: Bearer {value} rejected",
        "str repr": f"failed: {('Bearer ' + value)!r} rejected",
        "bytes repr (h11)": f"Illegal header value {('Bearer ' + value).encode()!r}",
        "JSON": json.dumps({"error": f"bad credentials: Bearer {value}"}),
        "URL-encoded": f"GET /esearch.fcgi?api_key={quote(value, safe='')}&term=x",
        "URL-encoded, lower-case hex": f"GET /?api_key={quote(value, safe='').lower()}",
        "form-encoded": f"api_key={quote_plus(value, safe='')}",
    }


@pytest.mark.parametrize("whitespace", WHITESPACE)
def test_every_shape_of_a_registered_key_is_masked(whitespace):
    from deepretrieval_trainer.common.redaction import redact, register_secret

    value = WHITESPACE[whitespace].format(SHAPED_KEY)
    register_secret(value)
    for shown in (value, SHAPED_KEY):  # as registered, and as a client that stripped it sends it
        for shape, text in _shapes(shown).items():
            assert _pieces(redact(text), SHAPED_KEY) == [], (whitespace, shape, redact(text))


def test_a_key_cut_anywhere_leaves_no_part_of_8_characters():
    from deepretrieval_trainer.common.redaction import redact, register_secret

    register_secret(SHAPED_KEY + "\n")
    text = f"401 from the server: bad credentials: Bearer {SHAPED_KEY}\\n and more text"
    for cut in range(len(text)):
        for piece in (text[:cut], text[:cut] + "...", text[cut:], "..." + text[cut:]):
            assert _pieces(redact(piece), SHAPED_KEY) == [], (cut, redact(piece))


def test_excerpt_masks_before_it_cuts():
    from deepretrieval_trainer.common.redaction import excerpt, register_secret

    register_secret(SHAPED_KEY)
    for pad in range(200 - len(SHAPED_KEY) - 2, 202):
        shown = excerpt("x" * pad + SHAPED_KEY + " tail", 200)
        assert _pieces(shown, SHAPED_KEY) == [] and len(shown) <= 203, (pad, shown)


@pytest.mark.parametrize("whitespace", WHITESPACE)
@pytest.mark.parametrize("path", ["sync", "async"])
async def test_a_key_with_surrounding_whitespace_is_sent_stripped_and_never_shown(server, debug_logs, whitespace,  # noqa: F811
                                                                                  path):
    key = f"sk-{whitespace[:4].strip()}-0123456789abcdef"
    value = WHITESPACE[whitespace].format(key)
    server.plan["q"] = [("echo", 401)]
    async with OpenAIRewriter("m", base_url=server.url, api_key=value, max_retries=0) as rewriter:
        if path == "sync":
            echoed, fine = rewriter.rewrite(["q", "fine"])
        else:
            echoed, fine = await rewriter.arewrite(["q", "fine"])
    assert not fine.fell_back  # the key works
    assert {r["auth"] for r in server.requests} == {f"Bearer {key}"}
    assert echoed.fell_back and "HTTP 401" in echoed.reason and _pieces(echoed.reason, key) == []
    assert [r.getMessage() for r in debug_logs.records if _pieces(r.getMessage(), key)] == []


def test_a_key_a_header_cannot_carry_is_refused_without_showing_it(monkeypatch):
    key = "sk-inner\nnewline-0123456789"
    with pytest.raises(ValueError, match=r"character an HTTP header cannot carry \(U\+000A") as caught:
        OpenAIRewriter("m", api_key=key)
    assert _pieces(str(caught.value), key.replace("\n", "")) == [] and _pieces(str(caught.value), key) == []
    monkeypatch.setenv("DEEPRETRIEVAL_API_KEY", "sk-non-ascii-\u00e9-0123456789")
    with pytest.raises(ValueError, match="U\\+00E9"):
        OpenAIRewriter("m")


def test_an_echoed_key_straddling_the_excerpt_cut_shows_no_part(server, debug_logs):  # noqa: F811
    key = "sk-straddle-0123456789abcdef"
    prefix = len(json.dumps({"error": {"message": ""}})) - 3  # the server's JSON before the echoed text
    pads = range(300 - prefix - len("Bearer ") - len(key) - 2, 302 - prefix)
    for pad in pads:
        server.plan[f"q{pad}"] = [("bytes", 401, ("x" * pad + f" Bearer {key}\n tail").encode())]
    with OpenAIRewriter("m", base_url=server.url, api_key=key, max_retries=0) as rewriter:
        results = rewriter.rewrite([f"q{pad}" for pad in pads])
    assert all(r.fell_back and "HTTP 401" in r.reason for r in results)
    assert [r.reason for r in results if _pieces(r.reason, key)] == []
    assert [r.getMessage() for r in debug_logs.records if _pieces(r.getMessage(), key)] == []


@pytest.mark.parametrize("whitespace", ["as is", "trailing newline", "CRLF", "leading space"])
def test_pubmed_key_from_a_secret_file_is_sent_stripped_and_an_echo_straddling_the_cut_shows_nothing(
        monkeypatch, debug_logs, whitespace):
    key = f"ncbi-{whitespace[:4].strip().replace(' ', '')}-0123456789abcdef"
    monkeypatch.setenv("NCBI_API_KEY", WHITESPACE[whitespace].format(key))
    policy = HttpPolicy(requests_per_second=100, max_retries=0, backoff_s=0.01)
    errors = []
    with Loopback(fake_esearch(pubmed_ids(5))) as loopback:
        engine = PubMedSearch(base_url=loopback.url, policy=policy)
        assert engine.search(["aspirin"], 5) == [pubmed_ids(5)]
        for pad in range(150, 205):
            loopback.queue(Answer(400, "x" * pad + f"&api_key={key}\n"))
            with pytest.raises(SearchServiceError) as caught:
                engine.search(["aspirin"], 5)
            errors.append(str(caught.value))
        engine.close()
    assert {request.params["api_key"] for request in loopback.requests} == {key}
    assert [e for e in errors if _pieces(e, key)] == []
    assert [r.getMessage() for r in debug_logs.records if _pieces(r.getMessage(), key)] == []
