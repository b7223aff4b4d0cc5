"""In-process rewriting throughput and quality per precision, side by side in one run: the same adapter, greedy,
batch 8, every judged query of a dev split, then nDCG@10 of the rewrites through LlamaIndex BM25 (paired).

Settings:
- ``float32-unmerged``: in-process rewriting without its savings (float32, the adapter applied as peft LoRA layers
  at every token, generation up to max_new_tokens or EOS, no stop at ``</answer>``): what merging and stopping buy;
- ``float32`` / ``bfloat16``: LocalRewriter as it is (the adapter merged into the weights, stop at ``</answer>``);
- ``SETTING@N``: the same at generation batch N instead of ``--batch-size`` (e.g. ``bfloat16@16``);
- ``SETTING:generate``: LocalRewriter through transformers' ``generate()`` (``decoding="generate"``) instead of
  ``lean_generate``: what lean decoding buys (e.g. ``float32:generate@8``);
- ``SETTING:speculate=K``: lean decoding with prompt-lookup speculation, up to K drafted tokens a step
  (``LocalRewriter(speculate=K)``; e.g. ``bfloat16:speculate=6@8``).

    python benchmarks/rewrite_throughput.py --adapter RUN_DIR [--collection scifact --settings float32-unmerged float32 bfloat16]
    python benchmarks/rewrite_throughput.py --adapter none --collection nfcorpus --limit 96 \
        --framing expand --settings bfloat16@8 bfloat16@16 bfloat16@32   # untrained, per batch

The searched query is the rewrite alone, or query + rewrite for a run trained with ``framing: expand``.
Not a test: a measurement, recorded in docs/experiments/cpu-speed.md.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from shared_data import DATA, machine_line


def unmerged_rewriter(adapter: Path, batch_size: int, max_new_tokens: int):
    """LocalRewriter without merging or stopping: float32 weights, peft LoRA layers at decode time, no stop strings."""
    from deepretrieval_trainer.rewriting.rewriters import LocalRewriter

    class Unmerged(LocalRewriter):
        def load(self) -> None:
            with self._lock:
                if self._model is not None:
                    return
                from peft import PeftModel
                from transformers import AutoModelForCausalLM, AutoTokenizer

                from deepretrieval_trainer.common.models import resolve_model

                name = resolve_model(None)
                tokenizer = AutoTokenizer.from_pretrained(name)
                tokenizer.padding_side = "left"
                model = AutoModelForCausalLM.from_pretrained(name, dtype="float32")
                self._model = PeftModel.from_pretrained(model, str(self.adapter)).eval()
                self._tokenizer = tokenizer
                self.resolved_dtype = "float32"

    rewriter = Unmerged(adapter=adapter, batch_size=batch_size, max_new_tokens=max_new_tokens, dtype="float32",
                        decoding="generate")
    rewriter.task = __import__("dataclasses").replace(rewriter.task, stop=())
    return rewriter


def build(setting: str, adapter: Path | None, batch_size: int, max_new_tokens: int):
    from deepretrieval_trainer.rewriting.rewriters import LocalRewriter

    setting, _, batch = setting.partition("@")
    batch_size = int(batch) if batch else batch_size
    setting, _, decoding = setting.partition(":")
    if setting == "float32-unmerged":
        if adapter is None:
            raise SystemExit("float32-unmerged needs an adapter")
        return unmerged_rewriter(adapter, batch_size, max_new_tokens)
    speculate = 0
    if decoding.startswith("speculate="):
        decoding, speculate = "lean", int(decoding.partition("=")[2])
    return LocalRewriter(adapter=adapter, batch_size=batch_size, max_new_tokens=max_new_tokens, dtype=setting,
                         decoding=decoding or "lean", speculate=speculate)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--adapter", required=True,
                        help="a training run folder or peft adapter folder; 'none' for the untrained model")
    parser.add_argument("--collection", default="scifact")
    parser.add_argument("--split", default="dev")
    parser.add_argument("--settings", nargs="+", default=["float32-unmerged", "float32", "bfloat16"])
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--limit", type=int, default=None, help="first N judged queries (default: all)")
    parser.add_argument("--framing", default="replace", choices=("replace", "expand"),
                        help="how to search a rewrite when the adapter's run config does not say (default: replace)")
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args()

    import torch  # noqa: F401 - imported before the machine line so that it reports torch's threads
    import yaml

    from deepretrieval_trainer.evaluation.evaluate import paired_t_test
    from deepretrieval_trainer.retrieval.data import load_beir
    from deepretrieval_trainer.retrieval.metrics import ndcg_at_k
    from deepretrieval_trainer.rewriting.serve import find_adapter
    from llamaindex_deepretrieval import LlamaIndexSearch

    adapter = None if args.adapter == "none" else find_adapter(args.adapter)
    run_config = adapter.parent / "config.yaml" if adapter is not None else Path("/nonexistent")
    framing = (yaml.safe_load(run_config.read_text()) or {}).get("framing", "replace") if run_config.is_file() else \
        args.framing
    collection = load_beir(DATA / args.collection, args.split)
    items = list(collection.judged_queries.items())[: args.limit]
    search = LlamaIndexSearch.from_beir(DATA / args.collection)
    print(f"{machine_line()}, {len(items)} queries, framing {framing}")
    results, scores = [], {}
    for setting in args.settings:
        rewriter = build(setting, adapter, args.batch_size, args.max_new_tokens)
        rewriter.load()
        rewriter.rewrite([items[0][1]])  # warm-up: first-call set-up is not throughput
        start = time.perf_counter()
        rewrites = rewriter.rewrite([text for _, text in items])
        wall = time.perf_counter() - start
        searched = [f"{r.original} {r.query}" if framing == "expand" and not r.fell_back else r.query for r in rewrites]
        rankings = search.search(searched, 10)
        scores[setting] = [ndcg_at_k(ranking, collection.qrels[qid], 10) for (qid, _), ranking in zip(items, rankings)]
        results.append({"setting": setting, "queries": len(items), "wall_s": wall, "queries_per_s": len(items) / wall,
                        "fell_back": sum(r.fell_back for r in rewrites),
                        "ndcg@10": sum(scores[setting]) / len(items)})
        print(json.dumps(results[-1]), flush=True)
        del rewriter
    base = results[0]
    print(f"\n{'setting':18} {'q/s':>6} {'vs first':>8} {'nDCG@10':>8} {'fallback':>8}")
    for r in results:
        print(f"{r['setting']:18} {r['queries_per_s']:6.2f} {r['queries_per_s'] / base['queries_per_s']:7.2f}x "
              f"{r['ndcg@10']:8.4f} {r['fell_back']:8d}")
    names = list(scores)
    for other in names[1:]:
        deltas = [b - a for a, b in zip(scores[names[0]], scores[other])]
        _, p = paired_t_test(scores[other], scores[names[0]])
        print(f"{other} vs {names[0]}: mean nDCG@10 delta {sum(deltas) / len(deltas):+.4f}, "
              f"{sum(d > 1e-9 for d in deltas)}/{sum(abs(d) <= 1e-9 for d in deltas)}/{sum(d < -1e-9 for d in deltas)} "
              f"wins/ties/losses, paired t-test p={p if p is None else round(p, 3)}")
    if args.json:
        Path(args.json).write_text(json.dumps({"results": results, "scores": scores}, indent=1))


if __name__ == "__main__":
    main()
