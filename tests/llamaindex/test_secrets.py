"""A key with surrounding whitespace (read from a mounted secret file) works through the LlamaIndex plugin, and no
part of it shows in the QueryRewriteEvent or the logs, whatever shape an error gives it."""

from __future__ import annotations

import logging
import threading

import pytest
from deepretrieval_trainer.rewriting.openai_compat import OpenAIRewriter
from deepretrieval_trainer.rewriting.rewriters import RewriteResult
from llama_index.core.schema import QueryBundle

from llamaindex_deepretrieval import DeepRetrievalQueryTransform
from tests.conftest import ScriptedRewriter
from tests.trainer.test_openai_compat import FakeServer

SHAPES = {"trailing newline": "{}\n", "CRLF": "{}\r\n", "leading space": " {}"}


def _pieces(text: str, key: str, size: int = 8) -> list[str]:
    return [key[i:i + size] for i in range(len(key) - size + 1) if key[i:i + size] in (text or "")]


@pytest.fixture
def chat_server():
    server = FakeServer()
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()
    server.server_close()


def _rewrite_events(events):
    return [e for e in events if type(e).__name__ == "QueryRewriteEvent"]


@pytest.mark.parametrize("shape", SHAPES)
async def test_the_transform_sends_a_file_read_key_stripped_and_never_shows_it(chat_server, events, caplog, shape):
    caplog.set_level(logging.DEBUG)
    key = f"sk-li-{shape[:4].strip()}-0123456789abcdef"
    chat_server.plan["q"] = [("echo", 401)] * 2
    async with OpenAIRewriter("m", base_url=chat_server.url, api_key=SHAPES[shape].format(key),
                              max_retries=0) as rewriter:
        transform = DeepRetrievalQueryTransform(rewriter=rewriter)
        assert transform.run(QueryBundle("fine")).query_str == "rewrite of fine"
        assert transform.run(QueryBundle("q")).query_str == "q"
        assert (await transform.arun(QueryBundle("q"))).query_str == "q"
    assert {r["auth"] for r in chat_server.requests} == {f"Bearer {key}"}
    fine, *echoed = _rewrite_events(events)
    assert not fine.fell_back and len(echoed) == 2
    assert all(e.fell_back and "HTTP 401" in e.reason and _pieces(e.reason, key) == [] for e in echoed)
    assert [r.getMessage() for r in caplog.records if _pieces(r.getMessage(), key)] == []


def test_a_custom_rewriters_error_or_reason_is_masked_in_the_event(events, caplog):
    from deepretrieval_trainer.common.redaction import register_secret

    key = "sk-custom-0123456789abcdef"
    register_secret(key + "\n")

    class Leaky:
        task = ScriptedRewriter().task

        def __init__(self, fail: bool):
            self.fail = fail

        def rewrite(self, queries, hits=None):
            if self.fail:
                raise RuntimeError(f"Illegal header value {('Bearer ' + key + chr(10)).encode()!r}")
            return [RewriteResult(q, q, True, f"upstream said: {key}") for q in queries]

        async def arewrite(self, queries, hits=None):
            return self.rewrite(queries)

    for fail in (True, False):
        assert DeepRetrievalQueryTransform(rewriter=Leaky(fail)).run(QueryBundle("q")).query_str == "q"
    reasons = [e.reason for e in _rewrite_events(events)]
    assert len(reasons) == 2 and all(r and _pieces(r, key) == [] for r in reasons), reasons
    assert [r.getMessage() for r in caplog.records if _pieces(r.getMessage(), key)] == []
