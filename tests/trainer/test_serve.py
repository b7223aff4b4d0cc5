"""deepretrieval serve without starting vLLM: adapter and base-model resolution, the LoRA rank, the command line,
and the errors. (The real server is started by tests/test_e2e_vllm.py and the vllm tests of test_openai_compat.)"""

from __future__ import annotations

import json
import os
import sys
import time

import pytest

from deepretrieval_trainer.common.models import embedded_model_dir
from deepretrieval_trainer.rewriting.serve import (
    ServeError,
    ServerConfig,
    VLLMServer,
    base_model_for,
    find_adapter,
    find_vllm,
    lora_rank,
)


def fake_adapter(folder, r=8, base=None, rank_pattern=None):
    folder.mkdir(parents=True)
    config = {"r": r, "rank_pattern": rank_pattern or {}, "base_model_name_or_path": base, "peft_type": "LORA"}
    (folder / "adapter_config.json").write_text(json.dumps(config))
    return folder


@pytest.mark.parametrize("r, pattern, expected", [(8, None, 8), (4, None, 8), (16, None, 16), (12, None, 16),
                                                   (8, {"q_proj": 40}, 64), (1, None, 1), (300, None, 320)])
def test_lora_rank_rounds_up_to_a_rank_vllm_accepts(tmp_path, r, pattern, expected):
    assert lora_rank(fake_adapter(tmp_path / "a", r=r, rank_pattern=pattern)) == expected


def test_lora_rank_above_vllm_maximum_says_so(tmp_path):
    with pytest.raises(ValueError, match="above vLLM's maximum 512"):
        lora_rank(fake_adapter(tmp_path / "a", r=1024))


def test_run_dir_or_adapter_folder(tmp_path):
    adapter = fake_adapter(tmp_path / "run" / "adapter")
    assert find_adapter(tmp_path / "run") == adapter == find_adapter(adapter)
    with pytest.raises(FileNotFoundError, match="no adapter_config.json"):
        find_adapter(tmp_path)


def test_base_model_resolution(tmp_path):
    embedded = str(embedded_model_dir())
    run = tmp_path / "run"
    adapter = fake_adapter(run / "adapter", base="/elsewhere/models/smollm2-135m-instruct")
    assert base_model_for(adapter) == embedded  # the embedded model trained on another machine
    assert base_model_for(adapter, "Qwen/Qwen2.5-3B-Instruct") == "Qwen/Qwen2.5-3B-Instruct"
    (run / "run.json").write_text(json.dumps({"base_model": "Qwen/Qwen2.5-3B-Instruct"}))
    assert base_model_for(adapter) == "Qwen/Qwen2.5-3B-Instruct"  # what the run recorded wins
    missing = fake_adapter(tmp_path / "b", base="/no/such/model")
    with pytest.raises(FileNotFoundError, match="--base"):
        base_model_for(missing)


def test_command_line(tmp_path):
    adapters = {"sci": fake_adapter(tmp_path / "a", r=16, base="Qwen/Qwen2.5-3B-Instruct"),
                "nf": fake_adapter(tmp_path / "b", r=8, base="Qwen/Qwen2.5-3B-Instruct")}
    config = ServerConfig(adapters=adapters, port=8123, dtype="bfloat16", extra_args="--max-num-seqs 64")
    command = config.command(tmp_path / "vllm")
    assert command[:3] == [str(tmp_path / "vllm"), "serve", "Qwen/Qwen2.5-3B-Instruct"]
    joined = " ".join(command)
    assert f"--lora-modules sci={adapters['sci']} nf={adapters['nf']}" in joined
    assert "--host 127.0.0.1 --port 8123" in joined and "--max-lora-rank 16" in joined
    assert "--dtype bfloat16" in joined and joined.endswith("--max-num-seqs 64")
    assert config.environment()["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] == "True"
    assert config.base_url == "http://127.0.0.1:8123/v1"


@pytest.mark.parametrize("kwargs, message", [({"adapters": {}}, "adapters is empty"), ({"port": 0}, "port=0"),
                                             ({"adapters": {"a=b": "x"}}, "without '='")])
def test_bad_config_says_what_to_fix(tmp_path, kwargs, message):
    options = {"adapters": {"ok": fake_adapter(tmp_path / "a")}, **kwargs}
    with pytest.raises(ValueError, match=message):
        ServerConfig(**options)


def test_explicit_vllm_path_must_be_executable(tmp_path):
    with pytest.raises(FileNotFoundError, match="not an executable"):
        find_vllm(tmp_path / "nothing")


def test_a_server_that_dies_at_start_reports_its_log_and_leaves_nothing(tmp_path):
    """A stand-in executable that forks a child into its group, prints and exits: start() must raise with the log
    tail, and the group (the child included) must be gone."""
    script = tmp_path / "vllm"
    script.write_text(f"#!{sys.executable}\nimport os, subprocess, sys, time\n"
                      "subprocess.Popen(['sleep', '300'])\nprint('pid', os.getpid(), flush=True)\n"
                      "print('engine core failed: out of memory', flush=True)\n"
                      "time.sleep(0.5)\nsys.exit(3)\n")
    script.chmod(0o755)
    config = ServerConfig(adapters={"a": fake_adapter(tmp_path / "a", base="m/x")}, vllm=script, port=8124,
                          log_file=tmp_path / "log", startup_timeout=30)
    server = VLLMServer(config)
    with pytest.raises(ServeError, match="(?s)exited with code 3.*out of memory"):
        server.start()
    assert server.process is None
    pgid = int((tmp_path / "log").read_text().split()[1])
    with pytest.raises(ProcessLookupError):
        os.killpg(pgid, 0)


@pytest.mark.parametrize("flag", [["--api-key", "sk-serve-0123456789"], ["--api-key=sk-serve-9876543210"]])
def test_the_logged_command_line_masks_the_api_key(tmp_path, caplog, flag):  # one key each: masks are process-wide
    import logging
    import shlex

    caplog.set_level(logging.DEBUG)
    script = tmp_path / "vllm"
    script.write_text(f"#!{sys.executable}\nimport sys\nsys.exit(3)\n")
    script.chmod(0o755)
    config = ServerConfig(adapters={"a": fake_adapter(tmp_path / "a", base="m/x")}, vllm=script, port=8126,
                          log_file=tmp_path / "log", startup_timeout=30, extra_args=shlex.join(flag))
    with pytest.raises(ServeError):
        VLLMServer(config).start()
    key = flag[-1].removeprefix("--api-key=")
    assert key in " ".join(config.command(script))  # the server still gets it
    assert any("starting:" in r.getMessage() and "--api-key" in r.getMessage() for r in caplog.records)
    assert all(key not in r.getMessage() for r in caplog.records)


def test_stop_ends_the_whole_process_group(tmp_path):
    script = tmp_path / "vllm"
    script.write_text(f"#!{sys.executable}\nimport subprocess, time\nsubprocess.Popen(['sleep', '300'])\n"
                      "time.sleep(300)\n")
    script.chmod(0o755)
    config = ServerConfig(adapters={"a": fake_adapter(tmp_path / "a", base="m/x")}, vllm=script, port=8125,
                          log_file=tmp_path / "log")
    server = VLLMServer(config).start(wait=False)
    pgid = server.process.pid
    time.sleep(0.5)
    server.stop(timeout=5)
    with pytest.raises(ProcessLookupError):
        os.killpg(pgid, 0)
    server.stop()  # idempotent


@pytest.mark.slow
@pytest.mark.vllm
def test_served_dtype_is_the_one_asked_for(served_adapter, tmp_path):
    """A real vLLM CPU server started with dtype auto runs in what auto resolves to here (bfloat16 on a CPU with
    bf16 units) on every core, and rewrites through the same client."""
    from deepretrieval_trainer.common.precision import resolve_dtype
    from deepretrieval_trainer.rewriting.openai_compat import OpenAIRewriter
    from tests.vllm_fixtures import free_port

    config = ServerConfig(adapters={"bf": served_adapter}, port=free_port(), log_file=tmp_path / "vllm.log",
                          kv_cache_gib=1)  # beside the session's own server: a small KV cache is plenty here
    expected = resolve_dtype("auto")
    assert config.resolved_dtype == expected
    with VLLMServer(config) as server:
        with OpenAIRewriter("bf", base_url=server.base_url, max_tokens=48) as client:
            result = client.rewrite(["computer indexing of documents"])[0]
    log = (tmp_path / "vllm.log").read_text()
    assert f"dtype=torch.{expected}" in log
    assert result.completion is not None  # the server answered (a rewrite, or a parse fallback with the text)


def test_cpu_engine_gets_every_allowed_core(tmp_path, monkeypatch):
    """vLLM CPU's auto binding reserves a core for its scheduler (the engine got 1 of our 2); serve binds them all,
    unless the user set the variable."""
    from deepretrieval_trainer.rewriting import serve

    monkeypatch.setattr(serve, "has_gpu", lambda: False)
    monkeypatch.delenv("VLLM_CPU_OMP_THREADS_BIND", raising=False)
    config = ServerConfig(adapters={"a": fake_adapter(tmp_path / "a", base="m/x")})
    cores = sorted(os.sched_getaffinity(0))
    assert config.environment()["VLLM_CPU_OMP_THREADS_BIND"] == ",".join(map(str, cores))
    monkeypatch.setenv("VLLM_CPU_OMP_THREADS_BIND", "auto")
    assert config.environment()["VLLM_CPU_OMP_THREADS_BIND"] == "auto"


def test_serve_says_which_path_is_faster_on_cpu(tmp_path):
    """The real CLI, with a stand-in vllm that fails at start: before starting, it says (on CPU) that the in-process
    backend measured faster, with the figures; on a GPU machine it says nothing of the kind."""
    import subprocess

    from deepretrieval_trainer.rewriting.serve import CPU_SPEED_NOTE, has_gpu, speed_note

    script = tmp_path / "vllm"
    script.write_text(f"#!{sys.executable}\nimport sys\nprint('engine core failed', flush=True)\nsys.exit(3)\n")
    script.chmod(0o755)
    adapter = fake_adapter(tmp_path / "a", base="m/x")
    done = subprocess.run([sys.executable, "-m", "deepretrieval_trainer.cli", "serve", "--adapter", str(adapter),
                           "--vllm", str(script), "--port", "8126", "--startup-timeout", "30"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and "error: vllm serve exited with code 3" in done.stderr
    assert "engine core failed" in done.stderr and "Traceback" not in done.stderr
    on_cpu = not has_gpu()
    assert ("in-process backend is faster" in done.stderr) == on_cpu
    assert speed_note(on_gpu=False) == CPU_SPEED_NOTE and speed_note(on_gpu=True) is None
    assert "0.64x" in CPU_SPEED_NOTE and "LocalRewriter" in CPU_SPEED_NOTE
