"""One dtype decision from the machine: auto is bfloat16 where the CPU has bf16 units, float32 where it has none (or
bf16 is forced off), and training, the in-process rewriter and the server all honour it."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from deepretrieval_trainer.common.errors import ConfigError
from deepretrieval_trainer.common.precision import BF16_CPU_FLAGS, check_dtype, cpu_bf16_flags, describe, resolve_dtype
from deepretrieval_trainer.training.config import TrainConfig


def _cpuinfo_has_bf16() -> bool:
    """Read independently of the code under test: the kernel's own CPU flags."""
    text = Path("/proc/cpuinfo").read_text()
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith(("flags", "Features"))),
                 [])
    return bool(set(flags) & set(BF16_CPU_FLAGS))


def test_auto_follows_the_cpu_flags():
    expected = "bfloat16" if _cpuinfo_has_bf16() else "float32"
    assert resolve_dtype("auto") == expected
    assert bool(cpu_bf16_flags()) == _cpuinfo_has_bf16()


@pytest.mark.skipif(not _cpuinfo_has_bf16(), reason="the CPU has no bf16 flags")
def test_auto_picks_bf16_here_and_float32_when_forced_unavailable(monkeypatch, caplog):
    assert resolve_dtype("auto") == "bfloat16"
    assert "amx_bf16" in describe() or "avx512_bf16" in describe()
    monkeypatch.setenv("DEEPRETRIEVAL_BF16", "0")
    assert resolve_dtype("auto") == "float32"
    assert "forced off" in describe()
    with caplog.at_level(logging.WARNING):
        assert resolve_dtype("bfloat16") == "bfloat16"  # asked for explicitly: honoured, with a warning
    assert "emulated" in caplog.text
    assert resolve_dtype("float32") == "float32"


def test_a_machine_without_bf16_gets_float32_without_failing(monkeypatch):
    """No capability report from torch and no flags in /proc/cpuinfo: auto must still decide."""
    import torch

    from deepretrieval_trainer.common import precision

    precision.cpu_bf16_flags.cache_clear()
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: (_ for _ in ()).throw(RuntimeError("old torch")))
    monkeypatch.setattr(precision, "Path", lambda _: Path("/nonexistent/cpuinfo"))
    try:
        assert precision.cpu_bf16_flags() == ()
        assert resolve_dtype("auto") == "float32"
    finally:
        precision.cpu_bf16_flags.cache_clear()


def test_bad_dtype_names_the_choices():
    with pytest.raises(ValueError, match=r"dtype='half' is not a dtype: choose one of \['auto', 'float32', 'bfloat16'\]"):
        check_dtype("half")
    with pytest.raises(ConfigError, match="dtype='fp16' is not supported"):
        TrainConfig(dtype="fp16")


def test_old_bf16_key_is_read_as_dtype(caplog):
    with caplog.at_level(logging.WARNING):
        assert TrainConfig.from_dict({"bf16": True}).dtype == "bfloat16"
        assert TrainConfig.from_dict({"bf16": False}).dtype == "float32"
    assert "bf16 is replaced by dtype" in caplog.text
    assert TrainConfig.from_dict({"bf16": True, "dtype": "float32"}).dtype == "float32"  # the new key wins


def test_training_arguments_carry_the_resolved_dtype(tmp_path, monkeypatch):
    pytest.importorskip("trl")
    from deepretrieval_trainer.training.engine import grpo_args
    from deepretrieval_trainer.training.run_dir import RunDir

    run = RunDir(tmp_path / "run")
    args = grpo_args(TrainConfig(dtype="bfloat16"), run)
    assert args.bf16 and args.use_cpu and args.model_init_kwargs == {"dtype": "bfloat16"}
    args = grpo_args(TrainConfig(dtype="float32"), run)
    assert not args.bf16 and args.model_init_kwargs == {"dtype": "float32"}
    monkeypatch.setenv("DEEPRETRIEVAL_BF16", "0")
    assert grpo_args(TrainConfig(), run).model_init_kwargs == {"dtype": "float32"}


def test_the_server_is_started_with_the_resolved_dtype(tmp_path, monkeypatch):
    from deepretrieval_trainer.rewriting.serve import ServerConfig
    from tests.vllm_fixtures import make_peft_adapter

    adapter = make_peft_adapter(tmp_path / "adapter")
    expected = "bfloat16" if _cpuinfo_has_bf16() else "float32"
    command = " ".join(ServerConfig(adapters={"a": adapter}).command(Path("/bin/vllm")))
    assert f"--dtype {expected}" in command
    assert "--dtype float32" in " ".join(ServerConfig(adapters={"a": adapter}, dtype="float32").command(Path("vllm")))
    monkeypatch.setenv("DEEPRETRIEVAL_BF16", "0")
    assert "--dtype float32" in " ".join(ServerConfig(adapters={"a": adapter}).command(Path("/bin/vllm")))
    with pytest.raises(ValueError, match="not a dtype"):
        ServerConfig(adapters={"a": adapter}, dtype="half")


@pytest.mark.slow
def test_bf16_training_writes_an_adapter_both_dtypes_load(tmp_path, adi_test):
    """A 2-step run with dtype bfloat16 records its dtype; LocalRewriter loads its adapter in bf16 and float32."""
    import torch

    from deepretrieval_trainer.retrieval.bm25 import BM25Search
    from deepretrieval_trainer.rewriting.rewriters import LocalRewriter
    from deepretrieval_trainer.training.retrieval import train

    config = TrainConfig(run_dir=str(tmp_path / "run"), max_steps=2, save_steps=2, prompts_per_step=1,
                         num_generations=2, max_completion_length=48, max_queries=4, torch_threads=2,
                         dtype="bfloat16")
    adapter = train(BM25Search(adi_test.corpus), adi_test, config)
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    assert info["precision"]["dtype"] == "bfloat16" and info["precision"]["setting"] == "bfloat16"
    assert "bfloat16" in (tmp_path / "run" / "README.md").read_text()
    from safetensors.torch import load_file

    saved = load_file(str(Path(adapter) / "adapter_model.safetensors"))
    assert saved and all(t.dtype == torch.float32 for t in saved.values())  # LoRA weights stay float32
    query = [adi_test.queries[next(iter(adi_test.judged_queries))]]
    for dtype in ("bfloat16", "float32"):
        rewriter = LocalRewriter(adapter=adapter, dtype=dtype, max_new_tokens=48)
        result = rewriter.rewrite(query)[0]
        assert rewriter.resolved_dtype == dtype
        assert next(rewriter._model.parameters()).dtype == getattr(torch, dtype)
        assert result.query  # a rewrite or the logged fallback: never an exception
