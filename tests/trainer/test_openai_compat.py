"""OpenAIRewriter against a real HTTP server on 127.0.0.1 that misbehaves on purpose (429, 5xx, slow, dropped
connections, garbage), then against a real vLLM server serving the embedded model with a LoRA adapter."""

from __future__ import annotations

import json
import threading
import time
from collections import defaultdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from deepretrieval_trainer.rewriting.openai_compat import OpenAIRewriter, choose_completion
from deepretrieval_trainer.rewriting.rewriters import RewriteError
from deepretrieval_trainer.rewriting.tasks import get_task
from tests.vllm_fixtures import SERVED_NAME


def answer(query: str) -> str:
    return f'done</think>\n<answer>{{"query": "{query}"}}</answer>'


class FakeServer(ThreadingHTTPServer):
    """Chat completions by script: ``plan[query]`` is a list of behaviours, one consumed per request for that query
    (then the default: a valid answer ``rewrite of <query>``). Records every request."""

    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), Handler)
        self.plan: dict[str, list] = defaultdict(list)
        self.requests: list[dict] = []
        self.trickled: list[tuple[int, int]] = []  # (bytes sent before the client hung up, body length)
        self.in_flight = 0
        self.max_in_flight = 0
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"

    def hits(self, query: str) -> int:
        return sum(1 for r in self.requests if r["body"]["messages"][-2]["content"].endswith(query))

    def handle_error(self, request, client_address):
        import sys

        if not isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):  # a client that hung up
            super().handle_error(request, client_address)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_POST(self):  # noqa: N802 - http.server's naming
        server: FakeServer = self.server
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        query = body["messages"][-2]["content"].removeprefix("Query: ")
        with server.lock:
            server.requests.append({"path": self.path, "body": body, "auth": self.headers.get("Authorization"),
                                    "headers": dict(self.headers)})
            step = server.plan[query].pop(0) if server.plan[query] else ("ok",)
            server.in_flight += 1
            server.max_in_flight = max(server.max_in_flight, server.in_flight)
        try:
            self.respond(step, query, body)
        finally:
            with server.lock:
                server.in_flight -= 1

    def respond(self, step, query, body):
        kind = step[0]
        if kind == "drop":  # close the connection without any answer
            self.close_connection = True
            self.connection.shutdown(2)
            return
        if kind == "sleep":
            time.sleep(step[1])
            kind, step = "ok", ("ok",)
        if kind == "ok":
            samples = step[1] if len(step) > 1 else [answer(f"rewrite of {query}")] * body["n"]
            self.send(200, {"choices": [{"index": i, "message": {"role": "assistant", "content": s}}
                                        for i, s in enumerate(samples)]})
        elif kind == "status":
            self.send(step[1], {"error": {"message": f"scripted {step[1]}"}}, step[2] if len(step) > 2 else {})
        elif kind == "raw":
            self.send(200, step[1])
        elif kind == "bytes":  # ("bytes", status, body bytes, headers): e.g. a compressed body
            self.send(step[1], step[2], step[3] if len(step) > 3 else {})
        elif kind == "trickle":  # a stalled server: a valid answer, one byte every step[1] seconds
            from tests.trainer.literature.loopback import trickle

            data = json.dumps({"choices": [{"index": 0, "message": {"role": "assistant",
                                                                     "content": answer("slow")}}]}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.server.trickled.append((trickle(self.wfile, data, step[1]), len(data)))
        elif kind == "echo":  # a misconfigured proxy repeating the request's headers in its error body
            self.send(step[1], {"error": {"message": f"bad credentials: {self.headers.get('Authorization')}"}})

    def send(self, status, payload, headers=None):
        if isinstance(payload, bytes):
            data = payload
        else:
            data = (payload if isinstance(payload, str) else json.dumps(payload)).encode("utf-8", "surrogatepass")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture
def server():
    fake = FakeServer()
    thread = threading.Thread(target=fake.serve_forever, daemon=True)
    thread.start()
    yield fake
    fake.shutdown()
    fake.server_close()


@pytest.fixture
def rewriter(server):
    with OpenAIRewriter("adapter-a", base_url=server.url, retry_backoff=0.01, timeout=5.0) as client:
        yield client


def test_request_continues_the_prefilled_assistant_turn(server, rewriter, monkeypatch):
    result = rewriter.rewrite(["bm25 tuning"])[0]
    assert (result.query, result.fell_back) == ("rewrite of bm25 tuning", False)
    sent = server.requests[0]
    body = sent["body"]
    assert sent["path"] == "/v1/chat/completions"
    assert body["model"] == "adapter-a" and body["n"] == 1 and body["max_tokens"] == 128
    assert body["messages"][:-1] == rewriter.task.messages("bm25 tuning")
    assert body["messages"][-1] == {"role": "assistant", "content": "<think>"}
    assert body["continue_final_message"] is True and body["add_generation_prompt"] is False
    assert sent["auth"] is None


def test_api_key_from_argument_then_environment(server, monkeypatch):
    monkeypatch.delenv("DEEPRETRIEVAL_API_KEY", raising=False)
    monkeypatch.setenv("OPENAI_API_KEY", "from-openai-env")
    with OpenAIRewriter("m", base_url=server.url) as client:
        client.rewrite(["a"])
    monkeypatch.setenv("DEEPRETRIEVAL_API_KEY", "from-our-env")
    with OpenAIRewriter("m", base_url=server.url) as client:
        client.rewrite(["b"])
    with OpenAIRewriter("m", base_url=server.url, api_key="given") as client:
        client.rewrite(["c"])
    assert [r["auth"] for r in server.requests] == ["Bearer from-openai-env", "Bearer from-our-env", "Bearer given"]


def test_429_and_5xx_are_retried_with_backoff(server, rewriter):
    server.plan["q1"] = [("status", 429, {"Retry-After": "0"}), ("status", 503)]
    result = rewriter.rewrite(["q1"])[0]
    assert (result.query, result.fell_back) == ("rewrite of q1", False)
    assert server.hits("q1") == 3


def test_retries_are_bounded_then_the_query_falls_back(server, rewriter, caplog):
    server.plan["q2"] = [("status", 500)] * 5
    result = rewriter.rewrite(["q2"])[0]
    assert result.fell_back and result.query == "q2"
    assert "HTTP 500" in result.reason and "after 3 attempt(s)" in result.reason
    assert server.hits("q2") == 3  # 1 + max_retries
    assert "fell back" in caplog.text and "HTTP 500" in caplog.text


def test_client_errors_are_not_retried(server, rewriter):
    server.plan["q3"] = [("status", 404)]
    result = rewriter.rewrite(["q3"])[0]
    assert result.fell_back and "HTTP 404" in result.reason and "/v1/models" in result.reason
    assert server.hits("q3") == 1


def test_timeout_per_request(server):
    server.plan["slow"] = [("sleep", 3.0)]
    with OpenAIRewriter("m", base_url=server.url, timeout=0.3, max_retries=0) as client:
        start = time.perf_counter()
        result = client.rewrite(["slow"])[0]
    assert result.fell_back and "within the 0.3s deadline" in result.reason and "raise timeout" in result.reason
    assert time.perf_counter() - start < 2.5


def test_dropped_connection_is_retried(server, rewriter):
    server.plan["flaky"] = [("drop",)]
    result = rewriter.rewrite(["flaky"])[0]
    assert not result.fell_back and server.hits("flaky") == 2


@pytest.mark.parametrize("garbage", ["<html>502 Bad Gateway</html>", {"choices": "nope"}, {"object": "error"},
                                     {"choices": [{"message": {"content": None}}]}, {"choices": []}])
def test_garbage_responses_fall_back(server, rewriter, garbage):
    server.plan["g"] = [("raw", garbage)]
    result = rewriter.rewrite(["g"])[0]
    assert result.fell_back and result.query == "g"
    assert "ServerError" in result.reason
    assert server.hits("g") == 1


def test_unparsable_model_text_falls_back_with_the_parse_reason(server, rewriter):
    server.plan["chatty"] = [("ok", ["I think you should search for cats"])]
    result = rewriter.rewrite(["chatty"])[0]
    assert result.fell_back and result.reason == "no <answer> tag in the completion"


def test_one_failing_query_does_not_drag_the_batch_down(server, rewriter):
    server.plan["bad"] = [("status", 500)] * 3
    results = rewriter.rewrite(["good one", "bad", "good two"])
    assert [r.fell_back for r in results] == [False, True, False]
    assert [r.query for r in results] == ["rewrite of good one", "bad", "rewrite of good two"]


def test_dead_server_never_raises_unless_strict():
    with OpenAIRewriter("m", base_url="http://127.0.0.1:9/v1", max_retries=1, retry_backoff=0.01) as client:
        result = client.rewrite(["q"])[0]
    assert result.fell_back and "cannot reach" in result.reason and "ConnectError" in result.reason
    with OpenAIRewriter("m", base_url="http://127.0.0.1:9/v1", max_retries=0, strict=True) as client:
        with pytest.raises(RewriteError, match="cannot reach"):
            client.rewrite(["q"])


def test_n_samples_first_valid_and_majority(server):
    samples = ["no answer here", answer("beta"), answer("alpha"), answer("Alpha "), answer("beta"), answer("alpha")]
    for choice, expected in [("first_valid", "beta"), ("majority", "alpha")]:
        server.plan["sampled"] = [("ok", samples)]
        with OpenAIRewriter("m", base_url=server.url, n=6, temperature=0.8, choice=choice) as client:
            result = client.rewrite(["sampled"])[0]
        assert (result.query, result.fell_back) == (expected, False), choice
        assert server.requests[-1]["body"]["n"] == 6


def test_choose_completion_falls_back_to_the_first_sample_when_none_parses():
    task = get_task("retrieval")
    assert choose_completion(task, ["x", "y"], "majority") == "x"
    assert choose_completion(task, [answer("a"), answer("b"), answer("b")], "majority") == answer("b")
    assert choose_completion(task, [answer("a"), answer("b")], "majority") == answer("a")  # tie: earliest


@pytest.mark.parametrize("kwargs, message", [
    ({"n": 3}, "temperature"), ({"timeout": 0}, "timeout=0"), ({"max_retries": -1}, "max_retries"),
    ({"base_url": "localhost:8000"}, "http"), ({"choice": "best"}, "choice"), ({"max_concurrency": 0}, "max_concurrency"),
])
def test_bad_settings_name_the_value_and_the_fix(kwargs, message):
    with pytest.raises(ValueError, match=message):
        OpenAIRewriter("m", **kwargs)


async def test_async_path_limits_concurrency_and_falls_back_per_query(server):
    for i in range(6):
        server.plan[f"q{i}"] = [("sleep", 0.2)]
    server.plan["q5"] = [("status", 500)] * 3
    async with OpenAIRewriter("m", base_url=server.url, max_concurrency=2, retry_backoff=0.01) as client:
        results = await client.arewrite([f"q{i}" for i in range(6)])
    assert [r.fell_back for r in results] == [False] * 5 + [True]
    assert results[0].query == "rewrite of q0" and "HTTP 500" in results[5].reason
    assert server.max_in_flight == 2


def test_sync_batch_runs_requests_concurrently(server):
    for i in range(4):
        server.plan[f"s{i}"] = [("sleep", 0.3)]
    with OpenAIRewriter("m", base_url=server.url, max_concurrency=4) as client:
        start = time.perf_counter()
        results = client.rewrite([f"s{i}" for i in range(4)])
    assert not any(r.fell_back for r in results)
    assert server.max_in_flight == 4
    assert time.perf_counter() - start < 1.0  # 4 x 0.3 s in parallel, not in series


async def test_the_same_client_serves_several_event_loops(server):
    client = OpenAIRewriter("m", base_url=server.url)
    assert not (await client.arewrite(["loop one"]))[0].fell_back
    result = await _in_new_loop(client)
    assert not result.fell_back
    await client.aclose()


async def _in_new_loop(client):
    import asyncio

    return await asyncio.to_thread(lambda: asyncio.run(client.arewrite(["loop two"]))[0])


# -- the real vLLM server ----------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.vllm
def test_real_vllm_continues_after_the_think_prefill(vllm_server, served_adapter):
    """vLLM's continue_final_message gives the same greedy text as the in-process model with the same adapter,
    started with the prefill: the server continues the <think> turn instead of opening a new one."""
    from deepretrieval_trainer.rewriting.rewriters import LocalRewriter

    queries = ["computer indexing of documents", "cost of library automation"]
    with OpenAIRewriter(SERVED_NAME, base_url=vllm_server.base_url, max_tokens=48) as client:
        served = client.rewrite(queries)
    local = LocalRewriter(adapter=served_adapter, max_new_tokens=48, dtype=vllm_server.config.dtype)
    in_process = [local._complete([local.task.messages(q)])[0] for q in queries]
    for result, text in zip(served, in_process, strict=True):
        assert result.completion is not None and not result.completion.startswith("<think>")
        # float32 on both sides; allow the tail to drift but the start must match
        assert result.completion[:40] == text[:40]


@pytest.mark.slow
@pytest.mark.vllm
async def test_real_vllm_sync_async_n_samples_and_unknown_model(vllm_server):
    queries = ["information retrieval evaluation", "automatic indexing"]
    async with OpenAIRewriter(SERVED_NAME, base_url=vllm_server.base_url, n=3, temperature=0.9,
                              choice="majority") as client:
        results = await client.arewrite(queries)
    assert [r.original for r in results] == queries
    assert all(r.completion for r in results)
    with OpenAIRewriter("not-served", base_url=vllm_server.base_url) as client:
        result = client.rewrite(["automatic indexing"])[0]
    assert result.fell_back and "HTTP 404" in result.reason and "not-served" in result.reason


def test_requests_stop_where_training_and_in_process_rewriting_stop():
    """The served completion ends at the task's stop string, as the trainer's samples and LocalRewriter's do."""
    rewriter = OpenAIRewriter("m", base_url="http://127.0.0.1:9/v1")
    body = rewriter.payload(rewriter.task.messages("a query"))
    assert body["stop"] == ["</answer>"] == list(get_task("retrieval").stop)
