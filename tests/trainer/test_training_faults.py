"""Faults the training loop survives: a retriever that fails mid-step, kill -9, a half-written
checkpoint, a read-only or full disk. Real components throughout: the embedded model, a Haystack pipeline, a
loopback PubMed server, real file systems (tmpfs mounts where the system allows them)."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from deepretrieval_trainer.common.errors import ConfigError, TrainingError
from deepretrieval_trainer.training.config import TrainConfig
from deepretrieval_trainer.training.retrieval import train
from deepretrieval_trainer.training.run_dir import RunDir, checkpoint_complete

NO_MODEL = "/nonexistent/model"  # loading this would raise OSError: seeing our error proves nothing loaded
ROOT = Path(__file__).resolve().parents[2]


def tiny(run_dir, **values) -> TrainConfig:
    base = dict(run_dir=str(run_dir), max_steps=4, save_steps=1, prompts_per_step=1, num_generations=2,
                max_completion_length=16, max_queries=4, torch_threads=1, learning_rate=1e-4)
    return TrainConfig(**{**base, **values})


@pytest.fixture
def mount(tmp_path):
    """mount(options) -> a fresh tmpfs folder with those mount options (root only); unmounted afterwards."""
    mounted = []

    def make(options: str) -> Path:
        target = tmp_path / f"mnt{len(mounted)}"
        target.mkdir()
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(target)], capture_output=True)
        if done.returncode:
            pytest.skip(f"cannot mount a tmpfs here ({done.stderr.decode().strip()}): needs root")
        mounted.append(target)
        return target

    yield make
    for target in mounted:
        subprocess.run(["umount", str(target)], check=False)


def _bm25(data_dir):
    from deepretrieval_trainer.retrieval.bm25 import BM25Search
    from deepretrieval_trainer.retrieval.data import load_corpus

    return BM25Search(load_corpus(data_dir / "adi"))


def test_a_read_only_run_folder_fails_before_the_model_loads(tmp_path, mount, adi_test, data_dir):
    if os.geteuid() == 0:
        parent = mount("ro,size=1m")
    else:  # permissions bind a non-root user
        parent = tmp_path / "ro"
        parent.mkdir(mode=0o555)
    with pytest.raises(ConfigError, match=r"run_dir=.* cannot be written \(Read-only file system|Permission denied"):
        train(_bm25(data_dir), adi_test, tiny(parent / "run", model=NO_MODEL))


def test_a_full_disk_fails_before_the_model_loads(mount, adi_test, data_dir):
    disk = mount("size=256k")
    with pytest.raises(ConfigError, match=r"run_dir=.*: no space left on its device"):
        train(_bm25(data_dir), adi_test, tiny(disk / "run", model=NO_MODEL))
    assert not (disk / "run" / ".write-probe").exists()


def _checkpoint(run_dir: Path, step: int, *, complete: bool = True, name: str | None = None) -> Path:
    import numpy as np
    from safetensors.numpy import save_file

    folder = run_dir / "checkpoints" / (name or f"checkpoint-{step}")
    folder.mkdir(parents=True)
    save_file({"lora_A": np.zeros((2, 4), dtype=np.float32)}, str(folder / "adapter_model.safetensors"))
    state = json.dumps({"global_step": step})
    (folder / "trainer_state.json").write_text(state if complete else state[:7], encoding="utf-8")
    return folder


def test_a_half_written_checkpoint_is_set_aside_and_resume_takes_the_last_complete_one(tmp_path):
    run = RunDir(tmp_path / "run")
    _checkpoint(run.path, 1)
    _checkpoint(run.path, 2)
    _checkpoint(run.path, 3, complete=False)  # killed between the adapter and trainer_state.json
    assert run.last_checkpoint().name == "checkpoint-2"
    resumed = run.prepare(tiny(run.path, resume=True), fingerprint="x")
    assert resumed.name == "checkpoint-2" and checkpoint_complete(resumed)
    assert not (run.checkpoints / "checkpoint-3").exists()
    assert len(list(run.checkpoints.glob(".incomplete-checkpoint-3-*"))) == 1
    other = tmp_path / "other"
    _checkpoint(other, 1, complete=False)
    with pytest.raises(ConfigError, match="already holds a run"):  # an incomplete checkpoint still means a run
        RunDir(other).prepare(tiny(other), "x")


def test_a_metrics_line_cut_by_a_kill_does_not_make_the_folder_unreadable(tmp_path):
    run = RunDir(tmp_path / "run")
    run.write_info(status="running")
    run.append_metrics({"step": 1, "reward": 0.5})
    with run.metrics.open("a", encoding="utf-8") as handle:
        handle.write('{"step": 2, "rew')
    assert run.read_metrics() == [{"step": 1, "reward": 0.5}]
    run.write_info(status="failed")
    assert run.read_info() == {"status": "failed"} and not list(run.path.glob(".run.json-*"))


# -- run folders that cannot be written, and checkpoints or run facts that cannot be read -----------------------


@pytest.fixture
def read_only_folder(tmp_path, mount):
    """read_only_folder(fill) -> a folder filled by ``fill(folder)``, then made read-only: a tmpfs remounted read-only
    (root, whom permissions do not bind), else folder permissions."""

    def make(fill) -> Path:
        if os.geteuid() == 0:
            folder = mount("size=4m")
            fill(folder)
            done = subprocess.run(["mount", "-o", "remount,ro", str(folder)], capture_output=True, check=False)
            if done.returncode:
                pytest.skip(f"cannot remount read-only here ({done.stderr.decode().strip()})")
        else:
            folder = tmp_path / "ro"
            folder.mkdir()
            fill(folder)
            for path in [*folder.rglob("*"), folder]:
                if path.is_dir():
                    path.chmod(0o555)
        return folder

    return make


def _file_in_place_of_the_folder(tmp_path, read_only_folder):
    (tmp_path / "run").write_text("notes", encoding="utf-8")
    return tmp_path / "run", r"run_dir='.*run' is a file, not a folder: choose a folder for the run"


def _read_only(tmp_path, read_only_folder):
    return read_only_folder(lambda folder: None), UNWRITABLE


def _read_only_with_an_incomplete_checkpoint(tmp_path, read_only_folder):
    def fill(folder):
        _checkpoint(folder, 1)
        _checkpoint(folder, 2, complete=False)

    return read_only_folder(fill), UNWRITABLE


UNWRITABLE = r"run_dir=.* cannot be written \((Read-only file system|Permission denied)\): choose a writable run_dir"
UNWRITABLE_FOLDERS = {"a file in place of the run folder": _file_in_place_of_the_folder,
                      "an existing read-only run folder": _read_only,
                      "a read-only run folder holding an incomplete checkpoint": _read_only_with_an_incomplete_checkpoint}


@pytest.mark.parametrize("resume", [False, True])
@pytest.mark.parametrize("fault", UNWRITABLE_FOLDERS)
def test_a_run_folder_that_cannot_be_written_is_a_config_error_before_anything_moves(tmp_path, read_only_folder,
                                                                                     adi_test, data_dir, fault, resume):
    """The probe's cleanup raised OSError over the ConfigError, and resume renamed an incomplete checkpoint before it
    checked the folder: both were tracebacks."""
    run_dir, message = UNWRITABLE_FOLDERS[fault](tmp_path, read_only_folder)
    if (run_dir / "checkpoints").is_dir() and not resume:
        message = r"run_dir=.* already holds a run .*: pass resume=True \(--resume\) to continue it"
    before = sorted(p.name for p in run_dir.rglob("*")) if run_dir.is_dir() else None
    with pytest.raises(ConfigError, match=message):
        train(_bm25(data_dir), adi_test, tiny(run_dir, model=NO_MODEL, resume=resume))
    assert (sorted(p.name for p in run_dir.rglob("*")) if run_dir.is_dir() else None) == before


def test_the_cli_reports_an_unwritable_run_folder_in_one_line(tmp_path, read_only_folder, capsys, data_dir):
    from deepretrieval_trainer.cli import main

    run_dir, message = _read_only_with_an_incomplete_checkpoint(tmp_path, read_only_folder)
    code = main(["train", "--data-path", str(data_dir / "adi"), "--data-split", "test", "--retriever-framework",
                 "bm25s", "--run-dir", str(run_dir), "--resume", "--model", NO_MODEL, "--max-queries", "4"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err, err
    assert re.match("error: " + message, err.strip().splitlines()[-1]), err


def _safetensors_bytes() -> bytes:
    import numpy as np
    from safetensors.numpy import save

    return save({"lora_A": np.zeros((2, 4), dtype=np.float32)})


UNREADABLE_CHECKPOINTS = {  # fault -> (what to do to checkpoint-2, what the warning says)
    "trainer_state.json nested past the recursion limit": (
        lambda f: (f / "trainer_state.json").write_text("[" * 100_000 + "]" * 100_000),
        "its trainer_state.json is missing or unreadable (RecursionError)"),
    "an adapter file of garbage": (
        lambda f: (f / "adapter_model.safetensors").write_bytes(b"garbage, not weights"),
        "adapter_model.safetensors is not a safetensors file (its header length does not fit the file)"),
    "an adapter file cut short": (
        lambda f: (f / "adapter_model.safetensors").write_bytes(_safetensors_bytes()[:-3]),
        "adapter_model.safetensors is cut short or padded"),
    "a safetensors header that is not JSON": (
        lambda f: (f / "adapter_model.safetensors").write_bytes((10).to_bytes(8, "little") + b"{not json}"),
        "adapter_model.safetensors is not a safetensors file (its header is not JSON)"),
    "a safetensors header that describes no tensors": (
        lambda f: (f / "adapter_model.safetensors").write_bytes((6).to_bytes(8, "little") + b'{"a":1}'[:6]),
        "adapter_model.safetensors is not a safetensors file"),
    "an empty adapter file": (
        lambda f: (f / "adapter_model.safetensors").write_bytes(b""), "adapter_model.safetensors is not a safetensors"),
    "no adapter file": (lambda f: (f / "adapter_model.safetensors").unlink(), "it holds no adapter file"),
}


@pytest.mark.parametrize("fault", UNREADABLE_CHECKPOINTS)
def test_an_unreadable_checkpoint_is_set_aside_like_an_incomplete_one(tmp_path, caplog, fault):
    damage, reason = UNREADABLE_CHECKPOINTS[fault]
    run = RunDir(tmp_path / "run")
    _checkpoint(run.path, 1)
    damage(_checkpoint(run.path, 2))
    resumed = run.prepare(tiny(run.path, resume=True), fingerprint="x")
    assert resumed.name == "checkpoint-1"
    assert not (run.checkpoints / "checkpoint-2").exists() and list(run.checkpoints.glob(".incomplete-checkpoint-2-*"))
    assert f"checkpoint-2 was not completely written (a crash while saving?): {reason}" in caplog.text
    assert "moved to .incomplete-checkpoint-2-" in caplog.text


@pytest.mark.parametrize("name", ["checkpoint-\u00b2", "checkpoint-\u0663", "checkpoint-\uff11", "checkpoint-2x"])
def test_a_checkpoint_folder_not_named_by_ascii_digits_is_ignored_with_a_warning(tmp_path, caplog, name):
    """str.isdigit() is True for '²', '٣' and '１', and int('²') raises: resume crashed listing the checkpoints."""
    run = RunDir(tmp_path / "run")
    _checkpoint(run.path, 2, name=name)
    assert run.prepare(tiny(run.path), fingerprint="x") is None  # not a run to refuse: nothing of it is resumable
    _checkpoint(run.path, 1)
    assert run.prepare(tiny(run.path, resume=True), fingerprint="x").name == "checkpoint-1"
    assert (run.checkpoints / name).is_dir()  # left as it is
    assert caplog.text.count(f"{name} is not a checkpoint-N folder (N in ASCII digits): ignored") == 1


@pytest.mark.parametrize("content", ["[]", '"a text"', "null", '{"dataset": []}',
                                     pytest.param("[" * 100_000 + "]" * 100_000, id="nested past the recursion limit")])
def test_a_run_json_that_is_not_an_object_is_read_as_empty_and_rewritten(tmp_path, caplog, content):
    run = RunDir(tmp_path / "run")
    _checkpoint(run.path, 1)
    run.info.write_text(content, encoding="utf-8")
    assert run.prepare(tiny(run.path, resume=True), fingerprint="x").name == "checkpoint-1"
    run.write_info(status="running")
    assert run.read_info()["status"] == "running"
    assert content.startswith("{") or "run.json" in caplog.text


# -- real training runs (slow) ---------------------------------------------------------------------------------


def _flaky_pipeline(data_dir, switch: dict):
    """A real Haystack pipeline around a BM25 retriever that, while ``switch["broken"]()`` is true, raises
    (``switch["fault"] == "raises"``) or blocks (``"hangs"``, as a store that stops answering)."""
    from haystack import Document, Pipeline, component

    from haystack_deepretrieval import HaystackSearch

    inner = HaystackSearch.from_beir(data_dir / "adi").retriever

    @component
    class FlakyRetriever:
        @component.output_types(documents=list[Document])
        def run(self, query: str, top_k: int | None = None):
            if switch["broken"]() and switch["fault"] == "raises":
                raise ConnectionError("the document store went away")
            while switch["broken"]():
                time.sleep(0.05)
            return inner.run(query=query, top_k=top_k)

    pipeline = Pipeline()
    pipeline.add_component("retriever", FlakyRetriever())
    return HaystackSearch(pipeline=pipeline)


def _steps(run_dir: Path) -> list[int]:
    return [row["step"] for row in RunDir(run_dir).read_metrics()]


@pytest.mark.slow
@pytest.mark.parametrize("fault", ["raises", "hangs"])
def test_a_retriever_failing_mid_step_keeps_the_checkpoint_and_resume_continues(tmp_path, adi_test, data_dir, fault):
    run_dir = tmp_path / "run"
    healed = threading.Event()
    switch = {"fault": fault,
              "broken": lambda: (run_dir / "checkpoints" / "checkpoint-2").is_dir() and not healed.is_set()}
    search = _flaky_pipeline(data_dir, switch)
    with pytest.raises(TrainingError) as caught:
        train(search, adi_test, tiny(run_dir, search_timeout=5.0))
    message = str(caught.value)
    assert "the retriever HaystackSearch failed in training step 3" in message
    cause = "the document store went away" if fault == "raises" else "HaystackSearch.search of"
    assert cause in message and "checkpoint-2 (step 2)" in message and "--resume" in message
    info = RunDir(run_dir).read_info()
    assert info["status"] == "failed" and info["failed_step"] == 3 and info["failed_in"] == "HaystackSearch"
    assert checkpoint_complete(run_dir / "checkpoints" / "checkpoint-2") and _steps(run_dir) == [1, 2]

    healed.set()  # the retriever is back
    train(search, adi_test, tiny(run_dir, resume=True))
    assert _steps(run_dir) == [1, 2, 3, 4] and RunDir(run_dir).read_info()["status"] == "completed"
    assert checkpoint_complete(run_dir / "checkpoints" / "checkpoint-4")


@pytest.mark.slow
@pytest.mark.parametrize("fault", ["goes away", "hangs"])
def test_a_search_server_that_goes_away_or_hangs_fails_the_step_naming_the_engine(tmp_path, adi_test, fault):
    from deepretrieval_trainer.literature.http import HttpPolicy
    from deepretrieval_trainer.literature.pubmed import PubMedSearch
    from tests.trainer.literature.loopback import Loopback, fake_esearch

    ids = list(adi_test.corpus)[:50]
    run_dir = tmp_path / "run"
    saved = run_dir / "checkpoints" / "checkpoint-1"
    answer = fake_esearch(ids)

    def service(path, params):  # after the first checkpoint: a valid answer, one byte every 0.5 s
        found = answer(path, params)
        if fault == "hangs" and saved.is_dir():
            found.trickle_s = 0.5
        return found

    server = Loopback(service).__enter__()

    def take_it_away():
        while not saved.is_dir():
            time.sleep(0.05)
        server.__exit__()  # the port now refuses connections

    if fault == "goes away":
        threading.Thread(target=take_it_away, daemon=True).start()
    engine = PubMedSearch(base_url=server.url, api_key="", page_size=50,
                          policy=HttpPolicy(requests_per_second=100, timeout_s=2.0, max_retries=1, backoff_s=0.01))
    try:
        with pytest.raises(TrainingError, match=r"the retriever PubMedSearch failed in training step \d+: "
                                                r"SearchServiceError") as caught:
            train(engine, adi_test, tiny(run_dir, max_steps=3))
    finally:
        if fault == "hangs":
            server.__exit__()
    assert ("DeadlineExceeded" in str(caught.value)) == (fault == "hangs")
    assert checkpoint_complete(saved)


KILLED_RUN = """
import sys
from deepretrieval_trainer.retrieval.bm25 import BM25Search
from deepretrieval_trainer.training.config import TrainConfig
from deepretrieval_trainer.retrieval.data import load_beir, load_corpus
from deepretrieval_trainer.training.retrieval import train

data, run_dir = sys.argv[1], sys.argv[2]
train(BM25Search(load_corpus(data)), load_beir(data, "test"),
      TrainConfig(run_dir=run_dir, max_steps=50, save_steps=1, prompts_per_step=1, num_generations=2,
                  max_completion_length=16, max_queries=4, torch_threads=1, learning_rate=1e-4))
"""


@pytest.mark.slow
def test_kill_9_loses_at_most_save_steps_and_a_half_written_checkpoint_is_skipped(tmp_path, adi_test, data_dir):
    run_dir = tmp_path / "run"
    script = tmp_path / "run_training.py"
    script.write_text(textwrap.dedent(KILLED_RUN), encoding="utf-8")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    log = tmp_path / "stderr.txt"  # a file, not a pipe: a full pipe buffer would block the child
    with log.open("wb") as stderr:
        process = subprocess.Popen([sys.executable, str(script), str(data_dir / "adi"), str(run_dir)], cwd=ROOT,
                                   env=env, stdout=subprocess.DEVNULL, stderr=stderr)
    give_up = time.monotonic() + 900  # a guard against a stuck child, not a measurement
    try:
        while not (run_dir / "checkpoints" / "checkpoint-3").is_dir():  # wait for a few steps, then kill -9
            assert process.poll() is None, log.read_text(errors="replace")[-3000:]
            assert time.monotonic() < give_up, "the training process made no checkpoint-3 in 15 minutes"
            time.sleep(0.05)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    run = RunDir(run_dir)
    done = max(_steps(run_dir))  # steps the killed process finished (the folder stays readable)
    assert run.read_info()["status"] == "running"
    last = run.last_checkpoint()
    # a save cut short, as a kill inside trainer._save_checkpoint leaves it: weights written, state not yet
    half = run.checkpoints / f"checkpoint-{int(last.name.split('-')[1]) + 1}"
    if not half.exists():
        shutil.copytree(last, half)
    (half / "trainer_state.json").write_text('{"global_st', encoding="utf-8")
    resumed_from = int(run.last_checkpoint().name.split("-")[1])
    assert done - resumed_from <= 1  # save_steps

    train(_bm25(data_dir), adi_test, tiny(run_dir, max_steps=resumed_from + 2, resume=True))
    assert _steps(run_dir) == list(range(1, resumed_from + 3))
    assert list(run.checkpoints.glob(f".incomplete-{half.name}-*"))
    assert checkpoint_complete(run.checkpoints / f"checkpoint-{resumed_from + 2}")
    assert run.read_info()["status"] == "completed"


def test_sql_training_shares_the_fault_handling(mount):
    """Text-to-SQL runs through the same training loop (engine.run_training): a full disk fails before the model loads."""
    from deepretrieval_trainer.sql.spider import load_sql_examples
    from deepretrieval_trainer.sql.train import train_sql
    from tests.conftest import collection_path

    disk = mount("size=256k")
    examples = load_sql_examples(collection_path("spider"), "train")
    with pytest.raises(ConfigError, match=r"run_dir=.*: no space left on its device"):
        train_sql(examples, tiny(disk / "run", task="sql", model=NO_MODEL))
