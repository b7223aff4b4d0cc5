"""Real Haystack components over the shared collections, a real recording retriever, and a tiny real
OpenAI-compatible HTTP server on loopback that answers with scripted completion text."""

from __future__ import annotations

import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from haystack import Document, component
from haystack.components.retrievers.in_memory import InMemoryBM25Retriever
from haystack.document_stores.in_memory import InMemoryDocumentStore

from haystack_deepretrieval import HaystackSearch, beir_documents
from tests.conftest import collection_path

VALID_COMPLETION = '</think>\n<answer>{"query": "%s"}</answer>'


@component
class RecordingBM25Retriever(InMemoryBM25Retriever):
    """A real InMemoryBM25Retriever that also keeps every query it receives, to show what reached the retriever."""

    def __init__(self, **kwargs: Any) -> None:
        InMemoryBM25Retriever.__init__(self, **kwargs)  # @component rebuilds the class: no zero-arg super()
        self.received: list[str] = []

    @component.output_types(documents=list[Document])
    def run(self, query: str, filters: dict[str, Any] | None = None, top_k: int | None = None,
            scale_score: bool | None = None) -> dict[str, list[Document]]:
        self.received.append(query)
        return InMemoryBM25Retriever.run(self, query=query, filters=filters, top_k=top_k, scale_score=scale_score)

    @component.output_types(documents=list[Document])
    async def run_async(self, query: str, filters: dict[str, Any] | None = None, top_k: int | None = None,
                        scale_score: bool | None = None) -> dict[str, list[Document]]:
        self.received.append(query)
        return await InMemoryBM25Retriever.run_async(self, query=query, filters=filters, top_k=top_k, scale_score=scale_score)


@pytest.fixture(scope="session")
def scifact_search() -> HaystackSearch:
    """InMemoryDocumentStore (BM25L, Haystack's defaults) + InMemoryBM25Retriever over SciFact."""
    return HaystackSearch.from_beir(collection_path("scifact"))


@pytest.fixture(scope="session")
def scifact_store(scifact_search) -> InMemoryDocumentStore:
    return scifact_search.retriever.document_store


@pytest.fixture(scope="session")
def adi_store() -> InMemoryDocumentStore:
    store = InMemoryDocumentStore(index="deepretrieval-tests-adi")
    store.write_documents(beir_documents(collection_path("adi")))
    return store


class ChatServer:
    """An OpenAI-compatible ``/v1/chat/completions`` endpoint on 127.0.0.1 that answers ``completion``."""

    def __init__(self) -> None:
        self.completion = VALID_COMPLETION % "scripted rewrite"
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                server.requests.append(body)
                server.headers.append(dict(self.headers))
                reply = {"id": "1", "object": "chat.completion", "model": body["model"],
                         "choices": [{"index": 0, "finish_reason": "stop",
                                      "message": {"role": "assistant", "content": server.completion}}]}
                data = json.dumps(reply).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base_url = f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    def __enter__(self) -> ChatServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


@pytest.fixture
def chat_server():
    with ChatServer() as server:
        yield server


@pytest.fixture
def closed_port_url() -> str:
    """A loopback URL nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"
