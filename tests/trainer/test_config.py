"""TrainConfig: validation with actionable messages, YAML round trip, unknown keys, and the CLI flag mapping."""

from __future__ import annotations

import dataclasses
import logging

import pytest

from deepretrieval_trainer.cli import build_parser
from deepretrieval_trainer.commands.train import NESTED, load_config
from deepretrieval_trainer.common.errors import ConfigError
from deepretrieval_trainer.training.config import RetrieverConfig, TrainConfig


@pytest.mark.parametrize(("values", "message"), [
    ({"num_generations": 1}, "at least 2"),
    ({"loss_type": "ppo"}, "choose one of"),
    ({"learning_rate": 0}, "learning_rate=0"),
    ({"task": "summaries"}, "task='summaries'"),
    ({"vllm_mode": "remote"}, "vllm_mode"),
    ({"lora_dropout": 1.5}, "lora_dropout"),
    ({"reward_tiers": [[0.1, 1], [0.5, 4]]}, "descending"),
    ({"reward_floor": -1}, "has no tiers"),
    ({"retriever": {"framework": "elastic"}}, "retriever.framework"),
    ({"retriever": {"framework": "bm25s", "kind": "storage"}}, "not available for bm25s"),
    ({"retriever": {"framework": "haystack", "kind": "pipeline"}}, "needs retriever.path"),
    ({"data": {"path": "/no/such/collection"}}, "data.path"),
])
def test_bad_values_say_what_to_change(values, message):
    with pytest.raises(ConfigError, match=message):
        TrainConfig.from_dict(values)


def test_yaml_round_trip_and_unknown_keys_warn(tmp_path, caplog, data_dir):
    config = TrainConfig(task="qa", reward_tiers=[[5, 5.0], [50, 2.0]], reward_floor=-2, learning_rate=3e-5,
                         lora_target_modules=["q_proj", "v_proj"], data={"path": str(data_dir / "adi"), "split": "test"},
                         retriever={"framework": "llamaindex", "kind": "bm25"})
    path = tmp_path / "config.yaml"
    config.to_yaml(path)
    assert TrainConfig.from_yaml(path) == config
    path.write_text(path.read_text() + "future_option: 3\nretriever:\n  framework: haystack\n  shiny: true\n")
    with caplog.at_level(logging.WARNING):
        loaded = TrainConfig.from_yaml(path)
    assert "future_option" in caplog.text and "retriever.shiny" in caplog.text
    assert loaded.retriever.framework == "haystack"
    task = loaded.build_task()
    assert task.tiers(30) == 2.0 and task.tiers(51) == -2.0  # hit-rank tiers: lower rank is better


def test_every_field_is_a_cli_flag_and_flags_override_yaml(tmp_path, data_dir):
    parser = build_parser()
    train = parser._subparsers._group_actions[0].choices["train"]
    flags = {opt for action in train._actions for opt in action.option_strings}
    for f in dataclasses.fields(TrainConfig):
        if f.name not in NESTED:
            assert "--" + f.name.replace("_", "-") in flags
    for name, cls in NESTED.items():
        for f in dataclasses.fields(cls):
            assert f"--{name}-{f.name}".replace("_", "-") in flags
    path = tmp_path / "c.yaml"
    TrainConfig(max_steps=7, data={"path": str(data_dir / "adi"), "split": "test"}).to_yaml(path)
    args = parser.parse_args(["train", "--config", str(path), "--max-steps", "3", "--resume", "--learning-rate",
                              "1e-4", "--retriever-framework", "haystack", "--reward-tiers", "[[0.5, 2], [0.1, 1]]",
                              "--task", "literature"])
    config = load_config(args)
    assert (config.max_steps, config.resume, config.learning_rate) == (3, True, 1e-4)
    assert config.retriever == RetrieverConfig(framework="haystack")
    assert config.data.split == "test" and config.reward_tiers == [[0.5, 2], [0.1, 1]]


def test_cli_reports_bad_config_as_an_error(tmp_path, capsys):
    from deepretrieval_trainer.cli import main

    assert main(["train", "--num-generations", "1"]) == 2
    assert "num_generations=1" in capsys.readouterr().err
