"""Shared-prompt GRPO scoring computes TRL's full-sequence log-probs and gradients (real model, real TRL head)."""

from __future__ import annotations

import contextlib

import pytest

torch = pytest.importorskip("torch")

pytestmark = pytest.mark.slow


def _policy(dtype):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM
    from trl.trainer.utils import add_fused_lm_head

    from deepretrieval_trainer.common.models import resolve_model

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(resolve_model(None), dtype=dtype)
    add_fused_lm_head(model, temperature=0.8, outputs=("log_probs", "entropy"))
    policy = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", init_lora_weights=False))
    return policy.eval()  # no dropout: both paths see the same function


def _batch():
    """Two prompts of different lengths (left-padded), three completions each (right-padded), rows interleaved."""
    pad = 2
    prompts = [[1, 9690, 198, 2683, 314, 253, 5356], [1, 9690, 198, 4966, 5356]]
    completions = [[28, 9617, 46, 2], [4811, 9617], [39, 40, 41, 42, 2], [7, 8], [9, 10, 11], [12, 2]]
    owners = [0, 1, 0, 1, 0, 1]
    width_p, width_c = max(map(len, prompts)), max(map(len, completions))
    ids, mask = [], []
    for owner, completion in zip(owners, completions):
        prompt = prompts[owner]
        ids.append([pad] * (width_p - len(prompt)) + prompt + completion + [pad] * (width_c - len(completion)))
        mask.append([0] * (width_p - len(prompt)) + [1] * (len(prompt) + len(completion))
                    + [0] * (width_c - len(completion)))
    return torch.tensor(ids), torch.tensor(mask), width_c


def _scores(policy, shared: bool, chunk_rows: int = 4):
    """Completion log-probs, entropies and the gradient of their masked sum, by either path."""
    from deepretrieval_trainer.training.prompt_sharing import shared_prompt_logps

    input_ids, attention_mask, keep = _batch()
    completion_mask = attention_mask[:, -keep:].float()
    policy.zero_grad()
    if shared:
        logps, entropy = shared_prompt_logps(policy, input_ids, attention_mask, keep,
                                             autocast=contextlib.nullcontext, compute_entropy=True,
                                             chunk_rows=chunk_rows)
    else:  # TRL's full-sequence scoring (GRPOTrainer._get_per_token_logps_and_entropies)
        labels = input_ids.masked_fill(attention_mask == 0, -100)
        labels[:, :-keep] = -100
        out = policy(input_ids=input_ids, attention_mask=attention_mask, labels=labels, fused_lm_head=True)
        logps, entropy = out.log_probs[:, -keep:], out.entropy[:, -keep:]
    (logps * completion_mask).sum().backward()
    grad = torch.cat([p.grad.float().flatten() for p in policy.parameters() if p.requires_grad])
    return (logps * completion_mask).detach().float(), (entropy * completion_mask).detach().float(), grad


def test_prompt_groups_follow_identical_prompts():
    from deepretrieval_trainer.training.prompt_sharing import prompt_groups

    input_ids, _, keep = _batch()
    assert [g.tolist() for g in prompt_groups(input_ids[:, :-keep])] == [[0, 2, 4], [1, 3, 5]]


def test_shared_prompt_scoring_is_full_sequence_scoring():
    """float32: the same numbers and gradient; bfloat16: no further from float32 than TRL's own bf16 scoring is."""
    reference = _scores(_policy(torch.float32), shared=False)
    for chunk_rows in (4, 2):  # one chunk per group; length-sorted chunks, each cut to its longest completion
        shared = _scores(_policy(torch.float32), shared=True, chunk_rows=chunk_rows)
        assert torch.allclose(shared[0], reference[0], atol=2e-4)
        assert torch.allclose(shared[1], reference[1], atol=2e-3)
        assert ((shared[2] - reference[2]).norm() / reference[2].norm()).item() < 1e-4

    bf16 = _policy(torch.bfloat16)
    full, mine = _scores(bf16, shared=False), _scores(bf16, shared=True)
    for index in range(3):  # log-probs, entropies, gradient: relative error against float32
        error_full = ((full[index] - reference[index]).norm() / reference[index].norm()).item()
        error_mine = ((mine[index] - reference[index]).norm() / reference[index].norm()).item()
        assert error_mine <= 1.5 * error_full + 0.01, (index, error_mine, error_full)
