"""Issue 16's two timing probes, against whichever deepretrieval_trainer is importable (see docs/benchmarks.md).

1. parse_answer on the adversarial completions of the probe (quadratic before the fix).
2. A PubMed request with timeout_s=1.0 against a loopback server trickling a valid answer at 0.25 s per byte.

    python benchmarks/hardening.py
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from deepretrieval_trainer.literature.http import HttpPolicy
from deepretrieval_trainer.literature.pubmed import PubMedSearch
from deepretrieval_trainer.rewriting.answer import parse_answer

BODY = json.dumps({"esearchresult": {"count": "0", "idlist": []}}).encode()
COMPLETIONS = {
    "<think>*14000 + answer (98k chars)": "<think>" * 14000 + "<answer>q</answer>",
    "answer with a 90k-space run": "<answer>x" + " " * 90000 + "x</answer>",
    "<think>*30000 + answer (210k chars)": "<think>" * 30000 + "<answer>q</answer>",
}


class Trickle(BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 - http.server's name
        self.send_response(200)
        self.send_header("Content-Length", str(len(BODY)))
        self.end_headers()
        try:
            for byte in BODY:
                self.wfile.write(bytes([byte]))
                self.wfile.flush()
                time.sleep(0.25)
        except OSError:
            pass

    def log_message(self, *args):
        pass


def main() -> None:
    for name, text in COMPLETIONS.items():
        start = time.perf_counter()
        parse_answer(text)
        print(f"parse_answer, {name}: {time.perf_counter() - start:.4f} s")
    server = ThreadingHTTPServer(("127.0.0.1", 0), Trickle)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    engine = PubMedSearch(base_url=f"http://127.0.0.1:{server.server_address[1]}/", api_key="",
                          policy=HttpPolicy(requests_per_second=100, timeout_s=1.0, max_retries=0))
    start = time.perf_counter()
    try:
        engine.search(["aspirin"], 5)
        outcome = "answered"
    except Exception as exc:  # noqa: BLE001 - the outcome is what is measured
        outcome = type(exc).__name__
    print(f"PubMed timeout_s=1.0, 0.25 s/byte trickle of {len(BODY)} bytes: {outcome} after "
          f"{time.perf_counter() - start:.2f} s")


if __name__ == "__main__":
    main()
