"""One bad query, or one hostile answer, fails its own query only: never the batch it came in.

A batch holds a bad item beside a plain query. Bad items: an answer nested 40,000 or 100,000 deep (``RecursionError``
in the JSON decoder), an answer that is not UTF-8, corrupt gzip, a compression bomb, and a query holding a lone surrogate
(UTF-8 cannot encode it into the request). Before, the first two and the surrogate escaped the narrow ``except``
around each request, and every query of the batch fell back (rewriters) or the batch raised a bare
``RecursionError`` / ``UnicodeEncodeError`` (search engines).
"""

from __future__ import annotations

import json

import pytest
from deepretrieval_trainer.literature.boolean import BooleanQueryError
from deepretrieval_trainer.literature.ctgov import ClinicalTrialsSearch
from deepretrieval_trainer.literature.http import HttpPolicy, SearchServiceError
from deepretrieval_trainer.literature.pubmed import PubMedSearch
from deepretrieval_trainer.rewriting.openai_compat import OpenAIRewriter

from tests.trainer.compression import MiB, compressed
from tests.trainer.literature.loopback import Answer, Loopback, fake_esearch, fake_studies, nct_ids, pubmed_ids
from tests.trainer.test_openai_compat import server  # noqa: F401 - the loopback chat server fixture

DEEP = "[" * 100_000 + "]" * 100_000
DEEP_WITHIN_CAP = "[" * 40_000 + "]" * 40_000  # 80 KB: under a completion's 96 KiB cap, so JSON decoding sees it
SURROGATE = "heart \ud800 attack"


def _bomb() -> bytes:
    return compressed("gzip", b'{"choices": []}', 32 * MiB)[1]


CHAT_ANSWERS = {  # step of the loopback chat server for the query "bad"
    "nested 100k deep": ("raw", '{"choices": ' + DEEP + "}"),  # 200 KB: the cap refuses it first
    "nested 40k deep": ("raw", '{"choices": ' + DEEP_WITHIN_CAP + "}"),
    "not UTF-8": ("bytes", 200, b'{"choices": [{"message": {"content": "\xff\xfe"}}]}'),
    "corrupt gzip": ("bytes", 200, b"\x1f\x8b\x08\x00not gzip at all", {"Content-Encoding": "gzip"}),
    "a compression bomb": ("bytes", 200, None, {"Content-Encoding": "gzip"}),
}
BAD_CHAT = [*CHAT_ANSWERS, "a lone surrogate in the query"]


def _plan(server, bad: str) -> str:  # noqa: F811
    if bad == "a lone surrogate in the query":
        return SURROGATE
    step = CHAT_ANSWERS[bad]
    if bad == "a compression bomb":
        step = (*step[:2], _bomb(), step[3])
    server.plan["bad"] = [step] * 3
    return "bad"


def _check_batch(results, bad_query: str) -> None:
    bad, plain = results
    assert (plain.query, plain.fell_back, plain.reason) == ("rewrite of plain", False, None)
    assert bad.fell_back and bad.query == bad_query and bad.reason


@pytest.mark.parametrize("bad", BAD_CHAT)
def test_one_bad_item_falls_back_alone(server, bad):  # noqa: F811
    query = _plan(server, bad)
    with OpenAIRewriter("m", base_url=server.url, retry_backoff=0.01, timeout=10) as rewriter:
        _check_batch(rewriter.rewrite([query, "plain"]), query)


@pytest.mark.parametrize("bad", BAD_CHAT)
async def test_one_bad_item_falls_back_alone_async(server, bad):  # noqa: F811
    query = _plan(server, bad)
    async with OpenAIRewriter("m", base_url=server.url, retry_backoff=0.01, timeout=10) as rewriter:
        _check_batch(await rewriter.arewrite([query, "plain"]), query)


def test_the_reasons_say_what_was_wrong(server):  # noqa: F811
    reasons = {}
    with OpenAIRewriter("m", base_url=server.url, retry_backoff=0.01, timeout=10) as rewriter:
        for bad in BAD_CHAT:
            query = _plan(server, bad)
            reasons[bad] = rewriter.rewrite([query])[0].reason
    assert "decodes to more than" in reasons["nested 100k deep"]
    assert "malformed response" in reasons["nested 40k deep"] and "RecursionError" in reasons["nested 40k deep"]
    assert "malformed response" in reasons["not UTF-8"]
    assert "corrupt gzip data" in reasons["corrupt gzip"]
    assert "decodes to more than" in reasons["a compression bomb"]
    assert "lone surrogate" in reasons["a lone surrogate in the query"]


def test_strict_still_raises_for_the_bad_item(server):  # noqa: F811
    from deepretrieval_trainer.rewriting.rewriters import RewriteError

    server.plan["bad"] = [("raw", '{"choices": ' + DEEP_WITHIN_CAP + "}")]
    with OpenAIRewriter("m", base_url=server.url, strict=True, max_retries=0) as rewriter:
        with pytest.raises(RewriteError, match="malformed response"):
            rewriter.rewrite(["bad", "plain"])


# -- the literature engines ----------------------------------------------------------------------------------------

def _hostile(fake, term_key: str):
    """The fake service, but the query "bad" gets a hostile answer (``_search_setup`` sets it)."""

    def answer(path: str, params: dict[str, str]) -> Answer:
        if params.get(term_key) == "bad":
            return answer.hostile
        return fake(path, params)

    return answer


SEARCH_ANSWERS = {
    "nested 100k deep": lambda: Answer(200, DEEP),
    "not UTF-8": lambda: Answer(200, b'{"esearchresult": "\xff\xfe"}'),
    "corrupt gzip": lambda: Answer(200, b"\x1f\x8b\x08\x00not gzip", {"Content-Encoding": "gzip"}),
    "a compression bomb": lambda: Answer(200, _bomb(), {"Content-Encoding": "gzip"}),
}
BAD_SEARCH = [*SEARCH_ANSWERS, "a lone surrogate in the query", "a NUL in the query"]
ENGINES = {
    "pubmed": (lambda url: PubMedSearch(base_url=url, api_key="", policy=_policy()), fake_esearch(pubmed_ids(3)),
               "term", pubmed_ids(3)),
    "ctgov": (lambda url: ClinicalTrialsSearch(base_url=url, policy=_policy()), fake_studies(nct_ids(3)), "query.term",
              nct_ids(3)),
}


def _policy() -> HttpPolicy:
    return HttpPolicy(requests_per_second=100, timeout_s=10.0, max_retries=1, backoff_s=0.01)


def _search_setup(server_answer, bad: str) -> str:
    if bad == "a lone surrogate in the query":
        return SURROGATE
    if bad == "a NUL in the query":
        return "heart\x00attack"
    server_answer.hostile = SEARCH_ANSWERS[bad]()
    return "bad"


def _check_each(results, expected_ids) -> None:
    bad, plain = results
    assert plain == expected_ids
    assert isinstance(bad, (SearchServiceError, BooleanQueryError)), repr(bad)


@pytest.mark.parametrize("bad", BAD_SEARCH)
@pytest.mark.parametrize("engine", ENGINES)
def test_search_each_isolates_the_bad_query(engine, bad):
    build, fake, term_key, ids = ENGINES[engine]
    answer = _hostile(fake, term_key)
    with Loopback(answer) as loopback:
        query = _search_setup(answer, bad)
        _check_each(build(loopback.url).search_each([query, "plain"], 3), ids)


@pytest.mark.parametrize("bad", BAD_SEARCH)
@pytest.mark.parametrize("engine", ENGINES)
async def test_asearch_each_isolates_the_bad_query(engine, bad):
    build, fake, term_key, ids = ENGINES[engine]
    answer = _hostile(fake, term_key)
    with Loopback(answer) as loopback:
        query = _search_setup(answer, bad)
        _check_each(await build(loopback.url).asearch_each([query, "plain"], 3), ids)


@pytest.mark.parametrize("bad", BAD_SEARCH)
@pytest.mark.parametrize("engine", ENGINES)
async def test_search_raises_the_bad_querys_own_error_not_a_bare_one(engine, bad):
    """``search`` keeps its contract (a failed query raises) with a typed error, after the plain query finished;
    a query the engine cannot send is refused before any request."""
    build, fake, term_key, _ = ENGINES[engine]
    answer = _hostile(fake, term_key)
    expected = BooleanQueryError if "in the query" in bad else SearchServiceError
    with Loopback(answer) as loopback:
        query = _search_setup(answer, bad)
        with pytest.raises(expected):
            build(loopback.url).search([query, "plain"], 3)
        with pytest.raises(expected):
            await build(loopback.url).asearch([query, "plain"], 3)
    if expected is BooleanQueryError:
        assert loopback.requests == []


def test_query_error_names_what_cannot_be_sent_without_a_request():
    engine = PubMedSearch(base_url="http://127.0.0.1:9/", api_key="")
    assert "lone surrogate U+D800 at position 6" in engine.query_error(SURROGATE)
    assert "control character U+0000" in engine.query_error("a\x00b")
    assert "empty" in engine.query_error("  ")
    assert engine.query_error("heart attack\tAND aspirin") is None


@pytest.mark.parametrize("bad", list(SEARCH_ANSWERS))
def test_the_plugins_literature_retrievers_raise_a_search_error(bad):
    """One query per call there: a hostile answer is the engine's SearchServiceError, not a bare RecursionError."""
    from llama_index.core.schema import QueryBundle

    from haystack_deepretrieval.literature import LiteratureSearchRetriever
    from llamaindex_deepretrieval.literature import LiteratureRetriever

    answer = _hostile(fake_esearch(pubmed_ids(3)), "term")
    with Loopback(answer) as loopback:
        _search_setup(answer, bad)
        haystack = LiteratureSearchRetriever(engine="pubmed", base_url=loopback.url, api_key=None, max_retries=0)
        with pytest.raises(SearchServiceError):
            haystack.run("bad")
        llamaindex = LiteratureRetriever(engine=PubMedSearch(base_url=loopback.url, api_key="", policy=_policy()))
        with pytest.raises(SearchServiceError):
            llamaindex.retrieve(QueryBundle("bad"))
        assert [d.id for d in haystack.run("plain")["documents"]] == pubmed_ids(3)


def test_an_answer_just_within_the_recursion_limit_is_still_an_error_not_a_crash():
    nested = {"studies": [json.loads("[" * 900 + "]" * 900)]}
    with Loopback(_hostile(fake_studies(nct_ids(3)), "query.term")) as loopback:
        loopback.queue(Answer(200, nested))
        with pytest.raises(SearchServiceError, match="lacking"):
            ClinicalTrialsSearch(base_url=loopback.url, policy=_policy()).search(["plain"], 3)
