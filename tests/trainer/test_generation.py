"""The merged twin samples the current policy (real model, real peft adapter), and completions end where the answer
or the EOS ends."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")


def test_completions_end_at_eos_or_at_the_stop_string():
    from deepretrieval_trainer.rewriting.generation import cut_completions

    eos, pad = 2, 2
    generated = torch.tensor([
        [5, 6, 2, pad, pad],   # the model wrote EOS: kept, the padding after it dropped
        [5, 6, 7, pad, pad],   # stopped at the stop string after 3 tokens: ends with EOS, the padding dropped
        [5, 6, 7, 8, 9],       # ran to the budget: no EOS, which TRL counts as clipped
        [5, 2, 7, 8, 9],       # EOS before the stop string ended: the EOS wins
        [5, 6, 7, 8, 9],       # stopped at the stop string on the batch's last step: ends with EOS all the same
    ])
    assert cut_completions(generated, [eos], [None, 3, None, 4, 5]) == [
        [5, 6, 2], [5, 6, 7, eos], [5, 6, 7, 8, 9], [5, 2], [5, 6, 7, 8, 9, eos]]


@pytest.mark.slow
def test_merged_twin_is_the_current_policy():
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from deepretrieval_trainer.common.models import resolve_model
    from deepretrieval_trainer.rewriting.generation import MergedTwin, StopRecorder

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


def test_inverse_cdf_sampling_draws_the_categorical_distribution():
    from deepretrieval_trainer.rewriting.generation import sample_categorical

    torch.manual_seed(0)
    probs = torch.tensor([0.5, 0.0, 0.2, 0.3, 0.0])
    draws = torch.cat([sample_categorical(probs.expand(1000, -1)) for _ in range(20)])
    counts = torch.bincount(draws, minlength=5).double()
    assert counts[1] == 0 and counts[4] == 0  # zero-probability tokens are never drawn
    expected = probs.double() * len(draws)
    chi2 = float((((counts - expected) ** 2)[expected > 0] / expected[expected > 0]).sum())
    assert chi2 < 13.8  # chi-square, 2 degrees of freedom, p = 0.001
    one_hot = torch.zeros(3, 7)
    one_hot[torch.arange(3), torch.tensor([6, 0, 3])] = 1.0
    assert sample_categorical(one_hot).tolist() == [6, 0, 3]  # the edges of the vocabulary


def test_growing_cache_holds_what_a_dynamic_cache_holds():
    from transformers import DynamicCache

    from deepretrieval_trainer.rewriting.generation import GrowingCache, GrowingLayer

    torch.manual_seed(0)
    grown, dynamic = GrowingCache(), DynamicCache()
    for length in (5, 1, GrowingLayer.chunk + 7, 1, 1):  # the third update outgrows the first buffer
        key, value = torch.randn(3, 2, length, 4), torch.randn(3, 2, length, 4)
        got = grown.update(key, value, layer_idx=0)
        want = dynamic.update(key.clone(), value.clone(), layer_idx=0)
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    assert grown.get_seq_length() == dynamic.get_seq_length() == GrowingLayer.chunk + 15
    rows = torch.tensor([2, 2, 0])
    grown.batch_select_indices(rows)
    dynamic.batch_select_indices(rows)
    assert torch.equal(grown.layers[0].keys, dynamic.layers[0].keys)
    grown.crop(-3)
    dynamic.crop(-3)
    assert torch.equal(grown.layers[0].values, dynamic.layers[0].values)
    key = torch.randn(3, 2, 1, 4)
    assert torch.equal(grown.update(key, key, layer_idx=0)[0], dynamic.update(key, key, layer_idx=0)[0])


def test_settings_lean_decoding_does_not_implement_go_to_generate():
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    from deepretrieval_trainer.rewriting.generation import lean_generate, lean_unsupported

    model = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2)).eval()
    plain = GenerationConfig(max_new_tokens=4, do_sample=True, temperature=0.8, top_k=0, pad_token_id=0)
    assert lean_unsupported(plain, model) is None
    beams = GenerationConfig(max_new_tokens=4, num_beams=2)
    assert "num_beams" in lean_unsupported(beams, model)
    assert "no_repeat_ngram_size" in lean_unsupported(GenerationConfig(max_new_tokens=4, no_repeat_ngram_size=2), model)
    assert "max_new_tokens" in lean_unsupported(GenerationConfig(), model)
    with pytest.raises(ValueError, match="use model.generate"):
        lean_generate(model, torch.ones(1, 3, dtype=torch.long), torch.ones(1, 3, dtype=torch.long), beams)


def _tiny_model(seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, pad_token_id=0, eos_token_id=1,
                         initializer_range=0.3)  # large weights: every token and position moves the argmax
    return LlamaForCausalLM(config).eval()


def _left_padded(rows, pad=0):
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, width - len(row):] = torch.tensor(row)
        mask[i, width - len(row):] = 1
    return ids, mask


def test_lean_greedy_decoding_writes_what_generate_writes():
    """float32, left padding, repeated prompts (a GRPO group), a shared prefix longer than the threshold, EOS."""
    from transformers import GenerationConfig

    from deepretrieval_trainer.rewriting.generation import lean_generate

    model = _tiny_model()
    prefix = list(range(10, 40))  # 30 shared tokens: prefilled once
    rows = [prefix + [50, 51], prefix + [52], prefix + [50, 51], prefix + [53, 54, 55, 56], prefix + [52]]
    ids, mask = _left_padded(rows)
    for eos in (None, 1):
        config = GenerationConfig(max_new_tokens=12, do_sample=False, pad_token_id=0, eos_token_id=eos)
        with torch.no_grad():
            want = model.generate(input_ids=ids, attention_mask=mask, generation_config=config)
            for share_prefix in (True, False):
                got = lean_generate(model, ids, mask, config, share_prefix=share_prefix)
                assert torch.equal(got, want), (share_prefix, eos)


def test_lean_sampling_applies_the_warpers_and_the_stop_criteria():
    from transformers import GenerationConfig, StoppingCriteria

    from deepretrieval_trainer.rewriting.generation import lean_generate

    model = _tiny_model(1)
    ids, mask = _left_padded([[5, 6, 7, 8], [9, 10], [5, 6, 7, 8]])
    greedy = GenerationConfig(max_new_tokens=8, do_sample=False, pad_token_id=0, eos_token_id=None)
    top1 = GenerationConfig(max_new_tokens=8, do_sample=True, temperature=0.7, top_k=1, pad_token_id=0,
                            eos_token_id=None)
    with torch.no_grad():
        assert torch.equal(lean_generate(model, ids, mask, top1), lean_generate(model, ids, mask, greedy))
        torch.manual_seed(0)
        sampled = lean_generate(model, ids, mask, GenerationConfig(max_new_tokens=8, do_sample=True, top_k=0,
                                                                   pad_token_id=0, eos_token_id=None))
    assert sampled.shape == (3, 12) and not torch.equal(sampled[0], sampled[2])  # a group's samples differ

    class StopAfter(StoppingCriteria):  # row 1 stops after 3 new tokens; the others run to the budget
        def __call__(self, input_ids, scores, **kwargs):
            done = torch.zeros(input_ids.shape[0], dtype=torch.bool)
            done[1] = input_ids.shape[1] - ids.shape[1] >= 3
            return done

    with torch.no_grad():
        stopped = lean_generate(model, ids, mask, greedy, stopping_criteria=[StopAfter()])
        full = lean_generate(model, ids, mask, greedy)
    assert torch.equal(stopped[1, 4:7], full[1, 4:7]) and stopped[1, 7:].eq(0).all()  # padded after its stop
    assert torch.equal(stopped[0], full[0])


def test_prompt_lookup_drafts_what_followed_the_latest_earlier_occurrence():
    from deepretrieval_trainer.rewriting.generation import _Lookup

    lookup = _Lookup([5, 6, 7, 8, 5, 6, 9, 4, 5, 6], ngram=3)
    assert lookup.draft(3) == [9, 4, 5]  # (4, 5, 6) is new; (5, 6) last came before 9, not before 7
    assert lookup.draft(10) == [9, 4, 5, 6]  # a draft runs at most to the end of what is written
    lookup.extend([1])
    assert lookup.draft(2) == []  # token 1 never came before
    assert _Lookup([3], ngram=2).draft(4) == []


def test_speculative_greedy_writes_what_greedy_decoding_writes():
    """Prompt-lookup speculation changes how many tokens a forward checks, never which: float32, left padding, a
    shared prefix, a GRPO-like repeated prompt, EOS inside accepted drafts, the token budget, finished rows
    compacted out, against transformers' generate(); and it checks fewer forwards than tokens where drafts hit."""
    from transformers import GenerationConfig

    from deepretrieval_trainer.rewriting.generation import lean_generate

    prefix = list(range(10, 40))
    rows = [prefix + [50, 51], prefix + [52], prefix + [50, 51], prefix + [53, 54, 55, 56], [7, 8, 9]]
    ids, mask = _left_padded(rows)
    forwards = []
    saved = 0
    for seed in range(4):
        model = _tiny_model(seed)
        model.register_forward_hook(lambda module, args, kwargs, output: forwards.append(1), with_kwargs=True)
        for budget in (5, 24):
            config = GenerationConfig(max_new_tokens=budget, do_sample=False, pad_token_id=0, eos_token_id=1)
            with torch.no_grad():
                want = model.generate(input_ids=ids, attention_mask=mask, generation_config=config)
                forwards.clear()
                plain = lean_generate(model, ids, mask, config, compact_below=0)
                one_a_step = len(forwards)
                for speculate in (1, 3, 8):
                    for compact_below in (0, 0.75):
                        forwards.clear()
                        got = lean_generate(model, ids, mask, config, speculate=speculate, compact_below=compact_below)
                        assert torch.equal(got, want), (seed, budget, speculate, compact_below)
                        assert len(forwards) <= one_a_step
                        saved += one_a_step - len(forwards)
            assert torch.equal(plain, want)
    assert saved > 0  # drafts were accepted somewhere, so fewer forwards wrote the same tokens


@pytest.mark.slow
def test_local_rewriter_lean_and_generate_decode_the_same_in_float32():
    from deepretrieval_trainer.rewriting.rewriters import LocalRewriter

    queries = ["vitamin d bone density", "What causes type 1 diabetes in children?", "bm25 ranking"]
    lean = LocalRewriter(dtype="float32", max_new_tokens=48, decoding="lean")
    plain = LocalRewriter(dtype="float32", max_new_tokens=48, decoding="generate")
    speculative = LocalRewriter(dtype="float32", max_new_tokens=48, speculate=6)
    want = [r.completion for r in plain.rewrite(queries)]
    assert [r.completion for r in lean.rewrite(queries)] == want
    assert [r.completion for r in speculative.rewrite(queries)] == want  # stop strings checked token by token
    assert lean._lean is True and plain._lean is False
    with pytest.raises(ValueError, match="decoding='beam'"):
        LocalRewriter(decoding="beam")


def test_rows_that_finish_leave_the_batch_without_changing_the_others():
    """Rows stop at different lengths (a criterion, as ``</answer>`` does): compacting the finished rows out of the
    cache (``compact_below``) writes exactly what keeping them does, and what ``generate()`` writes (float32)."""
    from transformers import GenerationConfig, StoppingCriteria, StoppingCriteriaList

    from deepretrieval_trainer.rewriting.generation import lean_generate

    model = _tiny_model(2)
    rows = [[3, 4, 5, 6], [7, 8], [3, 4, 5, 6], [9, 10, 11], [12], [7, 8]]
    ids, mask = _left_padded(rows)
    stop_at = torch.tensor([2, 9, 4, 14, 5, 3])

    seen_rows = set()

    class StopAt(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            seen_rows.update((input_ids.shape[0], len(input_ids) if scores is None else scores.shape[0]))
            return (input_ids.shape[1] - ids.shape[1]) >= stop_at

    config = GenerationConfig(max_new_tokens=16, do_sample=False, pad_token_id=0, eos_token_id=1)
    with torch.no_grad():
        want = model.generate(input_ids=ids, attention_mask=mask, generation_config=config,
                              stopping_criteria=StoppingCriteriaList([StopAt()]))
        kept = lean_generate(model, ids, mask, config, stopping_criteria=[StopAt()], compact_below=0)
        compacted = lean_generate(model, ids, mask, config, stopping_criteria=[StopAt()], compact_below=0.9)
    assert torch.equal(kept, want) and torch.equal(compacted, want)
    assert want.shape[1] == ids.shape[1] + 14 and want[1, ids.shape[1]] == 1  # row 1 ended at EOS, row 3 ran to 14
    assert seen_rows == {len(rows)}  # criteria see every row, compacted or not
