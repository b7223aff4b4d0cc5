"""Completion text -> :class:`Rewrite`.

Model output is untrusted text: this module parses it and never raises on it. The expected shape is
``<think>...</think><answer>{"query": "..."}</answer>``; tolerated deviations are extra text around the tags,
a missing ``<think>`` block, code fences inside the answer, single quotes, trailing commas and a bare string.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

MAX_QUERY_CHARS = 1000

_ANSWER = re.compile(r"<answer>(.*?)(?:</answer>|$)", re.DOTALL | re.IGNORECASE)
_THINK = re.compile(r"<think>.*?</think>", re.DOTALL | re.IGNORECASE)
_FENCE = re.compile(r"^```[a-zA-Z]*\s*|\s*```$")
_TRAILING_COMMA = re.compile(r",\s*([}\]])")
_QUERY_VALUE = re.compile(r"""["']query["']\s*:\s*(["'])(.*?)(?<!\\)\1""", re.DOTALL)


@dataclass(frozen=True)
class Rewrite:
    """A parsed completion: ``query`` is set when ``ok``; ``reason`` says what was wrong otherwise."""

    query: str | None
    ok: bool
    reason: str | None = None
    has_think: bool = False
    is_json: bool = False

    @property
    def well_formed(self) -> bool:
        """The exact trained format: a ``<think>`` block and a JSON object answer with a usable query."""
        return self.ok and self.has_think and self.is_json


def _fail(reason: str, has_think: bool = False) -> Rewrite:
    return Rewrite(query=None, ok=False, reason=reason, has_think=has_think)


def _json_query(body: str) -> str | None:
    """The ``query`` field of a JSON-ish object, or None when there is none."""
    candidates = [body, _TRAILING_COMMA.sub(r"\1", body)]
    for text in candidates:
        try:
            value = json.loads(text)
        except (ValueError, RecursionError):
            continue
        if isinstance(value, dict):
            query = value.get("query")
            if isinstance(query, list) and all(isinstance(q, str) for q in query):
                return " ".join(query)
            return query if isinstance(query, str) else None
        if isinstance(value, str):
            return value
        return None
    match = _QUERY_VALUE.search(body)
    if match:
        return match.group(2).replace('\\"', '"')
    return None


def parse_answer(text: object, *, max_chars: int = MAX_QUERY_CHARS, require_think: bool = False) -> Rewrite:
    """Extract the rewritten query from a completion. Never raises on any input."""
    if not isinstance(text, str):
        return _fail(f"completion is {type(text).__name__}, not text")
    has_think = bool(_THINK.search(text))
    if require_think and not has_think:
        return _fail("no <think>...</think> block before the answer")
    match = _ANSWER.search(_THINK.sub(" ", text))
    if match is None:
        return _fail("no <answer> tag in the completion", has_think)
    body = _FENCE.sub("", match.group(1).strip()).strip()
    if body.lower().startswith("json"):
        body = body[4:].strip()
    if not body:
        return _fail("empty <answer>", has_think)
    is_json = body.startswith("{")
    if is_json:
        query = _json_query(body)
        if query is None:
            return _fail('<answer> is not a JSON object with a string "query" field', has_think)
    else:
        query = body.strip("\"'")
    query = " ".join(query.split())
    if not query:
        return _fail("the rewritten query is empty", has_think)
    if len(query) > max_chars:
        return _fail(f"the rewritten query has {len(query)} characters (limit {max_chars})", has_think)
    return Rewrite(query=query, ok=True, reason=None, has_think=has_think, is_json=is_json)
