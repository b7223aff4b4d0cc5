"""Text-to-SQL examples in Spider's layout, with a cross-database split.

A folder holds ``dev_exec.jsonl`` (or ``examples.jsonl``: one ``{"idx"|"id", "db_id", "question", "query"}`` per line;
instead of ``query`` a row may give ``result``, the expected rows as a list of lists, with ``ordered``) and
``database/<db_id>/<db_id>.sqlite``. Spider is meant to be evaluated on databases never seen in training, so the
split is by database: ``train`` = :data:`TRAIN_DATABASES`, ``dev`` = :data:`EVAL_DATABASES` (a split of the 14
databases in ``../shared/data/spider``), ``all`` = every database, or name the databases yourself.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlglot

from ..common.errors import DataError
from .guard import is_ordered
from .hardness import HARDNESS, hardness
from .sqlite import SQLiteDatabase

# 510 examples on 6 databases for training, 224 on 8 others for evaluation (../shared/data/spider's dev_exec.jsonl).
TRAIN_DATABASES = ("car_1", "cre_Doc_Template_Mgt", "flight_2", "network_1", "student_transcripts_tracking", "world_1")
EVAL_DATABASES = ("concert_singer", "course_teach", "museum_visit", "pets_1", "poker_player", "real_estate_properties",
                  "singer", "voter_1")
SPLITS = {"train": TRAIN_DATABASES, "dev": EVAL_DATABASES}
EXAMPLE_FILES = ("dev_exec.jsonl", "examples.jsonl")


@dataclass(frozen=True)
class SQLExample:
    """One question on one database, with its reference: a gold SQL query, or the expected rows."""

    id: str
    db_id: str
    question: str
    gold_sql: str | None = None
    gold_rows: tuple[tuple[Any, ...], ...] | None = None
    ordered: bool = False


@dataclass
class SQLCollection:
    """The examples of a split and the read-only databases they ask about (by ``db_id``)."""

    path: Path
    split: str
    examples: list[SQLExample]
    databases: dict[str, Any]
    fingerprint: str = ""
    meta: dict[str, Any] = field(default_factory=dict)

    def by_database(self) -> dict[str, list[SQLExample]]:
        grouped: dict[str, list[SQLExample]] = {}
        for example in self.examples:
            grouped.setdefault(example.db_id, []).append(example)
        return grouped


def _example(row: Any, where: str) -> SQLExample:
    if not isinstance(row, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(row).__name__}")
    db_id, question = row.get("db_id"), row.get("question")
    if not isinstance(db_id, str) or not db_id.strip():
        raise DataError(f"{where}: 'db_id' must name a database folder, got {db_id!r}")
    if not isinstance(question, str) or not question.strip():
        raise DataError(f"{where}: 'question' must be non-empty text, got {question!r}")
    query, result = row.get("query"), row.get("result")
    if query is None and result is None:
        raise DataError(f"{where}: give the reference as 'query' (gold SQL) or 'result' (the expected rows)")
    if query is not None and (not isinstance(query, str) or not query.strip()):
        raise DataError(f"{where}: 'query' must be SQL text, got {query!r}")
    rows = None
    if result is not None:
        if not isinstance(result, list) or not all(isinstance(r, list) for r in result):
            raise DataError(f"{where}: 'result' must be a list of rows (lists), got {result!r}"[:300])
        rows = tuple(tuple(r) for r in result)
    ordered = bool(row["ordered"]) if "ordered" in row else (query is not None and is_ordered(query))
    identifier = row.get("id", row.get("idx"))
    return SQLExample(str(identifier), db_id.strip(), question.strip(), query, rows, ordered)


def _at_most(example: SQLExample, max_hardness: str, where: str) -> bool:
    if example.gold_sql is None:
        raise DataError(f"{where}: max_hardness needs a gold 'query' to grade; this row gives only 'result' rows. "
                        "Drop max_hardness or add the query")
    try:
        level = hardness(example.gold_sql)
    except (sqlglot.errors.ParseError, ValueError) as exc:
        raise DataError(f"{where}: cannot grade the gold query for max_hardness ({exc})"[:400]) from None
    return HARDNESS.index(level) <= HARDNESS.index(max_hardness)


def _databases_for(split: str, databases: Sequence[str] | None) -> tuple[str, ...] | None:
    if databases is not None:
        return tuple(databases)
    if split == "all":
        return None
    if split not in SPLITS:
        raise DataError(f"split={split!r}: choose one of {[*SPLITS, 'all']} or pass databases=[...]")
    return SPLITS[split]


def load_sql_examples(path: str | Path, split: str = "train", *, databases: Sequence[str] | None = None,
                      timeout_s: float = 2.0, max_rows: int = 10_000, limit: int | None = None,
                      max_hardness: str | None = None, drop_table_counts: bool = False,
                      drop_uninformative: bool = False, exclude_databases: Sequence[str] = ()) -> SQLCollection:
    """The examples of ``split`` (or of ``databases``) and their read-only SQLite databases.

    ``max_hardness`` (``easy``, ``medium``, ``hard``, ``extra``) keeps only the examples whose gold SQL is at most that
    hard by Spider's rules (:mod:`.hardness`): a training curriculum; evaluate on the whole split.
    ``drop_table_counts`` leaves out the examples whose expected result a whole-table count
    (``SELECT count(*) FROM <a table of its database>``) already gives (see :func:`table_count_answers`): for training,
    so that one template that runs everywhere is never paid as right; evaluate on the whole split.
    ``drop_uninformative`` leaves out the examples whose expected result cannot tell a right query from a wrong one
    (see :func:`uninformative_answers`): for choosing a checkpoint, where such matches are noise.
    ``exclude_databases`` leaves those databases of the split out (kept for validation: choosing the training step
    on databases that training never sees, before the held-out split is looked at); each must be in the split.
    """
    if max_hardness is not None and max_hardness not in HARDNESS:
        raise DataError(f"max_hardness={max_hardness!r}: choose one of {list(HARDNESS)} (Spider's levels)")
    folder = Path(path).expanduser()
    file = next((folder / name for name in EXAMPLE_FILES if (folder / name).is_file()), None)
    if file is None:
        raise DataError(f"{folder}: no {' or '.join(EXAMPLE_FILES)}; give a folder in Spider's layout "
                        "(examples JSONL + database/<db_id>/<db_id>.sqlite)")
    wanted = _databases_for(split, databases)
    excluded = set(exclude_databases)
    examples = []
    seen: set[str] = set()
    for number, line in enumerate(file.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as exc:
            raise DataError(f"{file}:{number}: not JSON ({exc})") from None
        example = _example(row, f"{file}:{number}")
        if wanted is None or example.db_id in wanted:
            seen.add(example.db_id)
            if example.db_id in excluded:
                continue
            if max_hardness is not None and not _at_most(example, max_hardness, f"{file}:{number}"):
                continue
            examples.append(example)
    if excluded - seen:
        raise DataError(f"exclude_databases {sorted(excluded - seen)}: not databases of split {split!r} in {file} "
                        f"(it has {sorted(seen)}); name databases of the split")
    if limit is not None:
        examples = examples[:limit]
    if not examples:
        hard = f" at most {max_hardness!r} hard" if max_hardness else ""
        raise DataError(f"{file}: no examples{hard} on databases {list(wanted or [])}; check the split or the db_ids")
    opened = {}
    for db_id in sorted({e.db_id for e in examples}):
        sqlite_file = folder / "database" / db_id / f"{db_id}.sqlite"
        if not sqlite_file.is_file():
            raise DataError(f"{sqlite_file}: missing; every db_id needs database/<db_id>/<db_id>.sqlite")
        opened[db_id] = SQLiteDatabase(sqlite_file, timeout_s=timeout_s, max_rows=max_rows)
    meta: dict[str, Any] = {"max_hardness": max_hardness} if max_hardness else {}
    if excluded:
        meta["excluded_databases"] = sorted(excluded)
    if drop_table_counts:
        examples = _drop(examples, table_count_answers(examples, opened), opened, meta, "dropped_table_counts",
                         f"{file}: every example is answered by a whole-table count; drop_table_counts leaves none")
    if drop_uninformative:
        examples = _drop(examples, uninformative_answers(examples, opened), opened, meta, "dropped_uninformative",
                         f"{file}: every example's expected result is empty or all zeros; drop_uninformative "
                         "leaves none")
    digest = hashlib.sha256(json.dumps([[e.id, e.db_id, e.question, e.gold_sql] for e in examples]).encode())
    return SQLCollection(folder, split, examples, opened, digest.hexdigest()[:16], meta)


def _drop(examples: list[SQLExample], flags: list[bool], opened: dict[str, Any], meta: dict[str, Any], key: str,
          empty: str) -> list[SQLExample]:
    """``examples`` less the flagged ones (their count recorded as ``meta[key]``), closing the databases no example
    is left on; a DataError saying ``empty`` when none are left."""
    kept = [e for e, flagged in zip(examples, flags, strict=True) if not flagged]
    meta[key] = sum(flags)
    if not kept:
        raise DataError(empty)
    for db_id in set(opened) - {e.db_id for e in kept}:
        opened.pop(db_id).close()
    return kept


def _gold_results(examples: Sequence[SQLExample], databases: dict[str, Any]):
    """(scorer, each example's gold result), the scorer being the reward's own :class:`.rewards.ExecutionScorer`;
    a DataError naming the example when a gold query fails."""
    from .rewards import ExecutionScorer

    scorer = ExecutionScorer(databases)
    results = []
    for e in examples:
        reference = scorer.reference(e.db_id, e.gold_sql, e.gold_rows)
        if not reference.ok:
            raise DataError(f"example {e.id} ({e.db_id}): the gold query fails: {reference.error}"[:400])
        results.append(reference)
    return scorer, results


def table_count_answers(examples: Sequence[SQLExample], databases: dict[str, Any]) -> list[bool]:
    """For each example, whether its expected result equals ``SELECT count(*) FROM t`` for some table ``t`` of its
    database (scored by the reward's own :class:`.rewards.ExecutionScorer`; by position, since ids need not be
    unique). On Spider's easy questions that is one in six ("How many singers are there?"), and it is the query a
    small policy collapses to: it always runs and is sometimes right.
    """
    from .rewards import MATCH

    scorer, _ = _gold_results(examples, databases)
    tables: dict[str, list[str]] = {}
    found: list[bool] = []
    for e in examples:
        if e.db_id not in tables:
            tables[e.db_id] = ['"' + t.replace('"', '""') + '"' for t in scorer.database(e.db_id).table_names()]
        found.append(any(scorer.outcome(e.db_id, f"SELECT count(*) FROM {table}", e.gold_sql, e.gold_rows,
                                        e.ordered)[0] == MATCH for table in tables[e.db_id]))
    return found


def uninformative_answers(examples: Sequence[SQLExample], databases: dict[str, Any]) -> list[bool]:
    """For each example, whether its expected result is no rows, or one row of only zeros and NULLs (a count or sum
    over nothing; values normalized as the comparison does). Any query whose filter finds nothing matches such a
    result, right or wrong: on Spider's flight_2, which stores its codes and cities padded with a space
    (``' APG'``), the gold filters find nothing, and so does every guess, so those matches are coincidences, not
    answers. Gold queries that fail raise a DataError.
    """
    from .results import normalize_rows

    _, results = _gold_results(examples, databases)
    found: list[bool] = []
    for reference in results:
        rows = normalize_rows(reference.rows)
        found.append(not rows or (len(rows) == 1 and all(v in (0, None) for v in rows[0])))
    return found
