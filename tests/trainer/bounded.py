"""Run a piece of code in a child Python with a memory cap and a time limit, and measure how much memory it took.

For tests of inputs that, unfixed, would run for minutes and take gigabytes (a YAML "billion laughs", a quadratic
regex): the test then fails at the limit instead of taking the machine with it. The limits are generous on purpose;
what a test asserts is the measured peak memory growth, or a count, never a tight wall-clock bound.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MEMORY_BYTES = 2 << 30  # address space of the child: an unbounded expansion fails here (MemoryError)
TIMEOUT_S = 120

_CHILD = """
import contextlib, io, json, resource, sys

def _peak_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

{setup}
_before = _peak_mib()
_stderr = io.StringIO()
try:
    with contextlib.redirect_stderr(_stderr):
        _result = {call}
    _out = {{"error": None, "result": _result}}
except BaseException as _exc:  # MemoryError, RecursionError, anything: reported, not a crash of the child
    _out = {{"error": type(_exc).__name__, "message": str(_exc)[:4000]}}
_out["stderr"] = _stderr.getvalue()[-4000:]
_out["growth_mib"] = _peak_mib() - _before
print("RESULT " + json.dumps(_out, default=repr))
"""


def _limit() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_BYTES, MEMORY_BYTES))


def run_bounded(call: str, *, setup: str = "", timeout_s: int = TIMEOUT_S) -> dict:
    """``call`` (an expression) evaluated in a child after ``setup`` (statements; imports go there, so they are not
    measured): ``{"error": exception name or None, "message", "result" (as JSON, else its repr), "stderr",
    "growth_mib": peak RSS growth}``.
    A child that runs past ``timeout_s`` fails the test."""
    code = _CHILD.format(setup=textwrap.dedent(setup), call=call)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    try:
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout_s,
                              preexec_fn=_limit, cwd=ROOT, env=env, check=False)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{call} did not finish within {timeout_s} s (unbounded work)")
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if not lines:
        pytest.fail(f"{call}: the child died (exit {done.returncode}): {done.stderr[-2000:]}")
    return json.loads(lines[-1][len("RESULT "):])
