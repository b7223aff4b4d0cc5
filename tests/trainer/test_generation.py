"""The merged twin samples the current policy (real model, real peft adapter), and completions end where the answer
or the EOS ends."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")


def test_completions_end_at_eos_or_at_the_stop_string():
    from deepretrieval_trainer.generation import cut_completions

    eos, pad = 2, 2
    generated = torch.tensor([
        [5, 6, 2, pad, pad],   # the model wrote EOS: kept, the padding after it dropped
        [5, 6, 7, pad, pad],   # stopped at the stop string after 3 tokens: the padding (== EOS here) is not kept
        [5, 6, 7, 8, 9],       # ran to the budget
    ])
    assert cut_completions(generated, [eos], [None, 3, None]) == [[5, 6, 2], [5, 6, 7], [5, 6, 7, 8, 9]]


@pytest.mark.slow
def test_merged_twin_is_the_current_policy():
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from deepretrieval_trainer.generation import MergedTwin, StopRecorder
    from deepretrieval_trainer.models import resolve_model

    torch.manual_seed(0)
    name = resolve_model(None)
    model = AutoModelForCausalLM.from_pretrained(name, dtype=torch.float32)
    policy = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules="all-linear",
                                              init_lora_weights=False)).eval()
    twin = MergedTwin(policy)
    ids = torch.tensor([[1, 9690, 198, 2683, 314, 253, 5356, 28, 9617]])
    twin.refresh(step=0)
    with torch.no_grad():
        assert torch.allclose(twin.model(input_ids=ids).logits, policy(input_ids=ids).logits, atol=1e-3)
        for name_, param in policy.named_parameters():  # an optimizer step changes the adapter ...
            if "lora_B" in name_:
                param.add_(0.01 * torch.randn_like(param))
        stale = twin.model(input_ids=ids).logits
        twin.refresh(step=0)  # ... the same step: no refresh
        assert torch.equal(twin.model(input_ids=ids).logits, stale)
        twin.refresh(step=1)  # the next step merges the new weights
        assert torch.allclose(twin.model(input_ids=ids).logits, policy(input_ids=ids).logits, atol=1e-3)
        assert not torch.allclose(stale, policy(input_ids=ids).logits, atol=1e-3)
    shared = [name_ for name_, p in twin.model.named_parameters()
              if any(p.data_ptr() == q.data_ptr() for q in policy.parameters())]
    assert "model.embed_tokens.weight" in shared  # unadapted tensors are shared, not copied

    tokenizer = AutoTokenizer.from_pretrained(name)
    prompt = tokenizer("Write <answer>yes</answer> then stop. ", return_tensors="pt")
    recorder = StopRecorder(tokenizer, ["</answer>"], prompt["input_ids"].shape[1], rows=1)
    forced = tokenizer.encode(" <answer>x</answer> more text after", add_special_tokens=False)
    # a scripted continuation: the criteria see the stop string as soon as it is complete
    for step in range(1, len(forced) + 1):
        done = recorder(torch.cat([prompt["input_ids"], torch.tensor([forced[:step]])], dim=1), None)
        if done.any():
            break
    text = tokenizer.decode(forced[: recorder.lengths[0]])
    assert text.endswith("</answer>") and "more" not in text
