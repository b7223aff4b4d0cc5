"""Sampling GRPO completions without the adapter's per-token cost: a merged twin of the policy.

TRL samples with the training model itself: the peft model in train mode, so every decoding step runs each LoRA
layer's dropout and two extra matmuls beside the base one (210 adapted layers in SmolLM2-135M), in float32 beside
bfloat16 base weights. Decoding a small model on a CPU is bound by that per-operation overhead, not by arithmetic.

:class:`MergedTwin` is a plain copy of the base model whose adapted weights are refreshed, once per optimizer step,
to ``W + delta_W`` of the current adapter (the rest of its tensors are shared with the base model, not copied).
Sampling from it is sampling from the current policy without dropout, which is what deployment serves.

:class:`StopRecorder` stops each row at the task's stop strings (``</answer>``) and records where, so a completion
ends where the answer ends, exactly as the in-process and served rewriters stop.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
from transformers import AutoModelForCausalLM, StoppingCriteria, StopStringCriteria

logger = logging.getLogger(__name__)


class MergedTwin:
    """An adapter-free model computing the same function as ``peft_model``'s active adapter, for sampling."""

    def __init__(self, peft_model) -> None:
        from peft.tuners.lora import LoraLayer

        base = peft_model.get_base_model()
        self.adapter_name = peft_model.active_adapter
        self.layers: list[tuple[LoraLayer, torch.Tensor]] = []
        twin = AutoModelForCausalLM.from_config(base.config, dtype=base.dtype)  # its buffers (rope) are computed here
        state = {}
        adapted = {name: module for name, module in base.named_modules() if isinstance(module, LoraLayer)}
        for name, tensor in base.state_dict().items():
            if ".lora_" in name or "lora_magnitude" in name:
                continue
            state[name.replace(".base_layer.", ".")] = tensor.detach()
        for name, module in adapted.items():
            merged = module.base_layer.weight.detach().clone()
            state[f"{name}.weight"] = merged
            self.layers.append((module, merged))
        missing, unexpected = twin.load_state_dict(state, strict=False, assign=True)
        tied = {k for k in missing if k.endswith("lm_head.weight")} if base.config.tie_word_embeddings else set()
        if set(missing) - tied or unexpected:
            raise RuntimeError(f"cannot build a merged twin of {type(base).__name__}: missing {sorted(missing)[:5]}, "
                               f"unexpected {sorted(unexpected)[:5]}")
        if tied:
            twin.tie_weights()
        twin.generation_config = base.generation_config
        self.model = twin.eval().requires_grad_(False)
        self.step: int | None = None

    @torch.no_grad()
    def refresh(self, step: int) -> None:
        """Merge the adapter's current weights in (once per optimizer step)."""
        if step == self.step:
            return
        for module, merged in self.layers:
            delta = module.get_delta_weight(self.adapter_name)
            merged.copy_(module.base_layer.weight + delta.to(merged.dtype))
        self.step = step


class StopRecorder(StoppingCriteria):
    """Stops rows at any of ``stop`` (strings) and records each row's length at that point."""

    def __init__(self, tokenizer, stop: Sequence[str], prompt_length: int, rows: int) -> None:
        self.inner = StopStringCriteria(tokenizer, list(stop))
        self.prompt_length = prompt_length
        self.lengths: list[int | None] = [None] * rows

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs) -> torch.Tensor:
        done = self.inner(input_ids, scores, **kwargs)
        length = input_ids.shape[1] - self.prompt_length
        for row in torch.nonzero(done).flatten().tolist():
            if self.lengths[row] is None:
                self.lengths[row] = length
        return done


def cut_completions(completion_ids: torch.Tensor, eos_ids: Sequence[int], stop_lengths: Sequence[int | None]
                    ) -> list[list[int]]:
    """Each row up to its first EOS (included) or the end of its stop string, whichever comes first."""
    rows = []
    eos = torch.tensor(list(eos_ids), device=completion_ids.device)
    for row, stop_length in zip(completion_ids.cpu(), stop_lengths, strict=True):
        hits = torch.nonzero(torch.isin(row, eos.cpu())).flatten()
        end = int(hits[0]) + 1 if len(hits) else row.numel()
        if stop_length is not None:
            end = min(end, stop_length)
        rows.append(row[:end].tolist())
    return rows
