"""docs/llamaindex.md matches the code (every import, name, keyword, link and flag resolves: tests/doc_checks.py),
and every python block runs, in order, in one namespace, from the project root."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from llama_index.core.instrumentation import get_dispatcher

from tests import doc_checks

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "llamaindex.md"
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def python_blocks() -> list[str]:
    return BLOCK.findall(DOC.read_text(encoding="utf-8"))


def test_every_import_name_keyword_link_and_flag_in_the_doc_exists():
    problems = doc_checks.problems(DOC)
    assert not problems, "\n".join(problems)


@pytest.mark.slow
def test_every_python_block_runs(monkeypatch, capsys):
    monkeypatch.chdir(ROOT)  # the doc reads ../shared/data relative to the project root
    root = get_dispatcher()
    handlers = list(root.event_handlers)
    namespace: dict = {"__name__": "docs_llamaindex"}
    try:
        for number, block in enumerate(python_blocks(), start=1):
            exec(compile(block, f"{DOC}:block{number}", "exec"), namespace)
    finally:
        root.event_handlers[:] = handlers  # the doc attaches a handler to the root dispatcher
    out = capsys.readouterr().out
    assert "SciFact dev nDCG@10, raw queries: 0.7050" in out
    assert "fell_back=" in out and "deepretrieval_trainer.training.retrieval" in out
