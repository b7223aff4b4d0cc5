"""The folder synthetic labels go to: BEIR layout, so ``load_queries``/``load_qrels`` read it, plus how they were made.

```
OUT/
  queries.jsonl       {"_id", "text", "metadata": {"doc_id", "rank"}}: the pseudo-queries kept
  qrels/<split>.tsv   query-id, corpus-id (the source document), score 1
  synthesis.json      how the labels were made: source, method, model, counts, rank window and distribution, seeds,
                      timings (``status`` says whether it completed)
  candidates.jsonl    every pseudo-query written, with its source document's rank and whether it was kept (or why not)
```

The folder appears whole or not at all: it is written beside ``OUT`` under a hidden name and renamed into place. A
run that stopped after the queries were written (the retriever failed) leaves ``synthesis.json`` and
``candidates.jsonl`` only; such a folder, or an empty one, may be written over, anything else is refused. ``OUT`` is
never the documents' own folder or inside it: labels are not written into the user's data.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from ..common.errors import ConfigError, DataError
from ..retrieval.data import load_qrels, load_queries

REPORT = "synthesis.json"
CANDIDATES = "candidates.jsonl"
_REWRITABLE = {REPORT, CANDIDATES}  # what a stopped run leaves: may be written over


def prepare_out(out: str | Path, data_root: Path | None = None) -> Path:
    """``out`` checked before any work: not a file, not a data folder, not inside ``data_root`` (the documents'
    folder), and empty or left by a stopped run; a ConfigError naming the fix otherwise. Its parent is created."""
    target = Path(out).expanduser()
    resolved = target.resolve()
    if data_root is not None:
        root = Path(data_root).expanduser().resolve()
        if resolved == root or root in resolved.parents:
            raise ConfigError(f"out={str(target)!r} is inside the documents' folder {root}: labels are never written "
                              "into your data; choose a folder elsewhere, e.g. labels/<name>")
    if target.exists() and not target.is_dir():
        raise ConfigError(f"out={str(target)!r} is a file: choose a folder for the labels")
    if target.is_dir():
        present = {p.name for p in target.iterdir()}
        if present - _REWRITABLE:
            what = "a BEIR collection" if {"corpus.jsonl", "corpus.preprocessed.jsonl"} & present else "files"
            raise ConfigError(f"out={str(target)!r} already holds {what} ({', '.join(sorted(present)[:5])}): "
                              "choose a new folder, or remove it")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"out={str(target)!r}: its parent cannot be created ({exc.strerror}); choose a writable "
                          "folder") from None
    if not os.access(target.parent, os.W_OK):
        raise ConfigError(f"out={str(target)!r}: {target.parent} is not writable; choose a writable folder")
    return target


def write_folder(out: Path, *, queries: Sequence[dict[str, Any]], qrels: Sequence[tuple[str, str]],
                 candidates: Iterable[dict[str, Any]], report: dict[str, Any], split: str | None) -> Path:
    """Write the label folder at once (``split`` None: only the report and the candidates, as a stopped run)."""
    staging = out.with_name(f".{out.name}.partial-{os.getpid()}")
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    try:
        if split is not None:
            _lines(staging / "queries.jsonl", (json.dumps(row, ensure_ascii=False) for row in queries))
            (staging / "qrels").mkdir()
            _lines(staging / "qrels" / f"{split}.tsv",
                   ["query-id\tcorpus-id\tscore", *(f"{qid}\t{doc_id}\t1" for qid, doc_id in qrels)])
        _lines(staging / CANDIDATES, (json.dumps(row, ensure_ascii=False) for row in candidates))
        _lines(staging / REPORT, [json.dumps(report, indent=2, ensure_ascii=False, default=str)])
        if out.is_dir():  # empty, or what a stopped run left (prepare_out checked)
            shutil.rmtree(out)
        os.replace(staging, out)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return out


def _lines(path: Path, lines: Iterable[str]) -> None:
    with path.open("w", encoding="utf-8") as handle:
        for line in lines:
            handle.write(line + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def read_report(folder: str | Path) -> dict[str, Any]:
    file = Path(folder).expanduser() / REPORT
    try:
        report = json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"{file}: missing; pass a folder written by `deepretrieval synthesize`") from None
    except (OSError, ValueError, RecursionError) as exc:
        raise DataError(f"{file}: unreadable ({type(exc).__name__}); write the labels again") from None
    if not isinstance(report, dict):
        raise DataError(f"{file}: not a JSON object; write the labels again")
    return report


def read_rows(folder: str | Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The training rows ``{"query", "qrels", "query_id"}`` of a label folder, and its report."""
    root = Path(folder).expanduser()
    report = read_report(root)
    if report.get("status") not in ("completed", "interrupted"):
        raise DataError(f"{root / REPORT}: status {report.get('status')!r}, so the folder holds no labels; see its "
                        "report, and synthesize again")
    split = str(report.get("split") or "synthetic")
    queries = load_queries(root)
    qrels = load_qrels(root, split)
    missing = sorted(set(qrels) - set(queries))[:5]
    if missing:
        raise DataError(f"{root}: qrels/{split}.tsv names queries not in queries.jsonl ({missing}); write the labels "
                        "again")
    rows = [{"query": queries[qid], "qrels": judged, "query_id": qid} for qid, judged in qrels.items()]
    return rows, report
