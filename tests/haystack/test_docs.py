"""docs/haystack.md matches the code (every import, name, keyword, YAML component parameter, link and flag resolves:
tests/doc_checks.py); every python block runs, in order, in one namespace, from the project root; the YAML pipeline
block then loads with Pipeline.loads and runs against the store the python blocks filled."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from haystack import Pipeline
from haystack.components.retrievers.in_memory import InMemoryBM25Retriever

from haystack_deepretrieval import DeepRetrievalQueryRewriter
from tests import doc_checks
from tests.haystack.conftest import VALID_COMPLETION

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "haystack.md"


def blocks(language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", DOC.read_text(encoding="utf-8"), re.S | re.M)


def test_every_import_name_keyword_yaml_parameter_link_and_flag_in_the_doc_exists():
    problems = doc_checks.problems(DOC)
    assert not problems, "\n".join(problems)


@pytest.mark.slow
def test_every_block_runs(monkeypatch, capsys):
    import torch

    monkeypatch.chdir(ROOT)  # the doc reads ../shared/data relative to the project root
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # oversubscribed threads on a small CPU generate ~10x slower than one
    namespace: dict = {"__name__": "docs_haystack"}
    try:
        for number, block in enumerate(blocks("python"), start=1):
            exec(compile(block, f"{DOC}:python-block-{number}", "exec"), namespace)
        loaded = Pipeline.loads(blocks("yaml")[0])
        assert isinstance(loaded.get_component("rewriter"), DeepRetrievalQueryRewriter)
        result = loaded.run({"rewriter": {"query": namespace["claim"]}}, include_outputs_from={"rewriter"})
    finally:
        torch.set_num_threads(threads)
    out = capsys.readouterr().out
    assert "SciFact dev nDCG@10, raw queries: 0.6616" in out
    assert "fell_back: False" in out and "deepretrieval_trainer.training.retrieval" in out
    assert "DeepRetrievalQueryRewriter True" in out
    assert "'type': 'env_var'" in out
    assert "same ranking as the reward: True" in out  # the fuse pipeline serves what the reward scored
    first_rewrite = re.search(r"^rewrite: (.*)$", out, re.M).group(1)
    assert f"async rewrite: {first_rewrite}" in out
    assert result["rewriter"]["query"] == first_rewrite  # the YAML pipeline: same model, same greedy rewrite
    assert result["retriever"]["documents"]
    assert re.search(r"ADI nDCG@10, MiniLM: 0\.\d{4}", out)


@pytest.mark.parametrize("completion", [VALID_COMPLETION % "document indexing by computer", "no answer at all"])
def test_the_fuse_block_serves_the_reward_ranking(adi_store, scripted_rewriter, completion, capsys):
    """The fuse block without the model (test_every_block_runs runs it with the model): the earlier blocks' names,
    a scripted rewriter in place of DeepRetrievalQueryRewriter(max_tokens=64), a rewrite and a fallback."""
    [block] = [block for block in blocks("python") if "QueryFusionJoiner(" in block]

    def scripted(**kwargs) -> DeepRetrievalQueryRewriter:
        assert kwargs == {"max_tokens": 64}
        return DeepRetrievalQueryRewriter.from_rewriter(scripted_rewriter(completion))

    namespace = {"Pipeline": Pipeline, "InMemoryBM25Retriever": InMemoryBM25Retriever, "store": adi_store,
                 "DeepRetrievalQueryRewriter": scripted, "claim": "How can documents be indexed automatically?"}
    exec(compile(block, f"{DOC}:fuse-block", "exec"), namespace)
    assert len(namespace["fused"]) == 10
    assert namespace["result"]["rewriter"]["meta"]["fell_back"] is ("<answer>" not in completion)
    assert "same ranking as the reward: True" in capsys.readouterr().out
