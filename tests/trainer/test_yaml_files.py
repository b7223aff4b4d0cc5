"""Every YAML we read bounds what its aliases repeat: a "billion laughs" of a few hundred bytes is one ConfigError
naming the file and the fix, in bounded memory, through each entry point (a training config, the CLI's --config and
YAML flags, the legacy config.yaml an adapter card is built from; Haystack pipeline files in
tests/haystack/test_validation.py). Unbounded, such a file ran past 15 s and 800 MB: the error message's repr()
walked the shared tree."""

from __future__ import annotations

import textwrap

import pytest
import yaml

from deepretrieval_trainer.common.errors import ConfigError
from deepretrieval_trainer.training.config import TrainConfig
from tests.trainer.bounded import run_bounded

# (depth, breadth): nested lists of aliases growing deep (9 levels of 9: the 481-byte probe; 30 levels of 2) and
# broad (2 levels of 400; one level of 8,000 aliases of a 24-character text, in the 64 KiB a card reads)
SHAPES = [(9, 9), (30, 2), (2, 400), (1, 8_000)]
LEAF = "ha" * 12
GROWTH_MIB = 64  # what refusing may cost; expanding the smallest of these shapes takes gigabytes


def alias_bomb(depth: int, breadth: int, key: str = "model", leaf: str = "lol") -> str:
    """A YAML mapping whose ``key`` is ``depth`` levels of lists, each holding ``breadth`` aliases of the level below
    (the bottom level holds ``leaf``)."""
    lines = [f'a0: &a0 ["{leaf}"]']
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * breadth) + "]" for i in range(1, depth + 1)]
    return "\n".join([*lines, f"{key}: *a{depth}"]) + "\n"


def flow_bomb(depth: int, breadth: int, leaf: str = "lol") -> str:
    """The same as one flow-style YAML value (what a CLI flag holds)."""
    levels = [f'&a0 ["{leaf}"]'] + [f"&a{i} [" + ", ".join([f"*a{i - 1}"] * breadth) + "]" for i in range(1, depth + 1)]
    return "[" + ", ".join(levels) + "]"


def _expanded(node) -> int:
    own = 1 + len(node.value) if isinstance(node, yaml.ScalarNode) else 1
    if isinstance(node, yaml.SequenceNode):
        return own + sum(_expanded(child) for child in node.value)
    if isinstance(node, yaml.MappingNode):
        return own + sum(_expanded(k) + _expanded(v) for k, v in node.value)
    return own


def _written(node, seen=None) -> int:
    seen = set() if seen is None else seen
    if id(node) in seen:
        return 0
    seen.add(id(node))
    own = 1 + len(node.value) if isinstance(node, yaml.ScalarNode) else 1
    children = node.value if isinstance(node, yaml.SequenceNode) else \
        [part for pair in node.value for part in pair] if isinstance(node, yaml.MappingNode) else []
    return own + sum(_written(child, seen) for child in children)


@pytest.mark.parametrize("depth", [1, 2, 3, 5])
@pytest.mark.parametrize("breadth", [1, 2, 4])
def test_the_count_is_what_the_aliases_add(depth, breadth):
    """Counted once per distinct node, the count equals a full expansion minus the document as written."""
    from deepretrieval_trainer.common.yaml_files import alias_expansion

    node = yaml.compose(alias_bomb(depth, breadth))
    assert alias_expansion(node) == _expanded(node) - _written(node)
    assert alias_expansion(yaml.compose("a: [1, 2]\nb: {c: d}\n")) == 0


def test_aliases_within_the_budget_load_and_beyond_it_are_refused():
    from deepretrieval_trainer.common.yaml_files import MAX_ALIAS_EXPANSION, alias_expansion, load_yaml

    text = "base: &base {learning_rate: 1.0e-5, temperature: 1.0}\nrun: *base\nother: {<<: *base, top_p: 0.9}\n"
    assert load_yaml(text, source="c.yaml") == yaml.safe_load(text)
    per_alias = alias_expansion(yaml.compose(alias_bomb(1, 2))) - alias_expansion(yaml.compose(alias_bomb(1, 1)))
    fits = MAX_ALIAS_EXPANSION // per_alias
    assert load_yaml(alias_bomb(1, fits - 1), source="c.yaml")["model"] == [["lol"]] * (fits - 1)
    with pytest.raises(ConfigError, match=r"c\.yaml: its YAML aliases .* more than the 100,000 allowed"):
        load_yaml(alias_bomb(1, fits + 1), source="c.yaml")


def test_an_alias_inside_its_own_anchor_is_refused():
    from deepretrieval_trainer.common.yaml_files import load_yaml

    with pytest.raises(ConfigError, match=r"c\.yaml: an alias at line 1 refers to a node that contains it .*write "
                                          r"the value out"):
        load_yaml("reward_tiers: &t [[0.5, 1], *t]\n", source="c.yaml")


def _files(tmp_path, text_of) -> list[str]:
    """One run-like folder per shape: ``config.yaml`` (the bomb) beside an ``adapter/`` folder without a card."""
    paths = []
    for depth, breadth in SHAPES:
        folder = tmp_path / f"run-{depth}x{breadth}"
        (folder / "adapter").mkdir(parents=True)
        (folder / "config.yaml").write_text(text_of(depth, breadth, leaf=LEAF), encoding="utf-8")
        paths.append(str(folder / "config.yaml"))
    return paths


ENTRY_POINTS = {  # name -> (child setup defining load(path) -> [outcome, message], expected outcome)
    "TrainConfig.from_yaml": ("""
        from deepretrieval_trainer.training.config import TrainConfig
        def load(path):
            try:
                TrainConfig.from_yaml(path)
            except Exception as exc:
                return [type(exc).__name__, str(exc)]
            return ["loaded", ""]
        """, "ConfigError"),
    "deepretrieval train --config": ("""
        from deepretrieval_trainer.cli import main
        def load(path):
            err = io.StringIO()
            with contextlib.redirect_stderr(err):
                code = main(["train", "--config", path])
            return [f"exit {code}", err.getvalue()]
        """, "exit 2"),
    "the card's legacy config.yaml": ("""
        import logging
        from pathlib import Path
        from deepretrieval_trainer.rewriting.card import read_card
        def load(path):
            err = io.StringIO()
            handler = logging.StreamHandler(err)
            logging.getLogger().addHandler(handler)
            try:
                card = read_card(Path(path).parent / "adapter")
            finally:
                logging.getLogger().removeHandler(handler)
            return [repr(card), err.getvalue()]
        """, "None"),
}


@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_an_alias_bomb_is_refused_in_bounded_memory_through_every_entry_point(tmp_path, entry):
    setup, expected = ENTRY_POINTS[entry]
    paths = _files(tmp_path, alias_bomb)
    run = run_bounded(f"[load(path) for path in {paths!r}]", setup=textwrap.dedent(setup))
    assert run["error"] is None, run
    for path, (outcome, message) in zip(paths, run["result"], strict=True):
        assert outcome == expected, (path, outcome, message)
        assert f"{path}: its YAML aliases (*name) would repeat" in message, message
        assert "write the repeated values out, or use fewer aliases" in message
    assert run["growth_mib"] < GROWTH_MIB, run


def test_a_yaml_flag_of_the_cli_bounds_its_aliases_too(tmp_path):
    flags = [flow_bomb(depth, breadth, leaf=LEAF) for depth, breadth in SHAPES]
    run = run_bounded(f"[load(flag) for flag in {flags!r}]", setup=textwrap.dedent("""
        from deepretrieval_trainer.cli import main
        def load(flag):
            err = io.StringIO()
            with contextlib.redirect_stderr(err):
                code = main(["train", "--lora-target-modules", flag])
            return [f"exit {code}", err.getvalue()]
        """))
    assert run["error"] is None, run
    for outcome, message in run["result"]:
        assert outcome == "exit 2" and "--lora-target-modules: its YAML aliases (*name) would repeat" in message, \
            message
    assert run["growth_mib"] < GROWTH_MIB, run


def test_numbers_python_cannot_read_and_malformed_flags_name_where_they_are(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("max_steps: " + "1" * 5000 + "\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"c\.yaml: not valid YAML \(a number of 5000 digits is longer than Python "
                                          r"reads \(4300 digits\); write a shorter number"):
        TrainConfig.from_yaml(config)
    from deepretrieval_trainer.cli import build_parser
    from deepretrieval_trainer.commands.train import overrides

    args = build_parser().parse_args(["train", "--reward-tiers", "[[0.5, 1]"])
    with pytest.raises(ConfigError, match=r"--reward-tiers: not a YAML value \(.*\); write one, e\.g\."):
        overrides(args)
