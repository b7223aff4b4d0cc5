"""Sampling GRPO completions without the adapter's per-token cost: a merged twin of the policy.

TRL samples with the training model itself: the peft model in train mode, so every decoding step runs each LoRA
layer's dropout and two extra matmuls beside the base one (210 adapted layers in SmolLM2-135M), in float32 beside
bfloat16 base weights. Decoding a small model on a CPU is bound by that per-operation overhead, not by arithmetic.

:class:`MergedTwin` is a plain copy of the base model whose adapted weights are refreshed, once per optimizer step,
to ``W + delta_W`` of the current adapter (the rest of its tensors are shared with the base model, not copied).
Sampling from it is sampling from the current policy without dropout, which is what deployment serves.

:class:`StopRecorder` stops each row at the task's stop strings (``</answer>``) and records where, so a completion
ends where the answer ends, exactly as the in-process and served rewriters stop.

:func:`lean_generate` decodes the twin (and ``LocalRewriter``'s model) without the costs transformers' ``generate()``
spent beside the matmuls on this CPU (below).
"""

from __future__ import annotations

import functools
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


class LoopStop(StoppingCriteria):
    """Stops a row whose last tokens are one unit of 1 to ``max_unit`` tokens written ``repeats`` times in a row.

    Greedy decoding of a small model can repeat a word until the token budget runs out; such a row has said what it
    will say, so decoding it further only costs time. The answer parser cuts the loop back to its first occurrence
    (:func:`deepretrieval_trainer.rewriting.answer.cut_loop`), which is what every decoding path, a served one
    included, then returns. It reads only each row's last ``maximum_token_len`` tokens, as a stop-string check does.
    """

    def __init__(self, max_unit: int = 8, repeats: int = 4) -> None:
        self.max_unit = max_unit
        self.repeats = repeats
        self.maximum_token_len = max_unit * repeats

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor | None, **kwargs) -> torch.Tensor:
        rows, width = input_ids.shape
        done = torch.zeros(rows, dtype=torch.bool, device=input_ids.device)
        for unit in range(1, self.max_unit + 1):
            span = unit * self.repeats
            if span > width:
                break
            blocks = input_ids[:, -span:].reshape(rows, self.repeats, unit)
            done |= (blocks == blocks[:, -1:, :]).all(dim=2).all(dim=1)
        return done


def cut_completions(completion_ids: torch.Tensor, eos_ids: Sequence[int], stop_lengths: Sequence[int | None]
                    ) -> list[list[int]]:
    """Each row up to its first EOS (included) or the end of its stop string, whichever comes first.

    A row that ends at its stop string ends with an EOS token appended: the answer is complete there, and nothing
    after the stop string is ever read, so it is a finished completion. TRL counts a completion whose last token is
    not EOS as cut off by the length limit (``completions/clipped_ratio``), and ``mask_truncated_completions`` would
    drop it from the loss; the appended EOS also teaches the policy to end where the served rewriter stops.
    """
    rows = []
    eos = torch.tensor(list(eos_ids), device=completion_ids.device)
    for row, stop_length in zip(completion_ids.cpu(), stop_lengths, strict=True):
        hits = torch.nonzero(torch.isin(row, eos.cpu())).flatten()
        end = int(hits[0]) + 1 if len(hits) else row.numel()
        # a row stopped at the batch's last decoding step has no padding after it: its stop string ends the tensor
        stopped = stop_length is not None and (stop_length < end or not len(hits))
        if stopped:
            end = stop_length
        rows.append(row[:end].tolist() + ([int(eos_ids[0])] if stopped and eos_ids else []))
    return rows


# --- a lean decoding loop for the merged twin (and greedy in-process rewriting) ---------------------------------------
#
# Measured on a CPU (bf16, 2 threads, 16 rows x 165 prompt tokens, 128 sampled tokens;
# docs/experiments/cpu-speed.md#where-did-generate-spend-a-cpu-steps-generation), transformers' ``generate`` spent its
# time beyond the model's matmuls on things this loop does not do:
#   * ``torch.multinomial``: 16 ms a token step for 16 rows of a 49k vocabulary on CPU (it draws an exponential
#     variate per vocabulary entry). Inverse-CDF sampling (one uniform per row, a cumsum and a binary search) draws
#     from the same categorical distribution in under 1 ms.
#   * DynamicCache's ``torch.cat`` of every layer's whole key/value cache at each token; :class:`GrowingCache` writes
#     into preallocated buffers instead and hands attention a view.
#   * prefilling a GRPO group's prompt once per sample: rows with the same prompt are prefilled once and their cache
#     rows copied, and the prefix every prompt shares (system prompt, worked example) once per batch;
#   * decoding finished rows to the end: they leave the batch once a quarter of it has finished.

try:  # the layered cache API (transformers >= 4.56)
    from transformers.cache_utils import Cache, DynamicCache, DynamicLayer
except ImportError:  # pragma: no cover - older transformers: generate() stays the only path
    DynamicLayer = None


if DynamicLayer is not None:
    class GrowingLayer(DynamicLayer):
        """A full-attention cache layer that appends in place into a buffer with spare room (grown by a chunk when
        full) and returns views of the filled part, instead of concatenating the whole cache at every token."""

        chunk = 128

        def lazy_initialization(self, key_states, value_states) -> None:
            super().lazy_initialization(key_states, value_states)
            self.length = 0
            self._keys = self._values = None

        def _reserve(self, needed: int, like_keys, like_values) -> None:
            if self._keys is not None and needed <= self._keys.shape[-2]:
                return
            capacity = needed + self.chunk
            keys = like_keys.new_empty((*like_keys.shape[:-2], capacity, like_keys.shape[-1]))
            values = like_values.new_empty((*like_values.shape[:-2], capacity, like_values.shape[-1]))
            if self.length:
                keys[..., : self.length, :] = self._keys[..., : self.length, :]
                values[..., : self.length, :] = self._values[..., : self.length, :]
            self._keys, self._values = keys, values

        def update(self, key_states, value_states, *args, **kwargs):
            if not self.is_initialized:
                self.lazy_initialization(key_states, value_states)
            end = self.length + key_states.shape[-2]
            self._reserve(end, key_states, value_states)
            self._keys[..., self.length : end, :] = key_states
            self._values[..., self.length : end, :] = value_states
            self.length = end
            self._expose()
            return self.keys, self.values

        def _expose(self) -> None:
            """``keys``/``values``: views of the buffers' filled part, what attention and transformers read."""
            self.keys = self._keys[..., : self.length, :]
            self.values = self._values[..., : self.length, :]

        def get_seq_length(self) -> int:
            return self.length if self.is_initialized else 0

        def reset(self) -> None:
            self._keys = self._values = None
            self.length = 0
            super().reset()

        def crop(self, tokens_to_remove: int) -> None:
            if tokens_to_remove > 0:
                raise ValueError(f"crop takes a negative count of tokens to remove, got {tokens_to_remove}")
            if tokens_to_remove == 0 or not self.is_initialized:
                return
            self.length = max(0, self.length + tokens_to_remove)
            self._expose()

        def batch_repeat_interleave(self, repeats: int) -> None:
            if self.get_seq_length() > 0:
                self._keys = self._keys.repeat_interleave(repeats, dim=0)
                self._values = self._values.repeat_interleave(repeats, dim=0)
                self._expose()

        def batch_select_indices(self, indices) -> None:
            if self.get_seq_length() > 0:
                self._keys = self._keys[indices, ...]
                self._values = self._values[indices, ...]
                self._expose()

    class GrowingCache(DynamicCache):
        """DynamicCache whose layers are :class:`GrowingLayer` (full attention only: models with sliding-window
        or linear-attention layers keep transformers' own caches)."""

        def __init__(self) -> None:
            Cache.__init__(self, layer_class_to_replicate=GrowingLayer)


def packed_gqa_attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None,
                         is_causal=None, **kwargs):
    """transformers' SDPA attention, but grouped-query attention with a mask runs on the key/value heads for any
    number of query tokens: the query heads that share a key/value head are stacked as extra query rows (and the
    mask tiled to match), where transformers copies the whole key/value cache once per query head group
    (``repeat_kv``) whenever more than one token is decoded with a mask, as checking drafted tokens does. The same
    arithmetic per row; on this CPU, 3.5x less attention time for 3 query tokens over a 330-token cache."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    groups = getattr(module, "num_key_value_groups", 1)
    rows, heads, length, dim = query.shape
    if (groups == 1 or length == 1 or attention_mask is None or attention_mask.dim() != 4
            or kwargs.get("position_bias") is not None or kwargs.get("softcap") is not None
            or key.shape[1] * groups != heads):
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      is_causal=is_causal, **kwargs)
    packed = query.reshape(rows, key.shape[1], groups * length, dim)  # row g * length + i: head group g, token i
    mask = attention_mask
    if mask.shape[1] == 1:  # one mask for every head: the same rows for each stacked head
        mask = mask.repeat(1, 1, groups, 1)
    else:  # a mask per query head: its head group's rows stacked as the query's are
        mask = mask.reshape(mask.shape[0], key.shape[1], groups * length, mask.shape[-1])
    output = torch.nn.functional.scaled_dot_product_attention(packed, key, value, attn_mask=mask, dropout_p=dropout,
                                                              scale=scaling)
    return output.reshape(rows, heads, length, dim).transpose(1, 2).contiguous(), None


_PACKED = "deepretrieval_packed_sdpa"


@functools.cache
def _register_packed_attention() -> bool:
    """Register :func:`packed_gqa_attention` with transformers, once per process."""
    try:
        from transformers import AttentionInterface
        from transformers.masking_utils import AttentionMaskInterface, sdpa_mask
    except ImportError:  # pragma: no cover - a transformers without registrable attention
        return False
    AttentionInterface.register(_PACKED, packed_gqa_attention)
    AttentionMaskInterface.register(_PACKED, sdpa_mask)
    return True


class packed_attention:
    """Context manager: ``model`` attends through :func:`packed_gqa_attention` where it uses transformers' SDPA
    attention, and as before afterwards."""

    def __init__(self, model) -> None:
        self.configs = []
        if _register_packed_attention():
            self.configs = [c for c in _configs(model) if getattr(c, "_attn_implementation", None) == "sdpa"]

    def __enter__(self):
        for config in self.configs:
            config._attn_implementation = _PACKED
        return self

    def __exit__(self, *exc) -> None:
        for config in self.configs:
            config._attn_implementation = "sdpa"


def _configs(model) -> list:
    seen, found = set(), []
    for module in model.modules():
        config = getattr(module, "config", None)
        if config is not None and id(config) not in seen:
            seen.add(id(config))
            found.append(config)
    return found


def new_cache(model):
    """A :class:`GrowingCache` where the model's layers are all full attention; None (transformers' default) else."""
    if DynamicLayer is None:
        return None
    config = model.config.get_text_config(decoder=True) if hasattr(model.config, "get_text_config") else model.config
    layer_types = getattr(config, "layer_types", None)
    if getattr(config, "sliding_window", None) and getattr(config, "use_sliding_window", True):
        return None
    if layer_types and any(kind != "full_attention" for kind in layer_types):
        return None
    try:
        return GrowingCache()
    except TypeError:  # a transformers whose Cache takes other arguments
        return None


# GenerationConfig fields the lean loop implements; anything else set to a non-default value goes to generate()
_LEAN_FIELDS = {"max_new_tokens", "do_sample", "temperature", "top_k", "top_p", "min_p", "repetition_penalty",
                "pad_token_id", "bos_token_id", "eos_token_id", "cache_implementation", "disable_compile",
                "transformers_version", "_from_model_config", "max_length", "stop_strings", "num_return_sequences",
                "use_cache"}
# ... and those it accepts only when off
_LEAN_OFF_FIELDS = {"return_dict_in_generate", "output_scores", "output_logits", "output_attentions",
                    "output_hidden_states"}


def lean_unsupported(generation_config, model) -> str | None:
    """Why :func:`lean_generate` cannot stand in for ``model.generate`` with this config; None when it can."""
    if DynamicLayer is None:
        return "this transformers has no layered KV cache"
    if new_cache(model) is None:
        return f"{type(model).__name__} has attention layers other than full attention"
    settings = generation_config.to_diff_dict()
    extra = sorted(k for k, v in settings.items() if k not in _LEAN_FIELDS and (k not in _LEAN_OFF_FIELDS or v))
    if extra:
        return f"generation settings {extra}"
    if generation_config.max_new_tokens is None:
        return "max_new_tokens is not set"
    if (generation_config.num_return_sequences or 1) != 1:
        return "num_return_sequences"
    if generation_config.use_cache is False:
        return "use_cache=False"
    if generation_config.cache_implementation not in (None, "dynamic"):
        return f"cache_implementation={generation_config.cache_implementation!r}"
    if generation_config.stop_strings:
        return "stop_strings (pass stopping criteria instead)"
    return None


def _logits_processors(generation_config):
    from transformers import (
        LogitsProcessorList,
        MinPLogitsWarper,
        RepetitionPenaltyLogitsProcessor,
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    # transformers' own order: processors, then the sampling warpers temperature, top-k, top-p, min-p
    gc = generation_config
    processors = LogitsProcessorList()
    if gc.repetition_penalty is not None and gc.repetition_penalty != 1.0:
        processors.append(RepetitionPenaltyLogitsProcessor(penalty=gc.repetition_penalty))
    if gc.do_sample:
        if gc.temperature is not None and gc.temperature != 1.0:
            processors.append(TemperatureLogitsWarper(gc.temperature))
        if gc.top_k is not None and gc.top_k != 0:
            processors.append(TopKLogitsWarper(top_k=gc.top_k, min_tokens_to_keep=1))
        if gc.top_p is not None and gc.top_p < 1.0:
            processors.append(TopPLogitsWarper(top_p=gc.top_p, min_tokens_to_keep=1))
        if gc.min_p is not None:
            processors.append(MinPLogitsWarper(min_p=gc.min_p, min_tokens_to_keep=1))
    return processors


def sample_categorical(probs: torch.Tensor) -> torch.Tensor:
    """One draw per row from ``probs`` (rows summing to ~1, zeros never drawn) by inverse CDF: a cumsum and a binary
    search per row, where ``torch.multinomial`` on CPU draws an exponential variate per vocabulary entry."""
    cdf = probs.double().cumsum(-1)
    point = torch.rand(probs.shape[0], 1, dtype=cdf.dtype, device=probs.device) * cdf[:, -1:]
    return torch.searchsorted(cdf, point, right=True).squeeze(1).clamp_(max=probs.shape[-1] - 1)


def _common_prefix(prompts: Sequence[torch.Tensor]) -> int:
    """How many leading tokens every prompt shares, leaving each at least one token of its own."""
    shortest = min(len(p) for p in prompts)
    same = torch.stack([p[:shortest] for p in prompts]).eq(prompts[0][:shortest]).all(dim=0)
    differ = (~same).nonzero()
    shared = int(differ[0]) if len(differ) else shortest
    return min(shared, shortest - 1)


def _forward(model, cache_arg: str, cache, keep: int = 1, **inputs):
    return model(**inputs, **{cache_arg: cache}, use_cache=True, logits_to_keep=keep)


@torch.no_grad()
def lean_generate(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, generation_config,
                  stopping_criteria: Sequence = (), *, share_prefix: bool = True,
                  min_shared_prefix: int = 16, compact_below: float = 0.75, speculate: int = 0,
                  ngram: int = 3) -> torch.Tensor:
    """``model.generate(input_ids, attention_mask, generation_config, stopping_criteria)`` for a decoder-only model
    and the settings :func:`lean_unsupported` accepts, returning the same ``[rows, prompt + new]`` tensor (rows that
    finished padded with ``pad_token_id``). Rows with the same prompt are prefilled once, and (``share_prefix``) the
    tokens all prompts start with, when at least ``min_shared_prefix``, once for the batch; decoding appends into a
    :class:`GrowingCache`; sampling draws by inverse CDF (:func:`sample_categorical`). Rows that finished leave the
    batch once the rows still writing are at most ``compact_below`` of it (0: never).

    The arithmetic is the model's own, row by row, but in a different batch shape than ``generate()`` uses, so in
    bfloat16 a greedy token can differ where two candidates are within rounding (float32: the same tokens).
    Grouped-query attention runs through :func:`packed_gqa_attention` for the call."""
    gc = generation_config
    reason = lean_unsupported(gc, model)
    if reason:
        raise ValueError(f"lean_generate cannot run this: {reason}; use model.generate")
    with packed_attention(model):
        return _lean_generate(model, input_ids, attention_mask, gc, stopping_criteria, share_prefix=share_prefix,
                              min_shared_prefix=min_shared_prefix, compact_below=compact_below,
                              speculate=speculate, ngram=ngram)


def _lean_generate(model, input_ids, attention_mask, gc, stopping_criteria, *, share_prefix, min_shared_prefix,
                   compact_below, speculate, ngram):
    import inspect

    device = input_ids.device
    rows = input_ids.shape[0]
    attention_mask = attention_mask.to(device=device, dtype=torch.long)
    eos = gc.eos_token_id
    eos_ids = torch.tensor([] if eos is None else ([eos] if isinstance(eos, int) else list(eos)), device=device)
    pad = gc.pad_token_id if gc.pad_token_id is not None else (int(eos_ids[0]) if len(eos_ids) else 0)
    cache_arg = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"

    # each distinct prompt once (a GRPO group repeats its prompt once per sample)
    first: dict[tuple, int] = {}
    owner = []
    for row in range(rows):
        key = tuple(input_ids[row][attention_mask[row].bool()].tolist())
        owner.append(first.setdefault(key, len(first)))
    if () in first:
        raise ValueError("a prompt row is all padding: every row needs at least one token the mask keeps")
    expand = torch.tensor(owner, device=device)
    prompts = [torch.tensor(key, dtype=input_ids.dtype, device=device) for key in first]

    cache = new_cache(model)
    shared = _common_prefix(prompts) if share_prefix and len(prompts) > 1 else 0
    if shared >= min_shared_prefix:
        # the tokens every prompt starts with (system prompt, worked example) prefilled once, then each prompt's own
        # part after it, left-padded *after* the prefix: [prefix][pad][rest], positions counted over real tokens
        prefix = prompts[0][:shared][None]
        _forward(model, cache_arg, cache, input_ids=prefix, attention_mask=torch.ones_like(prefix),
                 position_ids=torch.arange(shared, device=device)[None])
        cache.batch_repeat_interleave(len(prompts))
        rests = [p[shared:] for p in prompts]
    else:
        shared, rests = 0, prompts
    width = max(len(r) for r in rests)
    rest_ids = torch.full((len(rests), width), pad, dtype=input_ids.dtype, device=device)
    rest_mask = torch.zeros((len(rests), width), dtype=torch.long, device=device)
    for i, rest in enumerate(rests):
        rest_ids[i, width - len(rest):] = rest
        rest_mask[i, width - len(rest):] = 1
    mask = torch.cat([rest_mask.new_ones(len(rests), shared), rest_mask], dim=-1)
    positions = (mask.cumsum(-1) - 1).clamp_(min=0)
    out = _forward(model, cache_arg, cache, input_ids=rest_ids, attention_mask=mask,
                   position_ids=positions[:, shared:])
    if len(prompts) < rows:  # all distinct: ``expand`` is already 0..rows-1 (first-seen order)
        cache.batch_select_indices(expand)
    logits = out.logits[:, -1][expand]
    attention_mask = mask[expand]
    positions = positions[expand]

    processors = _logits_processors(gc)
    if speculate > 0 and not gc.do_sample and not processors and all(
            isinstance(c, (StopStringCriteria, LoopStop)) and c.maximum_token_len <= input_ids.shape[1]
            for c in stopping_criteria):  # each stop check reads the row's last maximum_token_len tokens
        return _speculative_greedy(model, cache_arg, cache, input_ids, attention_mask, positions, logits, gc,
                                   list(stopping_criteria), eos_ids, pad, speculate=speculate, ngram=ngram,
                                   compact_below=compact_below)
    sequences = input_ids
    position = positions[:, -1:]
    finished = torch.zeros(rows, dtype=torch.bool, device=device)
    active = torch.arange(rows, device=device)  # the sequence row of each cache row
    for _ in range(gc.max_new_tokens):
        scores = processors(sequences[active] if len(active) < rows else sequences, logits.float())
        if gc.do_sample:
            drawn = sample_categorical(torch.softmax(scores, dim=-1))
        else:
            drawn = scores.argmax(dim=-1)
        token = torch.full((rows,), pad, dtype=sequences.dtype, device=device)
        token[active] = drawn
        token.masked_fill_(finished, pad)
        sequences = torch.cat([sequences, token[:, None]], dim=-1)
        if len(eos_ids):
            finished |= torch.isin(token, eos_ids)
        if stopping_criteria and len(active) < rows:  # criteria see every row, as generate() shows them
            scores = scores.new_full((rows, scores.shape[-1]), float("-inf")).index_copy_(0, active, scores)
        for criterion in stopping_criteria:
            finished |= criterion(sequences, scores).to(device)
        if bool(finished.all()):
            break
        running = ~finished[active]
        if compact_below and int(running.sum()) <= compact_below * len(active):
            # a quarter of the cache's rows finished: drop them, so the steps left decode only rows still writing
            keep = running.nonzero().squeeze(1)
            cache.batch_select_indices(keep)
            active, attention_mask, position = active[keep], attention_mask[keep], position[keep]
        attention_mask = torch.cat([attention_mask, attention_mask.new_ones(len(active), 1)], dim=-1)
        position = position + 1
        out = _forward(model, cache_arg, cache, input_ids=token[active][:, None], attention_mask=attention_mask,
                       position_ids=position)
        logits = out.logits[:, -1]
    return sequences


class _Lookup:
    """Prompt-lookup drafts for one row: the tokens that followed the latest earlier occurrence of the row's last
    ``ngram`` (then fewer) tokens, in its prompt or in what it wrote since."""

    def __init__(self, tokens: list[int], ngram: int) -> None:
        self.tokens: list[int] = []
        self.ngram = ngram
        self.seen: dict[tuple, int] = {}  # n-gram -> the index just after its latest occurrence that has a successor
        self.extend(tokens)

    def extend(self, tokens: Sequence[int]) -> None:
        for token in tokens:
            end = len(self.tokens)  # ``token`` follows the n-grams that end at end - 1
            for n in range(1, self.ngram + 1):
                if end >= n:
                    self.seen[tuple(self.tokens[end - n : end])] = end
            self.tokens.append(token)

    def draft(self, size: int) -> list[int]:
        for n in range(min(self.ngram, len(self.tokens)), 0, -1):
            start = self.seen.get(tuple(self.tokens[-n:]))
            if start is not None:
                return self.tokens[start : start + size]
        return []


def _speculative_greedy(model, cache_arg: str, cache, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                        positions: torch.Tensor, logits: torch.Tensor, gc, stopping_criteria: list,
                        eos_ids: torch.Tensor, pad: int, *, speculate: int, ngram: int,
                        compact_below: float) -> torch.Tensor:
    """Greedy decoding that checks drafted tokens in the same forward as the next one (prompt-lookup speculation).

    Each step feeds every running row its last token plus up to ``speculate`` drafted tokens (:class:`_Lookup`),
    keeps the drafts the model's own argmax agrees with and the argmax after them, and masks the cache slots of the
    rejected drafts out of the attention mask for good (each row's positions count only its kept tokens). At batch 8
    a decoding step of a small model on a CPU is bound by streaming the weights, not by how many tokens it carries,
    so every kept draft is a token for close to nothing. The kept tokens are the greedy ones (the drafts only decide
    how many are checked at once); EOS, stop strings and the token budget are checked token by token."""
    device = input_ids.device
    rows, width = input_ids.shape
    budget = gc.max_new_tokens
    out = torch.full((rows, width + budget), pad, dtype=input_ids.dtype, device=device)
    out[:, :width] = input_ids
    count = [0] * rows  # tokens written per row
    finished = [False] * rows
    eos = set(eos_ids.tolist())
    lookups = [_Lookup(input_ids[r][attention_mask[r, -width:].bool()].tolist(), ngram) for r in range(rows)]
    tail = max((c.maximum_token_len for c in stopping_criteria), default=0)

    def commit(new: dict[int, list[int]]) -> None:
        """Write each row's new tokens; a row ends at the first that is EOS, ends a stop string or fills the budget
        (what follows it in ``new`` is dropped, as generate() would never have written it)."""
        for r, tokens in new.items():
            tokens = tokens[: budget - count[r]]
            out[r, width + count[r] : width + count[r] + len(tokens)] = torch.tensor(tokens, dtype=out.dtype)
            new[r] = tokens
        ends = {r: next((i for i, t in enumerate(tokens) if t in eos), None) for r, tokens in new.items()}
        if stopping_criteria:
            spots = [(r, i) for r, tokens in new.items() for i in range(len(tokens))
                     if ends[r] is None or i < ends[r]]
            if spots:
                views = torch.stack([out[r, width + count[r] + i + 1 - tail : width + count[r] + i + 1]
                                     for r, i in spots])
                hit = torch.zeros(len(spots), dtype=torch.bool, device=device)
                for criterion in stopping_criteria:
                    hit |= criterion(views, None).to(device)
                for j in hit.nonzero().squeeze(1).tolist():
                    r, i = spots[j]
                    ends[r] = i if ends[r] is None else min(ends[r], i)
        for r, tokens in new.items():
            if ends[r] is not None:
                out[r, width + count[r] + ends[r] + 1 : width + count[r] + len(tokens)] = pad
                tokens = tokens[: ends[r] + 1]
                finished[r] = True
            count[r] += len(tokens)
            lookups[r].extend(tokens)
            if count[r] >= budget:
                finished[r] = True

    active = list(range(rows))  # the sequence row of each cache row
    mask = attention_mask
    position = positions[:, -1:]  # each cache row's position of its last written token
    commit({r: [t] for r, t in enumerate(logits.float().argmax(dim=-1).tolist())})
    while not all(finished):
        running = [not finished[r] for r in active]
        if compact_below and sum(running) <= compact_below * len(active):
            keep = torch.tensor([slot for slot, go in enumerate(running) if go], device=device)
            cache.batch_select_indices(keep)
            mask, position = mask[keep], position[keep]
            active = [r for r in active if not finished[r]]
            running = [True] * len(active)
        # the last written token of each row is fed now (its keys and values are not cached yet), then the drafts;
        # finished rows still in the cache are fed padding and ignored
        drafts = [lookups[r].draft(min(speculate, budget - count[r] - 1)) if go else []
                  for r, go in zip(active, running)]
        span = 1 + max(len(d) for d in drafts)
        feed = torch.full((len(active), span), pad, dtype=input_ids.dtype, device=device)
        for slot, (r, d) in enumerate(zip(active, drafts)):
            if running[slot]:
                feed[slot, : 1 + len(d)] = torch.tensor([lookups[r].tokens[-1], *d], dtype=feed.dtype)
        mask = torch.cat([mask, mask.new_ones(len(active), span)], dim=-1)
        result = _forward(model, cache_arg, cache, keep=span, input_ids=feed, attention_mask=mask,
                          position_ids=position + torch.arange(1, span + 1, device=device))
        greedy = result.logits.float().argmax(dim=-1)  # [cache rows, span]: the greedy token after each fed one
        agree = (feed[:, 1:] == greedy[:, :-1]).long().cumprod(dim=-1).sum(dim=-1)
        kept = torch.minimum(agree, torch.tensor([len(d) for d in drafts], device=device))
        # the rejected drafts' cache slots are never attended again
        mask[:, -span:].masked_fill_(torch.arange(span, device=device)[None] > kept[:, None], 0)
        position = position + 1 + kept[:, None]
        kept, greedy = kept.tolist(), greedy.tolist()
        commit({r: drafts[slot][: kept[slot]] + [greedy[slot][kept[slot]]]
                for slot, r in enumerate(active) if running[slot]})
    return out[:, : width + max(count)]
