"""docs/training.md's section "Training without judgments": every python block runs, in order, in one namespace,
from the project root, on ADI (the doc's names, links and flags are checked with the rest of the doc in
tests/test_docs.py)."""

from __future__ import annotations

import re

from tests.doc_checks import ROOT

DOC = ROOT / "docs" / "training.md"
SECTION = "## Training without judgments"
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def section_blocks() -> list[str]:
    text = DOC.read_text(encoding="utf-8")
    start = text.index(SECTION)
    end = text.find("\n## ", start + len(SECTION))
    return BLOCK.findall(text[start:end if end != -1 else len(text)])


def test_every_python_block_of_the_section_runs(monkeypatch, capsys, tmp_path):
    monkeypatch.chdir(ROOT)  # the doc reads ../shared/data relative to the project root
    monkeypatch.setenv("TMPDIR", str(tmp_path))  # where the doc's tempfile.mkdtemp() persists its index
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)
    blocks = section_blocks()
    assert len(blocks) == 3
    namespace: dict = {"__name__": "docs_training_without_judgments"}
    for number, block in enumerate(blocks, start=1):
        exec(compile(block, f"{DOC}:without-judgments-block{number}", "exec"), namespace)
    out = capsys.readouterr().out
    assert out.count("pseudo-queries kept (crop, 82 documents sampled of 82 usable)") == 3
    assert "[rank " in out
    assert namespace["labels"].rows and namespace["saved"].pairs
    roomy = namespace["roomy"]  # the headroom check keeps fewer pairs, each one RM3 ranks higher
    kept = re.search(r"(\d+) of (\d+) pairs kept where RM3 ranks the document higher", out)
    assert kept and 0 < int(kept[1]) == len(roomy.pairs) < int(kept[2])
    assert all(p.prf_rank < p.rank for p in roomy.pairs)
    assert (tmp_path / namespace["persist_dir"].split("/")[-1] / "store.json").is_file()
