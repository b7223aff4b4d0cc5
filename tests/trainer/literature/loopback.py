"""A real HTTP server on 127.0.0.1 (port 0) answering like PubMed esearch and ClinicalTrials.gov API v2.

Formats follow the services' documentation: esearch JSON is ``{"header": ..., "esearchresult": {"count",
"retmax", "retstart", "idlist", ...}}`` (numbers as strings); /studies is ``{"studies": [{"protocolSection":
{"identificationModule": {"nctId": ...}}}], "nextPageToken": ...}``. A test queues scripted answers (429 with
Retry-After, 500, malformed JSON, ...) that are served before the fake service's own answers, and reads back every
request (path, parameters, arrival time).
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit


@dataclass
class Request:
    path: str
    params: dict[str, str]
    time: float
    headers: dict[str, str] | None = None


@dataclass
class Answer:
    status: int = 200
    body: object = None  # dict/list -> JSON; str -> sent as is; bytes -> sent as is (e.g. compressed: see headers)
    headers: dict | None = None
    trickle_s: float | None = None  # send the body one byte every trickle_s seconds (a stalled server)


class Loopback:
    def __init__(self, service) -> None:
        self.service = service  # (path, params) -> Answer
        self.script: deque[Answer] = deque()
        self.requests: list[Request] = []
        self.trickled: list[tuple[int, int]] = []  # (body bytes sent before the client hung up, body length)
        self._lock = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (http.server's name)
                parts = urlsplit(self.path)
                params = {key: values[-1] for key, values in parse_qs(parts.query, keep_blank_values=True).items()}
                with owner._lock:
                    owner.requests.append(Request(parts.path, params, time.monotonic(), dict(self.headers)))
                    answer = owner.script.popleft() if owner.script else None
                answer = answer or owner.service(parts.path, params)
                if isinstance(answer.body, bytes):
                    data = answer.body
                else:
                    body = answer.body if isinstance(answer.body, str) else json.dumps(answer.body)
                    data = body.encode("utf-8", "surrogatepass")
                self.send_response(answer.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for key, value in (answer.headers or {}).items():
                    self.send_header(key, value)
                self.end_headers()
                if answer.trickle_s is None:
                    self.wfile.write(data)
                else:
                    owner.trickled.append((trickle(self.wfile, data, answer.trickle_s), len(data)))

            def handle(self):
                try:
                    super().handle()
                except (BrokenPipeError, ConnectionResetError):  # a client that stopped reading an answer
                    pass

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/"
        self.thread = threading.Thread(target=lambda: self.server.serve_forever(poll_interval=0.05), daemon=True)

    def __enter__(self) -> Loopback:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    def queue(self, *answers: Answer) -> None:
        self.script.extend(answers)


def trickle(stream, data: bytes, seconds: float) -> int:
    """Write ``data`` one byte every ``seconds``; return how many bytes went out before the reader hung up."""
    sent = 0
    try:
        for byte in data:
            stream.write(bytes([byte]))
            stream.flush()
            sent += 1
            time.sleep(seconds)
    except (BrokenPipeError, ConnectionResetError):
        pass
    return sent


def pubmed_ids(n: int) -> list[str]:
    return [str(30_000_000 + i) for i in range(n)]


def fake_esearch(ids: list[str]):
    """esearch over a fixed result list; the term "nothing" has no results, "bad query" gets an ERROR."""

    def answer(path: str, params: dict[str, str]) -> Answer:
        if not path.endswith("/esearch.fcgi"):
            return Answer(404, "not found")
        if params.get("term") == "bad query":
            return Answer(200, {"header": {"type": "esearch", "version": "0.3"},
                                "esearchresult": {"ERROR": "Invalid query syntax"}})
        found = [] if params.get("term") == "nothing" else ids
        start, size = int(params.get("retstart", 0)), int(params.get("retmax", 20))
        page = found[start:start + size]
        return Answer(200, {"header": {"type": "esearch", "version": "0.3"}, "esearchresult": {
            "count": str(len(found)), "retmax": str(len(page)), "retstart": str(start), "idlist": page,
            "translationset": [], "querytranslation": params.get("term", "")}})

    return answer


def nct_ids(n: int) -> list[str]:
    return [f"NCT{i:08d}" for i in range(1, n + 1)]


def fake_studies(ids: list[str]):
    """/studies over a fixed result list, paged by an opaque token; "nothing" has no results."""

    def answer(path: str, params: dict[str, str]) -> Answer:
        if not path.endswith("/studies"):
            return Answer(404, "not found")
        found = [] if params.get("query.term") == "nothing" else ids
        start = int(params["pageToken"].removeprefix("tok")) if "pageToken" in params else 0
        size = int(params.get("pageSize", 10))
        page = found[start:start + size]
        body = {"studies": [{"protocolSection": {"identificationModule": {"nctId": nct}}} for nct in page]}
        if start + size < len(found):
            body["nextPageToken"] = f"tok{start + size}"
        return Answer(200, body)

    return answer
