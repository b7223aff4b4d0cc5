"""Completion text -> the SQL in its ``<answer>``. Never raises on any input.

The trained shape is ``<think>...</think>\\n<answer>SELECT ...</answer>``. Tolerated, as the query parser
tolerates its deviations: text around the tags, a missing ``</answer>``, code fences (```sql), a ``SQL:`` /
``SQLQuery:`` label, a JSON object ``{"sql": ...}`` or ``{"query": ...}``, a trailing semicolon. Whitespace inside
the SQL is kept (string literals may hold it). Whether the SQL is one read statement is :mod:`.guard`'s job.
Tags are found with the query parser's forward-only searches, so parsing is linear in the completion's length.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from ..rewriting.answer import MAX_COMPLETION_CHARS, _answer_body, _strip_think

MAX_SQL_CHARS = 8000

_LABEL = re.compile(r"^(?:sql\s*query|sqlquery|sql|query)\s*:\s*", re.IGNORECASE)


@dataclass(frozen=True)
class SQLAnswer:
    """A parsed completion: ``sql`` when ``ok``, else ``reason``; ``has_think`` tells the exact trained format."""

    sql: str | None
    ok: bool
    reason: str | None = None
    has_think: bool = False

    @property
    def well_formed(self) -> bool:
        return self.ok and self.has_think


def _unfence(body: str) -> str:
    """The text inside the first code fence (```sql ... ```), or ``body`` when it has none."""
    opening = body.find("```")
    if opening < 0:
        return body
    start = opening + 3
    while start < len(body) and body[start].isascii() and body[start].isalpha():
        start += 1
    closing = body.find("```", start)
    return body[start:closing if closing >= 0 else len(body)]


def _unwrap(body: str) -> str:
    body = _unfence(body).strip()
    if body.startswith("{"):
        try:
            value = json.loads(body)
        except (ValueError, RecursionError):
            value = None
        if isinstance(value, dict):
            found = value.get("sql", value.get("query"))
            body = found if isinstance(found, str) else ""
    body = _LABEL.sub("", body.strip())
    return body.strip().rstrip(";").strip()


def parse_sql_answer(text: object, *, max_chars: int = MAX_SQL_CHARS, require_think: bool = False) -> SQLAnswer:
    """Extract the SQL from a completion (see the module docstring)."""
    if not isinstance(text, str):
        return SQLAnswer(None, False, f"completion is {type(text).__name__}, not text")
    if len(text) > MAX_COMPLETION_CHARS:
        return SQLAnswer(None, False, f"the completion has {len(text)} characters (limit {MAX_COMPLETION_CHARS})")
    rest, has_think = _strip_think(text)
    if require_think and not has_think:
        return SQLAnswer(None, False, "no <think>...</think> block before the answer")
    body, _ = _answer_body(rest)
    if body is None:
        return SQLAnswer(None, False, "no <answer> tag in the completion", has_think)
    sql = _unwrap(body)
    if not sql:
        return SQLAnswer(None, False, "empty <answer>", has_think)
    if len(sql) > max_chars:
        return SQLAnswer(None, False, f"the SQL has {len(sql)} characters (limit {max_chars})", has_think)
    return SQLAnswer(sql, True, None, has_think)
