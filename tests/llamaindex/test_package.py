"""The plugin package imports nothing heavy, and ``train`` is the trainer's, loaded on first use."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import llamaindex_deepretrieval

ROOT = Path(__file__).resolve().parents[2]


def test_import_loads_no_heavy_library():
    code = ("import sys, llamaindex_deepretrieval; "
            "heavy = [m for m in ('torch', 'transformers', 'trl', 'vllm', 'peft') if m in sys.modules]; "
            "assert not heavy, heavy")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


def test_train_is_the_trainers_and_other_names_fail():
    from deepretrieval_trainer.training import retrieval as grpo

    assert llamaindex_deepretrieval.train is grpo.train
    with pytest.raises(AttributeError, match="no attribute 'trian'"):
        llamaindex_deepretrieval.trian  # noqa: B018
