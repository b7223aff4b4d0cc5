"""The docs match the code: every relative link and anchor, every dotted name and import of our packages, every
keyword passed to our callables, every YAML component parameter and every ``deepretrieval`` flag resolves
(tests/doc_checks.py). docs/llamaindex.md, docs/haystack.md and docs/sql.md are checked beside their plugins'
tests; the experiment entries record commands as they were run on their dates, so only their links are checked."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from tests import doc_checks
from tests.doc_checks import ROOT

CHECKED_BESIDE_THEIR_TESTS = {"docs/llamaindex.md", "docs/haystack.md", "docs/sql.md"}
DOCS = sorted(path.relative_to(ROOT).as_posix() for path in [ROOT / "README.md", *(ROOT / "docs").glob("*.md")]
              if path.relative_to(ROOT).as_posix() not in CHECKED_BESIDE_THEIR_TESTS)
EXPERIMENTS = sorted(path.relative_to(ROOT).as_posix() for path in (ROOT / "docs" / "experiments").glob("*.md"))
KNOWN: dict[tuple[str, str], str] = {}  # (doc, check) -> a mismatch being fixed; strict xfail: fails once fixed


def _cases():
    for doc in DOCS:
        for check in doc_checks.CHECKS:
            marks = [pytest.mark.xfail(strict=True, reason=KNOWN[doc, check])] if (doc, check) in KNOWN else []
            yield pytest.param(doc, check, marks=marks, id=f"{doc}:{check}")
    for doc in EXPERIMENTS:
        yield pytest.param(doc, "links", id=f"{doc}:links")


PENDING_REFERENCES: set[tuple[str, str]] = set()  # (file, reference) being reworded; the test allows only these
SOURCES = ("trainer", "llamaindex_deepretrieval", "haystack_deepretrieval", "tests", "scripts")


@pytest.mark.parametrize(("doc", "check"), list(_cases()))
def test_the_doc_matches_the_code(doc, check):
    problems = doc_checks.problems(ROOT / doc, check)
    assert not problems, "\n".join(problems)


def test_each_check_reports_what_no_longer_matches(tmp_path):
    (tmp_path / "other.md").write_text("# Target\n", encoding="utf-8")
    doc = tmp_path / "doc.md"
    doc.write_text(textwrap.dedent("""\
        # Title
        ## A section: `code`, twice
        ## A section: `code`, twice
        [ok](other.md#target) [ok](#a-section-code-twice-1) ![ok](other.md) [ok](https://example.org/x.md#y)
        [gone](missing.md) [no such heading](other.md#nowhere) `[in code](missing.md)`
        `deepretrieval_trainer.training.config.TrainConfig.max_steps` `deepretrieval_trainer.training.config.Nothing`

        ```python
        from deepretrieval_trainer.training.config import TrainConfig, NoSuchConfig
        config = TrainConfig(max_steps=2, no_such_field=1)
        ```

        ```python
        from haystack_deepretrieval import (
            HaystackSearch,
            QueryFusionJoiner,
            NoSuchJoiner,
        )
        joiner = QueryFusionJoiner(query_weight=3, weight=1)
        search = HaystackSearch.from_beir("../shared/data/adi", no_such_option=2)
        other = HaystackSearch.from_nowhere("x")
        ```

        ```yaml
        components:
          rewriter:
            type: haystack_deepretrieval.component.DeepRetrievalQueryRewriter
            init_parameters: {max_tokens: 64, no_such_parameter: 1}
        ```

        ```bash
        deepretrieval -v train --max-steps 2 --data-max-hardness easy --no-dtype-flag bf16 \\
            --no-such-flag 1   # --not-checked: a comment
        deepretrieval eval --source server:http://127.0.0.1:8000/v1#rw --limit 4 | tee out.txt --not-a-flag
        deepretrieval literature-data convert x --split dev --no-such-convert-flag
        deepretrieval no-such-command --x
        ```
        """), encoding="utf-8")
    found = {check: doc_checks.problems(doc, check) for check in doc_checks.CHECKS}
    assert [p.split(": ")[1] for p in found["links"]] == ["link to missing.md", "link to other.md#nowhere"]
    assert len(found["names"]) == 1 and "config.Nothing does not resolve" in found["names"][0]
    assert [p.split(": ", 1)[1] for p in found["imports"]] == [
        "from deepretrieval_trainer.training.config import NoSuchConfig: "
        "deepretrieval_trainer.training.config has no 'NoSuchConfig'",
        "from haystack_deepretrieval import NoSuchJoiner: haystack_deepretrieval has no 'NoSuchJoiner'"]
    assert [p.rsplit(": ", 1)[1] for p in found["keywords"]] == [
        "deepretrieval_trainer.training.config.TrainConfig has no parameter 'no_such_field'",
        "haystack_deepretrieval.QueryFusionJoiner has no parameter 'weight'",  # a @component class: read from __init__
        "haystack_deepretrieval.HaystackSearch.from_beir has no parameter 'no_such_option'",
        "haystack_deepretrieval.HaystackSearch has no attribute 'from_nowhere'"]
    assert len(found["yaml"]) == 1 and "no init parameter 'no_such_parameter'" in found["yaml"][0]
    assert [p.rsplit(": ", 1)[1] for p in found["flags"]] == [
        "deepretrieval train has no flag --no-dtype-flag", "deepretrieval train has no flag --no-such-flag",
        "deepretrieval literature-data convert has no flag --no-such-convert-flag", "no command 'no-such-command'"]


def test_every_doc_and_heading_the_code_points_to_exists():
    broken = {(path.relative_to(ROOT).as_posix(), reference): reason
              for folder in SOURCES for path in sorted((ROOT / folder).rglob("*.py"))
              if path != Path(__file__).resolve()  # PENDING_REFERENCES names them
              for reference, reason in doc_checks.broken_doc_references(path)}
    assert set(broken) <= PENDING_REFERENCES, {k: v for k, v in broken.items() if k not in PENDING_REFERENCES}
