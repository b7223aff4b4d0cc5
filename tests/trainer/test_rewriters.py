import asyncio
import logging

import pytest
import torch

from deepretrieval_trainer.rewriting.rewriters import LocalRewriter, RewriteError, RewriteResult


def test_scripted_rewrite_is_parsed(scripted_rewriter):
    rewriter = scripted_rewriter()
    [result] = rewriter.rewrite(["original query"])
    assert result == RewriteResult("original query", "scripted rewrite", False, None, result.completion, result.latency_s)
    assert result.rewritten == "scripted rewrite"
    # The backend received the task's messages, ending with the user's query.
    assert rewriter.calls[0][0][-1]["content"] == "Query: original query"


def test_unparsable_text_falls_back_with_reason(scripted_rewriter, caplog):
    rewriter = scripted_rewriter(completion="I cannot help with that")
    with caplog.at_level(logging.WARNING):
        [result] = rewriter.rewrite(["keep me"])
    assert result.fell_back and result.query == "keep me" and result.rewritten is None
    assert "no <answer>" in result.reason
    assert "keep me" in caplog.text and "no <answer>" in caplog.text


def test_backend_failure_falls_back(failing_rewriter, caplog):
    with caplog.at_level(logging.WARNING):
        results = failing_rewriter.rewrite(["a", "b"])
    assert [r.query for r in results] == ["a", "b"]
    assert all(r.fell_back and "ConnectionError" in r.reason for r in results)
    assert "backend unreachable" in caplog.text


def test_async_paths(scripted_rewriter, failing_rewriter):
    [ok] = asyncio.run(scripted_rewriter().arewrite(["q"]))
    assert ok.query == "scripted rewrite"
    [failed] = asyncio.run(failing_rewriter.arewrite(["q"]))
    assert failed.fell_back and failed.query == "q"


def test_strict_raises(scripted_rewriter):
    with pytest.raises(RewriteError, match="unparsable"):
        scripted_rewriter(completion="garbage", strict=True).rewrite(["q"])
    from tests.conftest import FailingRewriter

    with pytest.raises(RewriteError, match="backend unreachable"):
        FailingRewriter(strict=True).rewrite(["q"])


def test_input_errors(scripted_rewriter):
    with pytest.raises(TypeError, match=r"wrap a single query as \[query\]"):
        scripted_rewriter().rewrite("a string")
    with pytest.raises(ValueError, match="empty"):
        scripted_rewriter().rewrite([" "])


def test_pico_query_input(scripted_rewriter):
    rewriter = scripted_rewriter(task="literature")
    [result] = rewriter.rewrite([{"P": "older women", "I": "vitamin D"}])
    assert result.original == "older women vitamin D"
    assert rewriter.calls[0][0][-1]["content"] == "Population: older women\nIntervention: vitamin D"


def test_local_rewriter_validates_before_loading(tmp_path):
    with pytest.raises(FileNotFoundError, match="adapter_config.json"):
        LocalRewriter(adapter=tmp_path)
    with pytest.raises(ValueError, match="temperature"):
        LocalRewriter(temperature=-1)
    assert LocalRewriter()._model is None


@pytest.mark.slow
def test_local_rewriter_real_model(local_rewriter):
    queries = ["does vitamin D reduce fractures in older women", "aspirin and colon cancer risk"]
    results = local_rewriter.rewrite(queries)
    assert [r.original for r in results] == queries
    for result in results:  # strict: a parse failure would have raised
        assert not result.fell_back and result.query.strip()
        assert "</answer>" in result.completion or '"query"' in result.completion
    # Greedy decoding is deterministic, batched or not, sync or async.
    assert asyncio.run(local_rewriter.arewrite(queries[:1]))[0].query == results[0].query


@pytest.mark.slow
def test_local_rewriter_with_adapter_and_sampling(tmp_path, local_rewriter):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from deepretrieval_trainer.common.models import resolve_model

    base = AutoModelForCausalLM.from_pretrained(resolve_model(None))
    base_q = base.model.layers[0].self_attn.q_proj.weight.detach().clone()
    # init_lora_weights=False: B is random, not zero, so the adapter really changes the function
    config = LoraConfig(r=4, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM", init_lora_weights=False)
    peft_model = get_peft_model(base, config)
    peft_model.save_pretrained(tmp_path / "adapter")
    rewriter = LocalRewriter(adapter=tmp_path / "adapter", temperature=0.8, max_new_tokens=48, dtype="float32")
    rewriter.load()
    # The adapter is merged into the base weights (no per-token LoRA work): a plain model whose q_proj moved.
    assert type(rewriter._model).__name__ == "LlamaForCausalLM"
    merged_q = rewriter._model.model.layers[0].self_attn.q_proj.weight.detach()
    assert not torch.allclose(merged_q, base_q)
    [result] = rewriter.rewrite(["statins and muscle pain"])
    assert result.original == "statins and muscle pain" and result.query
