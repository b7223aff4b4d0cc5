"""The package imports nothing heavy, and its public names load on first use."""

from __future__ import annotations

import subprocess
import sys

import pytest

import haystack_deepretrieval


def test_import_loads_neither_torch_nor_haystack():
    code = ("import sys, haystack_deepretrieval; "
            "assert 'torch' not in sys.modules and 'haystack' not in sys.modules, sorted(sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]


def test_public_names_load_lazily():
    from deepretrieval_trainer.training import retrieval as grpo
    from haystack_deepretrieval.component import DeepRetrievalQueryRewriter
    from haystack_deepretrieval.search import HaystackSearch

    assert haystack_deepretrieval.DeepRetrievalQueryRewriter is DeepRetrievalQueryRewriter
    assert haystack_deepretrieval.HaystackSearch is HaystackSearch
    assert haystack_deepretrieval.train is grpo.train
    assert set(haystack_deepretrieval.__all__) <= set(dir(haystack_deepretrieval))
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        haystack_deepretrieval.nope  # noqa: B018
