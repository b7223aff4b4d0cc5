"""Session fixtures for tests that talk to a real vLLM server on loopback (registered in tests/conftest.py).

One server per test session (start-up takes a minute or more on CPU), serving the embedded SmolLM2 checkpoint with
the LoRA adapter of a 2-step GRPO run of the trainer as model ``SERVED_NAME``. The server runs in its own process group and is stopped at the
end of the session, also when tests fail.
"""

from __future__ import annotations

import logging
import socket
from pathlib import Path

import pytest

SERVED_NAME = "deepretrieval-test"
logger = logging.getLogger(__name__)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def make_peft_adapter(folder: Path, *, seed: int = 0, scale: float = 0.0) -> Path:
    """A real peft LoRA adapter (r=8 on the attention projections) for the embedded checkpoint.

    ``scale`` = 0 keeps peft's initialization (B = 0: the adapter leaves the model unchanged); > 0 fills B with
    noise of that size, so the adapter really changes the model's text (to tell two adapters apart).
    """
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from deepretrieval_trainer.common.models import prepare_model

    model = AutoModelForCausalLM.from_pretrained(str(prepare_model()))
    config = LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
                        task_type="CAUSAL_LM")
    peft_model = get_peft_model(model, config)
    if scale > 0:
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for name, param in peft_model.named_parameters():
                if "lora_B" in name:
                    param.copy_(torch.randn(param.shape, generator=generator) * scale)
    peft_model.save_pretrained(folder)
    return folder


def train_adapter(run_dir: Path) -> Path:
    """A real GRPO run of the trainer (2 steps, BM25 over ADI as the reward's retriever); returns its adapter folder.

    The trainer's default LoRA (r=16 on all linear layers) also exercises the --max-lora-rank choice."""
    from deepretrieval_trainer.retrieval.bm25 import BM25Search
    from deepretrieval_trainer.retrieval.data import load_beir
    from deepretrieval_trainer.training.config import TrainConfig
    from deepretrieval_trainer.training.retrieval import train

    from .conftest import collection_path

    adi = load_beir(collection_path("adi"), "test")
    config = TrainConfig(run_dir=str(run_dir), max_steps=2, save_steps=2, prompts_per_step=1, num_generations=2,
                         max_completion_length=32, max_queries=4, torch_threads=1, learning_rate=1e-4)
    return Path(train(BM25Search(adi.corpus), adi, config))


@pytest.fixture(scope="session")
def served_adapter(tmp_path_factory) -> Path:
    """The adapter the test server serves: produced by a short real training run of the trainer."""
    return train_adapter(tmp_path_factory.mktemp("train") / "run")


@pytest.fixture(scope="session")
def vllm_server(served_adapter, tmp_path_factory):
    """A real ``vllm serve`` on 127.0.0.1 with ``served_adapter`` as ``SERVED_NAME``; stopped at session end."""
    from deepretrieval_trainer.rewriting.serve import ServerConfig, VLLMServer

    # float32 explicitly: the prefill test compares the served text with the in-process model's token for token,
    # which bf16's different kernels do not promise (test_serve.py starts a bf16 server of its own)
    config = ServerConfig(adapters={SERVED_NAME: served_adapter}, port=free_port(), startup_timeout=900,
                          dtype="float32", log_file=tmp_path_factory.mktemp("vllm") / "vllm.log")
    server = VLLMServer(config)
    try:
        server.start()
        logger.warning("vLLM test server ready at %s after %.0f s (log %s)", server.base_url, server.startup_s,
                       server.log_file)
        yield server
    finally:
        server.stop()
