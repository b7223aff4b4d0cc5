"""Run in a subprocess by test_response_caps: one component reads a compression bomb from a loopback server; prints a
JSON line with the outcome and the growth of the process's peak resident memory (KiB) during that read.

``python -m tests.trainer.bomb_probe COMPONENT ENCODING MIB``: COMPONENT is ``openai`` or ``pubmed``; the body is a
valid answer followed by whitespace up to MIB mebibytes decoded. A normal answer is read first, so imports, the event
loop and the connection pool are in the baseline.
"""

from __future__ import annotations

import json
import resource
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from tests.trainer.compression import MiB, compressed

CHAT = b'{"choices": [{"index": 0, "message": {"role": "assistant", "content": "</think><answer>{\\"query\\": \\"bomb\\"}</answer>"}}]}'
ESEARCH = b'{"esearchresult": {"count": "1", "idlist": ["30000000"]}}'


def serve(bomb: tuple[str, bytes], normal: bytes) -> ThreadingHTTPServer:
    answers = [(None, normal), bomb]

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        def _answer(self):
            if self.headers.get("Content-Length"):
                self.rfile.read(int(self.headers["Content-Length"]))
            encoding, data = answers.pop(0) if len(answers) > 1 else answers[0]
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            if encoding:
                self.send_header("Content-Encoding", encoding)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            try:
                self.wfile.write(data)
            except (BrokenPipeError, ConnectionResetError):
                pass

        do_GET = do_POST = _answer

        def handle(self):
            try:
                super().handle()
            except (BrokenPipeError, ConnectionResetError):  # the client hung up mid-answer, as it should
                pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def peak_kib() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def main(component: str, encoding: str, mib: int) -> dict:
    head = CHAT if component == "openai" else ESEARCH
    server = serve(compressed(encoding, head, mib * MiB), head)
    url = f"http://127.0.0.1:{server.server_address[1]}/"
    if component == "openai":
        from deepretrieval_trainer.rewriting.openai_compat import OpenAIRewriter

        client = OpenAIRewriter("m", base_url=url + "v1", timeout=60, max_retries=0)
        assert not client.rewrite(["warm up"])[0].fell_back
        before = peak_kib()
        result = client.rewrite(["bomb"])[0]
        outcome = {"fell_back": result.fell_back, "reason": result.reason}
    else:
        from deepretrieval_trainer.literature.http import HttpPolicy
        from deepretrieval_trainer.literature.pubmed import PubMedSearch

        client = PubMedSearch(base_url=url, api_key="", policy=HttpPolicy(requests_per_second=100, timeout_s=60,
                                                                          max_retries=0))
        assert client.search(["warm up"], 1) == [["30000000"]]
        before = peak_kib()
        try:
            outcome = {"ids": client.search(["bomb"], 1)}
        except Exception as exc:
            outcome = {"error": f"{type(exc).__name__}: {exc}"}
    outcome["peak_growth_kib"] = peak_kib() - before
    client.close()
    return outcome


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1], sys.argv[2], int(sys.argv[3]))))
