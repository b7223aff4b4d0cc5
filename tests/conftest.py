"""Shared fixtures: the real collections in ../shared/data (read-only), the real embedded model, and two small
BaseRewriter backends that exercise the real prompt/parse/fallback path with scripted completions or failures."""

from __future__ import annotations

import os
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
