import subprocess
import sys

import pytest

from deepretrieval_trainer.cli import COMMANDS, build_parser, main


def _run(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "deepretrieval_trainer.cli", *args], capture_output=True, text=True,
                          timeout=timeout)


def test_help_on_every_command(capsys):
    for name in ["", *COMMANDS]:
        with pytest.raises(SystemExit) as exit_info:
            main([name, "--help"] if name else ["--help"])
        assert exit_info.value.code == 0
        out = capsys.readouterr().out
        assert "usage: deepretrieval" in out and (not name or name in out)


def test_console_script_is_installed():
    result = subprocess.run(["deepretrieval", "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "rewrite" in result.stdout


@pytest.mark.parametrize("statement", [
    "from deepretrieval_trainer.cli import build_parser; build_parser()",
    "import llamaindex_deepretrieval, haystack_deepretrieval, deepretrieval_trainer",
])
def test_no_heavy_library_at_import(statement):
    code = (f"import sys; {statement}; "
            "heavy = [m for m in ('torch', 'transformers', 'trl', 'peft', 'vllm') if m in sys.modules]; "
            "assert not heavy, heavy")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd="/")
    assert result.returncode == 0, result.stderr


def test_bad_input_gets_a_clear_error(tmp_path):
    result = _run("rewrite", "q", "--adapter", str(tmp_path))
    assert result.returncode == 2
    assert "adapter_config.json" in result.stderr and "Traceback" not in result.stderr
    with pytest.raises(SystemExit):
        build_parser().parse_args(["rewrite", "q", "--task", "nope"])


@pytest.mark.slow
def test_rewrite_command_with_the_embedded_model():
    result = _run("rewrite", "does vitamin D reduce fractures in older women", "--max-new-tokens", "64")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "original:  does vitamin D reduce fractures in older women" in result.stdout
    assert "rewritten: " in result.stdout


def test_library_deprecation_warnings_are_hidden_for_the_command_only(monkeypatch, tmp_path):
    import warnings

    import torch
    from transformers import TrainingArguments

    from deepretrieval_trainer import cli

    monkeypatch.setitem(cli.COMMANDS, "noisy", ("tests.trainer.noisy_command", "triggers library warnings"))
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        assert cli.main(["noisy", "--out", str(tmp_path)]) == 0
        assert [str(w.message) for w in seen] == ["a warning of our own still shows"]
        # outside the command the library's warnings are untouched: the filter was not installed at import
        TrainingArguments(output_dir=str(tmp_path), gradient_checkpointing=False, report_to="none")
        if not torch.accelerator.is_available():
            list(torch.utils.data.DataLoader([1, 2], pin_memory=True))
    later = [(w.category, str(w.message)) for w in seen[1:]]
    assert any(c is FutureWarning and "`gradient_checkpointing` is deprecated" in m for c, m in later)
    if not torch.accelerator.is_available():
        assert any(c is UserWarning and "'pin_memory' argument" in m for c, m in later)
