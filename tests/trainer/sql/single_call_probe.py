"""Run hostile SQL through one entry point in a fresh subprocess and report its outcome, time and peak memory.

A test calls :func:`probe`; the child (``python -m tests.trainer.sql.single_call_probe SPEC``) builds the entry point
(the engine, the reward, the evaluation, the LlamaIndex retriever or the Haystack runner), runs a benign statement
to load everything, caps its own address space at what it holds plus :data:`ADDRESS_SPACE_HEADROOM` (so code
without limits fails with a MemoryError instead of eating the machine), then runs the statement at each size and
prints one JSON line per statement: whether it failed, the reason, the seconds, and how far the resident set rose above
where it stood (the kernel's high-water mark is reset before each size; SQLite's and libpq's C allocations count,
which tracemalloc would miss).
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ADDRESS_SPACE_HEADROOM = 2 << 30
REPO = Path(__file__).resolve().parents[3]


def probe(entry: str, target: str, statements: list[tuple[Any, str]], *, timeout_s: float,
          wall_limit_s: float = 180.0) -> list[dict[str, Any]]:
    """Run each ``(size, sql)`` of ``statements`` in turn; one dict per statement: ``size``, ``failed``, ``reason``,
    ``seconds``, ``rss_mb`` (growth), ``largest`` (the longest value in a result that came back); a last dict with
    ``crashed`` when the child died or ran past ``wall_limit_s``."""
    spec = {"entry": entry, "target": target, "statements": statements, "timeout_s": timeout_s}
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HAYSTACK_TELEMETRY_ENABLED": "False"}
    try:
        done = subprocess.run([sys.executable, "-m", "tests.trainer.sql.single_call_probe", json.dumps(spec)],
                              cwd=os.getcwd() if (Path.cwd() / "tests").is_dir() else REPO, env=env,
                              capture_output=True, text=True, timeout=wall_limit_s, check=False)
    except subprocess.TimeoutExpired:
        return [{"crashed": f"the probe ran past {wall_limit_s:g} s", "seconds": wall_limit_s}]
    lines = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or len(lines) != len(statements):
        lines.append({"crashed": f"exit {done.returncode}: {done.stderr[-1500:]}"})
    return lines


# --- the child ---------------------------------------------------------------------------------------------------
def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def _reset_peak() -> Callable[[], float]:
    """Reset the resident high-water mark; the returned function gives the growth in MB since."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        start = _status_kb("VmRSS")
        return lambda: (_status_kb("VmHWM") - start) / 1024
    except OSError:  # no clear_refs: ru_maxrss, a high-water mark since the start
        start = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return lambda: (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - start) / 1024


def _completion(sql: str) -> str:
    return f"the tables</think>\n<answer>{sql}</answer>"


def _database(spec):
    from deepretrieval_trainer.sql.engines import open_database

    database = open_database(spec["target"], timeout_s=spec["timeout_s"])

    def run(sql):
        result = database.execute(sql)
        return not result.ok, None if result.ok else f"{result.kind}: {result.error}", result.rows
    return run


def _reward(spec):
    from deepretrieval_trainer.sql.answer import parse_sql_answer
    from deepretrieval_trainer.sql.engines import open_database
    from deepretrieval_trainer.sql.rewards import ExecutionReward

    reward = ExecutionReward(databases={"db": open_database(spec["target"], timeout_s=spec["timeout_s"])})
    floor = reward.score(-1.0)

    def run(sql):
        completion = _completion(sql)
        score = reward([completion], db_id=["db"], gold_sql=["SELECT 1"])[0]
        result = reward.scorer.run("db", parse_sql_answer(reward.task.completion_text(completion)).sql)
        return score == floor, None if result.ok else f"{result.kind}: {result.error}", result.rows
    return run


def _evaluation(spec):
    from deepretrieval_trainer.sql.engines import open_database
    from deepretrieval_trainer.sql.evaluate import SQLSource, evaluate_sql
    from deepretrieval_trainer.sql.spider import SQLCollection, SQLExample
    from deepretrieval_trainer.sql.writer import SQLWriter
    from tests.conftest import ScriptedRewriter

    collection = SQLCollection(Path("."), "probe", [SQLExample("q1", "db", "q?", gold_sql="SELECT 1")],
                               {"db": open_database(spec["target"], timeout_s=spec["timeout_s"])})
    backend = ScriptedRewriter()

    def run(sql):
        backend.completion = _completion(sql)
        outcome = evaluate_sql(collection, [SQLSource("probe", SQLWriter(backend=backend), "")], progress=False)
        found = outcome.sources["probe"][0]
        return found.status in ("failed", "no_answer"), f"{found.status}: {found.reason}", ()
    return run


def _llamaindex(spec):
    from llama_index.core import SQLDatabase
    from sqlalchemy import create_engine

    from deepretrieval_trainer.sql.writer import SQLWriter
    from llamaindex_deepretrieval import DeepRetrievalSQLRetriever
    from tests.conftest import ScriptedRewriter

    target = spec["target"]
    url = target if "://" in target else f"sqlite:///{target}"
    backend = ScriptedRewriter()
    retriever = DeepRetrievalSQLRetriever(sql_database=SQLDatabase(create_engine(url)),
                                          writer=SQLWriter(backend=backend), timeout_s=spec["timeout_s"])

    def run(sql):
        backend.completion = _completion(sql)
        _nodes, metadata = retriever.retrieve_with_metadata("q")
        return bool(metadata.get("error")), metadata.get("error"), metadata["result"]
    return run


def _haystack(spec):
    from haystack_deepretrieval import ReadOnlySQLQuery

    runner = ReadOnlySQLQuery(database=spec["target"], timeout_s=spec["timeout_s"])

    def run(sql):
        output = runner.run(sql=sql)
        return output["error"] is not None, output["error"], output["rows"]
    return run


ENTRIES = {"database": _database, "reward": _reward, "eval": _evaluation, "llamaindex": _llamaindex,
           "haystack": _haystack}


def _largest(rows) -> int:
    return max((len(v) for row in rows for v in row if isinstance(v, (str, bytes))), default=0)


def main(argv: list[str]) -> int:
    import logging

    logging.disable(logging.WARNING)  # the entry points log each failure; the JSON lines carry them
    spec = json.loads(argv[0])
    run = ENTRIES[spec["entry"]](spec)
    for _ in range(2):  # load every module and connection before measuring
        run("SELECT length(lower('warm')) AS w WHERE 'a' LIKE 'a%'")
    limit = _status_kb("VmSize") * 1024 + ADDRESS_SPACE_HEADROOM
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    for size, sql in spec["statements"]:
        growth = _reset_peak()
        start = time.monotonic()
        try:
            failed, reason, rows = run(sql)
            largest = _largest(rows)
        except MemoryError:
            failed, reason, largest = True, "MemoryError (the probe's address-space cap)", 0
        seconds = time.monotonic() - start
        rows = None
        print(json.dumps({"size": size, "failed": failed, "reason": (reason or "")[:400], "seconds": round(seconds, 3),
                          "rss_mb": round(growth(), 1), "largest": largest}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
