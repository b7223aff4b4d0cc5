"""Pipeline YAML with DeepRetrievalQueryRewriter: dumps -> loads -> runs, in this process and in fresh ones, against
Haystack 3's deserialization allowlist."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

from haystack import Pipeline
from haystack.components.retrievers.in_memory import InMemoryBM25Retriever

from haystack_deepretrieval import DeepRetrievalQueryRewriter
from tests.haystack.conftest import VALID_COMPLETION

ROOT = Path(__file__).resolve().parents[2]


def bm25_pipeline(rewriter: DeepRetrievalQueryRewriter, store) -> Pipeline:
    pipe = Pipeline()
    pipe.add_component("rewriter", rewriter)
    pipe.add_component("retriever", InMemoryBM25Retriever(document_store=store, top_k=5))
    pipe.connect("rewriter.query", "retriever.query")
    return pipe


def test_yaml_round_trip_loads_and_runs(chat_server, adi_store):
    chat_server.completion = VALID_COMPLETION % "information retrieval indexing"
    rewriter = DeepRetrievalQueryRewriter(backend="openai", model="adi-lora", base_url=chat_server.base_url,
                                          max_retries=0, include_original=False, temperature=0.0)
    text = bm25_pipeline(rewriter, adi_store).dumps()
    assert "type: haystack_deepretrieval.component.DeepRetrievalQueryRewriter" in text

    loaded = Pipeline.loads(text)
    assert loaded.to_dict() == Pipeline.loads(loaded.dumps()).to_dict()
    assert loaded.get_component("rewriter").to_dict() == rewriter.to_dict()
    out = loaded.run({"rewriter": {"query": "How to index documents?"}}, include_outputs_from={"rewriter"})
    assert out["rewriter"]["queries"] == ["information retrieval indexing"]
    direct = InMemoryBM25Retriever(document_store=adi_store, top_k=5).run(query="information retrieval indexing")
    assert [d.id for d in out["retriever"]["documents"]] == [d.id for d in direct["documents"]]
    assert chat_server.requests[0]["model"] == "adi-lora"


FRESH_PROCESS = textwrap.dedent("""
    import json, sys
    from haystack import Pipeline
    from haystack.core.errors import DeserializationError
    text = open(sys.argv[1]).read()
    report = {}
    if sys.argv[2] == "plain":
        try:
            Pipeline.loads(text)
            report["plain"] = "loaded"
        except DeserializationError as exc:
            report["plain"] = str(exc)
        from haystack_deepretrieval import DeepRetrievalQueryRewriter  # the documented line
        pipe = Pipeline.loads(text)
    else:
        pipe = Pipeline.loads(text, allowed_modules=["haystack_deepretrieval"])
    out = pipe.run({"rewriter": {"query": "How to index documents?"}}, include_outputs_from={"rewriter"})
    report["rewriter"] = out["rewriter"]["meta"]
    report["documents"] = len(out["retriever"]["documents"])
    print(json.dumps(report))
""")


def run_fresh(yaml_file: Path, mode: str) -> dict:
    done = subprocess.run([sys.executable, "-c", FRESH_PROCESS, str(yaml_file), mode], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_fresh_process_loads_after_using_the_plugin(tmp_path, closed_port_url, adi_store):
    rewriter = DeepRetrievalQueryRewriter(backend="openai", model="m", base_url=closed_port_url, max_retries=0)
    yaml_file = tmp_path / "pipeline.yaml"
    yaml_file.write_text(bm25_pipeline(rewriter, adi_store).dumps())

    report = run_fresh(yaml_file, "plain")
    # Haystack refuses the module until the plugin is imported (nothing registers it before): that is the line
    # docs/haystack.md tells YAML-only services to add.
    assert "haystack_deepretrieval" in report["plain"] and "allowlist" in report["plain"]
    assert report["rewriter"]["fell_back"] is True and "cannot reach" in report["rewriter"]["reason"]
    assert report["documents"] == 0  # a fresh process has an empty in-memory store: it ran, found nothing


def test_fresh_process_loads_with_allowed_modules(tmp_path, closed_port_url, adi_store):
    rewriter = DeepRetrievalQueryRewriter(backend="openai", model="m", base_url=closed_port_url, max_retries=0)
    yaml_file = tmp_path / "pipeline.yaml"
    yaml_file.write_text(bm25_pipeline(rewriter, adi_store).dumps())
    report = run_fresh(yaml_file, "allowed_modules")
    assert report["rewriter"]["fell_back"] is True
