"""A database's schema as prompt text: tables, columns with types and keys, foreign keys, optional sample values.

Read from the live database (SQLite PRAGMAs, SQLAlchemy's inspector), so training and deployment describe a
database the same way. The format is compact, one line per table, because every token of it is in each prompt::

    Database: concert_singer (sqlite)
    stadium(Stadium_ID INT primary key, Location TEXT, Name TEXT, Capacity INT)
    concert(concert_ID INT primary key, concert_Name TEXT, Stadium_ID TEXT)
    Foreign keys: concert.Stadium_ID -> stadium.Stadium_ID
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol


class Introspectable(Protocol):
    name: str
    dialect: str

    def table_names(self) -> list[str]: ...

    def columns(self, table: str) -> list[tuple[str, str, bool]]: ...

    def foreign_keys(self, table: str) -> list[tuple[str, str, str]]: ...

    def sample_values(self, table: str, column: str, limit: int) -> list[str]: ...


_TEXT_TYPES = ("char", "text", "clob", "string")


def _column(name: str, kind: str, primary: bool, samples: Sequence[str]) -> str:
    text = f"{name} {kind}".strip() if kind else name
    if primary:
        text += " primary key"
    if samples:
        text += " e.g. " + ", ".join(repr(s[:40]) for s in samples)
    return text


def describe(database: Introspectable, *, tables: Sequence[str] | None = None, sample_values: int = 0) -> str:
    """The schema text of ``database`` (all tables, or ``tables``), with up to ``sample_values`` distinct values
    of each text column."""
    names = list(tables) if tables is not None else database.table_names()
    if not names:
        raise ValueError(f"database {database.name!r} has no tables to describe")
    lines = [f"Database: {database.name} ({database.dialect})"]
    keys = []
    for table in names:
        parts = []
        for column, kind, primary in database.columns(table):
            samples = []
            if sample_values and (not kind or any(t in kind.lower() for t in _TEXT_TYPES)):
                samples = database.sample_values(table, column, sample_values)
            parts.append(_column(column, kind, primary, samples))
        lines.append(f"{table}({', '.join(parts)})")
        keys += [f"{table}.{column} -> {other}.{target or column}"
                 for column, other, target in database.foreign_keys(table)]
    if keys:
        lines.append("Foreign keys: " + "; ".join(keys))
    return "\n".join(lines)


def prompt_input(question: str, schema: str) -> str:
    """What the sql task's user turn holds: the schema, then the question."""
    if not isinstance(question, str) or not question.strip():
        raise ValueError(f"the question must be non-empty text, got {question!r}")
    return f"{schema.strip()}\nQuestion: {question.strip()}"
