"""benchmarks/dense_baseline.py on ADI: MiniLM through a LlamaIndex VectorStoreIndex beside BM25, one table row each."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # embeds a collection with all-MiniLM-L6-v2

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "dense_baseline.py"


def test_dense_and_bm25_rows_with_their_costs(data_dir, monkeypatch):
    spec = importlib.util.spec_from_file_location("dense_baseline", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(module, "DATA", data_dir)
    bm25, dense = module.rows_for("adi", None, threads=1, split="test")
    cells = [[c.strip() for c in row.strip("|").split("|")] for row in (bm25, dense)]
    assert cells[0][:2] == ["adi test (35)", "BM25 (LlamaIndex BM25Retriever)"] and cells[0][4] == "-"
    assert cells[1][1] == "all-MiniLM-L6-v2 (VectorStoreIndex)"
    for row in cells:
        ndcg, recall, built, cost = float(row[2]), float(row[3]), float(row[5]), float(row[6])
        assert 0.1 < ndcg < 1 and 0.3 < recall <= 1 and built >= 0 and cost > 0
    assert re.fullmatch(r"\d[0-9.e-]*", cells[1][4])  # the paired p-value of dense vs BM25
    assert float(cells[1][5]) > float(cells[0][5])  # embedding the corpus costs more than a BM25 index
