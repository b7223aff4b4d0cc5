"""Shared fixtures: the real collections in ../shared/data (read-only), the real embedded model, and two small
BaseRewriter backends that exercise the real prompt/parse/fallback path with scripted completions or failures."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from deepretrieval_trainer.retrieval.data import load_beir
from deepretrieval_trainer.rewriting.rewriters import BaseRewriter

# the session-scoped real vLLM server (one start per test session, shared by every test that needs it)
pytest_plugins = ["tests.vllm_fixtures", "tests.postgres_fixtures"]  # and a throwaway PostgreSQL server

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

DATA = Path(os.environ.get("DEEPRETRIEVAL_DATA", Path(__file__).resolve().parents[1].parent / "shared" / "data"))


def collection_path(name: str) -> Path:
    path = DATA / name
    if not path.is_dir():
        raise RuntimeError(f"{path} is missing: tests need ../shared/data beside the repository (or DEEPRETRIEVAL_DATA)")
    return path


@pytest.fixture(scope="session")
def data_dir() -> Path:
    return DATA


@pytest.fixture(scope="session")
def scifact_dev():
    return load_beir(collection_path("scifact"), "dev")


@pytest.fixture(scope="session")
def adi_test():
    return load_beir(collection_path("adi"), "test")


@pytest.fixture(scope="session")
def local_rewriter():
    """The embedded SmolLM2 model in-process (greedy, 64 new tokens). Slow: use in tests marked slow."""
    from deepretrieval_trainer.rewriting.rewriters import LocalRewriter

    rewriter = LocalRewriter(max_new_tokens=64, strict=True)
    rewriter.load()
    return rewriter


class ScriptedRewriter(BaseRewriter):
    """Returns the given completion text for every query (parsed by the real parser)."""

    def __init__(self, completion: str = '</think>\n<answer>{"query": "scripted rewrite"}</answer>', **kwargs):
        super().__init__(**kwargs)
        self.completion = completion
        self.calls: list[list] = []

    def _complete(self, conversations):
        self.calls.append(conversations)
        return [self.completion for _ in conversations]


class FailingRewriter(BaseRewriter):
    """A backend that always raises, like a dead server."""

    def _complete(self, conversations):
        raise ConnectionError("backend unreachable")


@pytest.fixture
def scripted_rewriter():
    return ScriptedRewriter


@pytest.fixture
def failing_rewriter():
    return FailingRewriter()


_SAMPLE_IN_FRESH_PROCESS = textwrap.dedent("""
    import json, resource, sys
    from deepretrieval_trainer.retrieval.documents import sample_documents
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    sample = sample_documents(sys.argv[1], 20)
    print(json.dumps({"grown_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before, **sample.report()}))
""")


def sample_twenty_in_a_fresh_process(documents: str) -> dict:
    """``sample_documents(documents, 20)``'s report in a new interpreter, with how much its peak memory grew
    (``grown_kb``): a process of its own, so nothing the test process holds counts."""
    result = subprocess.run([sys.executable, "-c", _SAMPLE_IN_FRESH_PROCESS, documents], capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout.strip().splitlines()[-1])
