import json
import re
import zipfile

import pytest

from deepretrieval_trainer.cli import main
from deepretrieval_trainer.commands.demo import _splits
from deepretrieval_trainer.common.errors import DataError
from deepretrieval_trainer.retrieval import beir_download
from deepretrieval_trainer.rewriting.card import read_card
from deepretrieval_trainer.retrieval.beir_download import resolve_collection
from deepretrieval_trainer.retrieval.data import load_beir


def test_splits_use_what_the_collection_has(data_dir, tmp_path, caplog):
    assert _splits(data_dir / "scifact", None, None) == ("train", "dev")
    both = tmp_path / "both"
    (both / "qrels").mkdir(parents=True)
    for name in ("test", "dev"):
        (both / "qrels" / f"{name}.tsv").write_text((data_dir / "adi" / "qrels" / "test.tsv").read_text())
    assert _splits(both, None, None) == ("dev", "dev")  # dev is preferred over test for evaluation
    assert _splits(both, "test", None) == ("test", "dev")
    assert _splits(data_dir / "adi", None, None) == ("test", "test")  # adi has only a test split
    assert "optimistic" in caplog.text
    with pytest.raises(DataError, match="splits here are"):
        _splits(data_dir / "adi", None, "dev")


def test_resolve_collection_by_folder_and_by_name(data_dir, tmp_path, monkeypatch):
    assert resolve_collection(data_dir / "adi") == data_dir / "adi"
    with pytest.raises(DataError, match="BEIR dataset name"):
        resolve_collection(tmp_path / "missing" / "Folder Name")
    # a BEIR-style zip ({name}/corpus.jsonl ...) served from a file:// URL instead of BEIR's server
    archive = tmp_path / "tiny.zip"
    with zipfile.ZipFile(archive, "w") as bundle:
        for file in (data_dir / "adi").rglob("*"):
            if file.is_file():
                bundle.write(file, f"tiny/{file.relative_to(data_dir / 'adi')}")
    monkeypatch.setenv("DEEPRETRIEVAL_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(beir_download, "BEIR_URL", archive.as_uri().replace("tiny.zip", "{name}.zip"))
    monkeypatch.chdir(tmp_path)
    fetched = resolve_collection("tiny")
    assert fetched == tmp_path / "cache" / "datasets" / "tiny"
    assert load_beir(fetched, "test").qrels == load_beir(data_dir / "adi", "test").qrels
    archive.unlink()
    assert resolve_collection("tiny") == fetched  # cached: no second download
    with pytest.raises(DataError, match="could not download"):
        resolve_collection("absent")


@pytest.mark.slow
def test_tiny_demo_trains_evaluates_and_resumes(data_dir, tmp_path, capsys):
    run_dir = tmp_path / "run"
    argv = ["demo", "--data", str(data_dir / "adi"), "--steps", "1", "--limit", "3", "--run-dir", str(run_dir),
            "--no-progress"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "train on 'test', evaluate on 'test'" in out
    for name in ("raw", "prf", "base", "trained", "nDCG@10", str(run_dir / "adapter"), "results.png"):
        assert name in out, name
    # the verdict against each baseline, in plain words, with the paired figures
    assert re.search(r"trained (beat|did NOT beat|was above, not significantly,) raw: nDCG@10 [+-]\d\.\d{4} over 3 "
                     r"queries \(wins/ties/losses \d/\d/\d, paired t-test p=", out)
    assert "prf: nDCG@10" in out and "base: nDCG@10" in out
    results = json.loads((run_dir / "eval" / "results.json").read_text())
    assert [s["name"] for s in results["summary"]] == ["raw", "prf", "base", "trained"]
    assert all(s["queries"] == 3 for s in results["summary"])
    assert (run_dir / "adapter" / "adapter_config.json").is_file()
    assert (run_dir / "eval" / "results.png").is_file()
    # trained and evaluated with the original query + rewrite, and the adapter's card says so to whoever serves it
    assert "framing: expand" in (run_dir / "config.yaml").read_text()
    assert "query_weight: 3" in (run_dir / "config.yaml").read_text()
    written = (run_dir / "config.yaml").read_text()
    assert "reward_k: 10" in written  # rewarded by the metric the table reports
    assert "drop_uniform_groups: true" in written
    card = read_card(run_dir / "adapter")
    assert (card.framing, card.query_weight, card.task, card.base_model) == ("expand", 3, "retrieval",
                                                                            "smollm2-135m-instruct")
    assert "the original query (3 times) followed by the rewrite" in (run_dir / "README.md").read_text()
    # re-running resumes the same run: one more step, and the cached base rewrites are reused
    assert main([*argv[:4], "2", *argv[5:]]) == 0
    info = json.loads((run_dir / "run.json").read_text())
    assert info["steps"] == 2
