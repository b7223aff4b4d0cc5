"""GRPO log-probabilities with each prompt computed once per group instead of once per sample.

A GRPO batch holds ``num_generations`` completions of the same prompt. TRL scores every row as a full sequence, so
the prompt (system prompt, worked example, chat template: ~160 tokens, more than a typical completion) is run
forward and backward ``num_generations`` times. Here each distinct prompt runs once, its key/value cache is repeated
for the group's rows, and only the completion tokens are run on top of it. Causal attention makes this the same
function: the completion's log-probabilities and their gradients (summed over the group through the repeat) match
the full-sequence ones up to floating-point rounding (tested in tests/trainer/test_prompt_sharing.py).

A group's completions also run in chunks of similar length, each padded only to its own longest completion (TRL
pads every row to the batch's longest). Position ids follow TRL's full-sequence forward (positions count the left padding, as there), so the two agree.
"""

from __future__ import annotations

import torch


def prompt_groups(prompt_ids: torch.Tensor) -> list[torch.Tensor]:
    """Row indices of each distinct prompt, in order of first appearance."""
    _, inverse = torch.unique(prompt_ids, dim=0, return_inverse=True)
    groups: dict[int, list[int]] = {}
    for row, key in enumerate(inverse.tolist()):
        groups.setdefault(key, []).append(row)
    return [torch.tensor(rows, device=prompt_ids.device) for rows in groups.values()]


def shared_prompt_logps(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, logits_to_keep: int,
                        *, autocast, compute_entropy: bool = False, chunk_rows: int = 4,
                        ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Per-token log-probs (and entropies) of the last ``logits_to_keep`` tokens of each row, as TRL computes them.

    ``model``: the policy whose forward TRL patched with its fused LM head (``fused_lm_head=True``, ``shift_labels``);
    ``autocast``: a callable returning the accelerator's autocast context. A group's completions run in chunks of
    ``chunk_rows`` rows of similar length, each cut to its longest completion, so little padding is computed;
    positions past a row's completion are 0, as TRL leaves them.
    """
    from peft import PeftModel
    from transformers import DynamicCache

    causal_lm = model.get_base_model() if isinstance(model, PeftModel) else model
    backbone = causal_lm.base_model
    prompt_length = input_ids.shape[1] - logits_to_keep
    if prompt_length < 2:
        raise ValueError(f"shared-prompt scoring needs prompts of at least 2 tokens, got {prompt_length}")
    lengths = attention_mask[:, prompt_length:].sum(dim=1)
    pieces, order, entropies = [], [], []
    for rows in prompt_groups(input_ids[:, :prompt_length]):
        first = rows[:1]
        with autocast():
            prefix = backbone(input_ids=input_ids[first, :prompt_length - 1],
                              attention_mask=attention_mask[first, :prompt_length - 1], use_cache=True)
        prefix_kv = [(keys, values) for keys, values, *_ in prefix.cache]
        rows = rows[torch.argsort(lengths[rows], descending=True, stable=True)]
        for chunk in rows.split(chunk_rows):
            width = max(int(lengths[chunk].max()), 1)
            end = prompt_length + width
            cache = DynamicCache(ddp_cache_data=[(k.expand(len(chunk), -1, -1, -1), v.expand(len(chunk), -1, -1, -1))
                                                 for k, v in prefix_kv])
            labels = input_ids[chunk, prompt_length:end].masked_fill(attention_mask[chunk, prompt_length:end] == 0,
                                                                     -100)
            with autocast():
                # the last prompt token, then the completion but its last token: each predicts the next label
                out = model(input_ids=input_ids[chunk, prompt_length - 1:end - 1],
                            attention_mask=attention_mask[chunk, :end - 1], cache=cache, shift_labels=labels,
                            fused_lm_head=True)
            pad = (0, logits_to_keep - width)
            pieces.append(torch.nn.functional.pad(out.log_probs, pad))
            if compute_entropy:
                entropies.append(torch.nn.functional.pad(out.entropy, pad))
            order.append(chunk)
    back = torch.argsort(torch.cat(order))
    logps = torch.cat(pieces)[back]
    return logps, (torch.cat(entropies)[back] if compute_entropy else None)
