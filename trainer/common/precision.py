"""One dtype decision per process: ``auto`` -> bfloat16 where the hardware computes it natively, else float32.

Training, the in-process rewriter and ``deepretrieval serve`` all read the same setting (``dtype``: ``auto``,
``float32`` or ``bfloat16``) and resolve it here, once, from the machine:

- a CUDA device: bfloat16 when ``torch.cuda.is_bf16_supported()`` says so;
- a CPU: bfloat16 when it has bf16 matrix or vector units (Intel AMX ``amx_bf16`` or ``avx512_bf16``, Arm ``bf16``/
  ``sve_bf16``), read from torch's CPU capability report or ``/proc/cpuinfo``; never from a list of CPU names.

``DEEPRETRIEVAL_BF16=0`` forces bfloat16 unavailable (``auto`` then picks float32; asking for ``bfloat16`` explicitly
still works, emulated and slow), so a machine without bf16 units can be imitated in tests.
"""

from __future__ import annotations

import functools
import logging
import os
from pathlib import Path
from typing import Literal, get_args

logger = logging.getLogger(__name__)

DType = Literal["auto", "float32", "bfloat16"]
DTYPES: tuple[str, ...] = get_args(DType)
# CPU feature flags that mean native bf16 arithmetic (x86: AMX tiles or AVX-512 BF16; Arm: BF16 / SVE BF16)
BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16", "bf16", "sve_bf16", "svebf16")
_FORCE_OFF = "DEEPRETRIEVAL_BF16"


def check_dtype(dtype: str, *, field: str = "dtype") -> str:
    if dtype not in DTYPES:
        raise ValueError(f"{field}={dtype!r} is not a dtype: choose one of {list(DTYPES)} "
                         "(auto = bfloat16 where the machine has bf16 units, float32 elsewhere)")
    return dtype


def _forced_off() -> bool:
    return os.environ.get(_FORCE_OFF, "").strip().lower() in {"0", "false", "no", "off"}


@functools.lru_cache(maxsize=1)
def cpu_bf16_flags() -> tuple[str, ...]:
    """The bf16 feature flags this CPU reports (empty when it has none)."""
    found: set[str] = set()
    try:
        import torch

        capabilities = torch.cpu.get_capabilities()
        found.update(flag for flag in BF16_CPU_FLAGS if capabilities.get(flag))
    except Exception:  # noqa: BLE001 - an older torch without the capability report: fall back to /proc/cpuinfo
        pass
    cpuinfo = Path("/proc/cpuinfo")
    if not found and cpuinfo.is_file():
        for line in cpuinfo.read_text(encoding="utf-8", errors="replace").splitlines():
            if line.split(":", 1)[0].strip() in {"flags", "Features"}:
                found.update(set(line.split(":", 1)[1].split()) & set(BF16_CPU_FLAGS))
                break
    return tuple(sorted(found))


def bf16_supported(device: str = "cpu") -> bool:
    """Whether ``device`` computes bfloat16 natively (and it is not forced off with ``DEEPRETRIEVAL_BF16=0``)."""
    if _forced_off():
        return False
    if str(device).startswith("cuda"):
        import torch

        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    return bool(cpu_bf16_flags())


def resolve_dtype(dtype: str = "auto", device: str = "cpu") -> str:
    """``float32`` or ``bfloat16``: the setting itself, or for ``auto`` what the device computes natively."""
    check_dtype(dtype)
    if dtype != "auto":
        if dtype == "bfloat16" and not bf16_supported(device):
            logger.warning("dtype=bfloat16 on %s, which has no native bf16 units: it runs emulated and slowly; "
                           "use dtype=auto or float32 here", device)
        return dtype
    chosen = "bfloat16" if bf16_supported(device) else "float32"
    logger.info("dtype=auto on %s: %s (%s)", device, chosen, describe(device))
    return chosen


def describe(device: str = "cpu") -> str:
    """Why ``auto`` decides as it does on ``device``, for logs and run.json."""
    if _forced_off():
        return f"bf16 forced off by {_FORCE_OFF}=0"
    if str(device).startswith("cuda"):
        return "CUDA bf16 support" if bf16_supported(device) else "no CUDA bf16 support"
    flags = cpu_bf16_flags()
    return f"CPU flags {', '.join(flags)}" if flags else "no bf16 CPU flags"


def torch_dtype(name: str):
    import torch

    return {"float32": torch.float32, "bfloat16": torch.bfloat16}[name]
