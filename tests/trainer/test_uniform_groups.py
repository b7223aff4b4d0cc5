"""drop_uniform_groups (DAPO's dynamic-sampling filter): groups whose samples all scored alike leave the loss.

The row selection and batch trimming are checked on tensors; a short real GRPO run (real TRL, real BM25, the embedded
model) checks that the trainer drops every group TRL itself counts as zero-std, and still trains and saves.
"""

from __future__ import annotations

import json
import math

import pytest

from deepretrieval_trainer.common.errors import ConfigError
from deepretrieval_trainer.training.config import TrainConfig

torch = pytest.importorskip("torch")


def test_uniform_rows_are_the_groups_whose_advantages_are_all_zero():
    from deepretrieval_trainer.training.trl_trainer import uniform_group_rows

    nan = math.nan
    rewards = torch.tensor([
        [0.1, 0.5], [0.1, 0.5], [0.1, 0.5],   # group 0: alike in both functions -> uniform
        [0.1, 0.5], [0.1, 0.2], [0.1, 0.5],   # group 1: retrieval differs -> teaches
        [0.1, 0.0], [-2.0, 0.0], [0.1, 0.0],  # group 2: format differs -> teaches
        [nan, 0.3], [nan, 0.3], [nan, nan],   # group 3: alike where scored -> uniform per function
        [0.75, 0.25], [0.5, 0.5], [0.25, 0.75],  # group 4: functions differ, their sums do not
        [nan, 0.3], [0.5, 0.3], [0.5, 0.3],   # group 5: alike per function, but the sums are .3, .8, .8
    ])
    per_function = uniform_group_rows(rewards, 3)
    assert per_function.view(-1, 3)[:, 0].tolist() == [True, False, False, True, False, True]
    summed = uniform_group_rows(rewards, 3, torch.ones(2))  # TRL's sum_then_normalize, weights 1
    assert summed.view(-1, 3)[:, 0].tolist() == [True, False, False, True, True, False]
    assert summed.tolist() == [g for g in summed.view(-1, 3)[:, 0].tolist() for _ in range(3)]


def _batch():
    """Two groups of two: prompts left-padded, completions right-padded; the second group is the longer one."""
    return {
        "prompt_ids": torch.tensor([[0, 0, 5, 6], [0, 0, 5, 6], [7, 8, 9, 10], [7, 8, 9, 10]]),
        "prompt_mask": torch.tensor([[0, 0, 1, 1], [0, 0, 1, 1], [1, 1, 1, 1], [1, 1, 1, 1]]),
        "completion_ids": torch.tensor([[11, 0, 0], [12, 13, 0], [14, 15, 16], [17, 0, 0]]),
        "completion_mask": torch.tensor([[1, 0, 0], [1, 1, 0], [1, 1, 1], [1, 0, 0]]),
        "ref_per_token_logps": torch.arange(12, dtype=torch.float).view(4, 3),
        "advantages": torch.tensor([0.0, 0.0, 0.7, -0.7]),
        "num_items_in_batch": torch.tensor(7),
    }


def test_dropping_rows_keeps_them_aligned_and_cuts_completion_padding_no_kept_row_uses():
    from deepretrieval_trainer.training.trl_trainer import drop_rows

    batch = _batch()
    kept = drop_rows(batch, torch.tensor([False, False, True, True]))
    assert kept["advantages"].tolist() == pytest.approx([0.7, -0.7])
    assert kept["prompt_ids"].tolist() == [[7, 8, 9, 10], [7, 8, 9, 10]]  # no left padding to cut
    assert kept["completion_ids"].tolist() == [[14, 15, 16], [17, 0, 0]]
    assert kept["ref_per_token_logps"].tolist() == [[6.0, 7.0, 8.0], [9.0, 10.0, 11.0]]

    kept = drop_rows(batch, torch.tensor([True, True, False, False]))
    assert kept["prompt_ids"].tolist() == [[0, 0, 5, 6], [0, 0, 5, 6]]  # left padding kept: positions unchanged
    assert kept["completion_ids"].tolist() == [[11, 0], [12, 13]]
    assert kept["completion_mask"].tolist() == [[1, 0], [1, 1]]
    assert kept["ref_per_token_logps"].tolist() == [[0.0, 1.0], [3.0, 4.0]]
    assert batch["completion_ids"].shape == (4, 3)  # the input batch is left as it was


def test_dropping_rows_refuses_batches_it_cannot_slice():
    from deepretrieval_trainer.training.trl_trainer import drop_rows

    with pytest.raises(NotImplementedError, match="pixel_values"):
        drop_rows({**_batch(), "pixel_values": torch.zeros(9, 3)}, torch.tensor([True, True, False, False]))


def test_needs_one_update_per_generation_and_one_process(tmp_path, adi_test, monkeypatch):
    from deepretrieval_trainer.retrieval.bm25 import BM25Search
    from deepretrieval_trainer.training.retrieval import train

    with pytest.raises(ConfigError, match="gradient_accumulation_steps=1"):
        TrainConfig(drop_uniform_groups=True, gradient_accumulation_steps=2)
    monkeypatch.setenv("WORLD_SIZE", "2")
    config = TrainConfig(run_dir=str(tmp_path / "run"), model="/nonexistent/model", drop_uniform_groups=True)
    with pytest.raises(ConfigError, match="runs in one process"):
        train(BM25Search(adi_test.corpus), adi_test, config)


@pytest.mark.slow
def test_training_drops_the_groups_trl_counts_as_zero_std(tmp_path, adi_test, data_dir):
    """One query can never be answered (its only relevant document is not in the index) and the format reward is
    off, so its group always scores 0 for every sample: every step drops it, and all TRL counts as zero-std."""
    from deepretrieval_trainer.training.retrieval import train
    from llamaindex_deepretrieval import LlamaIndexSearch

    search = LlamaIndexSearch.from_beir(data_dir / "adi")
    qid = next(iter(adi_test.judged_queries))
    rows = [{"query": adi_test.queries[qid], "qrels": adi_test.qrels[qid]},
            {"query": "retrieval of documents by computer", "qrels": {"no-such-document": 1}}]
    run_dir = tmp_path / "run"
    config = TrainConfig(run_dir=str(run_dir), max_steps=3, save_steps=3, prompts_per_step=2, num_generations=4,
                         max_completion_length=32, torch_threads=1, learning_rate=1e-4, format_valid=0.0,
                         format_invalid=0.0, drop_uniform_groups=True)
    adapter = train(search, rows, config)
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1, 2, 3]
    for m in metrics:
        # the unanswerable query's group always; the other one too when its 4 samples tied exactly
        assert m["uniform_groups/dropped_frac"] in (0.5, 1.0)
        # everything TRL counts as zero-std is dropped (TRL's tolerance can miss equal rewards whose float mean
        # rounds, so it may count fewer)
        assert m["uniform_groups/dropped_frac"] >= m["frac_reward_zero_std"] - 1e-9
        assert math.isfinite(m["loss"])
    assert (adapter / "adapter_model.safetensors").is_file()
    assert json.loads((run_dir / "run.json").read_text())["status"] == "completed"
