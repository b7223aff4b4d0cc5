"""Where one greedy decoding step of the embedded model goes on CPU: the whole step vs its linear layers alone.

Batch 8 with a ~230-token KV cache (what LocalRewriter's batch 8 sees), one prefill then 20 single-token steps;
then the model's 211 nn.Linear layers alone on the same batch, and a bare matmul's weight-streaming rate. The gap
between the step and its linears is what the rest of the step (attention, norms, rotary, cache growth, Python)
costs. Not a test: a measurement, recorded in docs/benchmarks.md.

    python benchmarks/decode_step.py [--dtype bfloat16] [--threads 2] [--batch 8]
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--prompt-tokens", type=int, default=230)
    args = parser.parse_args()

    import torch
    from transformers import AutoModelForCausalLM

    from deepretrieval_trainer.common.models import resolve_model

    torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    model = AutoModelForCausalLM.from_pretrained(resolve_model(None), dtype=dtype).eval()
    ids = torch.randint(100, 1000, (args.batch, args.prompt_tokens))
    with torch.inference_mode():
        start = time.perf_counter()
        out = model(input_ids=ids, use_cache=True, logits_to_keep=1)
        prefill = time.perf_counter() - start
        cache, token = out.past_key_values, out.logits[:, -1:].argmax(-1)
        model(input_ids=token, past_key_values=cache, use_cache=True)
        start = time.perf_counter()
        for _ in range(20):
            out = model(input_ids=token, past_key_values=cache, use_cache=True)
            token = out.logits[:, -1:].argmax(-1)
        step = (time.perf_counter() - start) / 20
        linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
        inputs = {m: torch.randn(args.batch, 1, m.in_features, dtype=dtype) for m in linears}
        start = time.perf_counter()
        for _ in range(5):
            for m in linears:
                m(inputs[m])
        linear_s = (time.perf_counter() - start) / 5
    weight_bytes = sum(m.weight.numel() * m.weight.element_size() for m in linears)
    print(f"{args.dtype}, {args.threads} threads, batch {args.batch}, {args.prompt_tokens}-token prompts")
    print(f"prefill {prefill:.2f} s; decode step {step * 1e3:.1f} ms; its {len(linears)} linear layers alone "
          f"{linear_s * 1e3:.1f} ms ({weight_bytes / 1e6:.0f} MB of weights, {weight_bytes / linear_s / 1e9:.1f} GB/s); "
          f"the rest of the step {(step - linear_s) * 1e3:.1f} ms")


if __name__ == "__main__":
    main()
