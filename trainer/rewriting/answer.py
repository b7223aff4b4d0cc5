"""Completion text -> :class:`Rewrite`.

Model output is untrusted text: this module parses it and never raises on it. The expected shape is
``<think>...</think><answer>{"query": "..."}</answer>``; tolerated deviations are extra text around the tags,
a missing ``<think>`` block, code fences inside the answer, single quotes, trailing commas and a bare string.

Every step runs in time linear in the input: tags are found with literal searches that only move forward (a lazy
``<think>.*?</think>`` regex rescans the rest of the text from every ``<think>``, quadratic on a completion that
repeats the tag), and a completion longer than :data:`MAX_COMPLETION_CHARS` is refused before any parsing.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

MAX_QUERY_CHARS = 1000
#: The longest completion parsed at all (a 4,096-token completion is ~20,000 characters).
MAX_COMPLETION_CHARS = 100_000

# Literal tags (case-insensitive); every search below starts where the previous one ended.
_THINK_OPEN, _THINK_CLOSE = re.compile("<think>", re.IGNORECASE), re.compile("</think>", re.IGNORECASE)
_ANSWER_OPEN, _ANSWER_CLOSE = re.compile("<answer>", re.IGNORECASE), re.compile("</answer>", re.IGNORECASE)
_TRAILING_COMMA = re.compile(r",\s*([}\]])")  # linear: a failed try at a comma ends at the next non-space
_QUERY_KEY = re.compile(r"""["']query["']\s*:\s*(["'])""")  # the value's end is found by _closing_quote


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
    return _loose_query(body)


def _loose_query(body: str) -> str | None:
    """The value of the first ``"query": "..."`` pair whose value is closed (an unescaped matching quote)."""
    unclosed: set[str] = set()  # quote characters with no unescaped occurrence after some key: none later either
    position = 0
    while (key := _QUERY_KEY.search(body, position)) is not None:
        quote = key.group(1)
        if quote not in unclosed:
            end = _closing_quote(body, key.end(), quote)
            if end is not None:
                return body[key.end():end].replace('\\"', '"')
            unclosed.add(quote)
            if len(unclosed) == 2:
                return None
        position = key.start() + 1
    return None


def _closing_quote(text: str, start: int, quote: str) -> int | None:
    end = text.find(quote, start)
    while end > 0 and text[end - 1] == "\\":
        end = text.find(quote, end + 1)
    return None if end < 0 else end


def _strip_think(text: str) -> tuple[str, bool]:
    """The text without its complete ``<think>...</think>`` blocks, and whether it had one."""
    parts, position, found = [], 0, False
    while (opening := _THINK_OPEN.search(text, position)) is not None:
        closing = _THINK_CLOSE.search(text, opening.end())
        if closing is None:  # no later <think> can be closed either
            break
        parts.extend((text[position:opening.start()], " "))
        position, found = closing.end(), True
    parts.append(text[position:])
    return "".join(parts), found


def _answer_body(text: str) -> str | None:
    """What follows the first ``<answer>``, up to ``</answer>`` or the end; None without the tag."""
    opening = _ANSWER_OPEN.search(text)
    if opening is None:
        return None
    closing = _ANSWER_CLOSE.search(text, opening.end())
    return text[opening.end():closing.start() if closing else len(text)]


def _strip_fence(body: str) -> str:
    """``body`` without a leading ```` ```lang ```` and a trailing ```` ``` ```` (code fences)."""
    body = body.strip()
    if body.startswith("```"):
        start = 3
        while start < len(body) and body[start].isascii() and body[start].isalpha():
            start += 1
        body = body[start:].lstrip()
    if body.endswith("```"):
        body = body[:-3]
    return body.strip()


def parse_answer(text: object, *, max_chars: int = MAX_QUERY_CHARS, require_think: bool = False) -> Rewrite:
    """Extract the rewritten query from a completion. Never raises on any input."""
    if not isinstance(text, str):
        return _fail(f"completion is {type(text).__name__}, not text")
    if len(text) > MAX_COMPLETION_CHARS:
        return _fail(f"the completion has {len(text)} characters (limit {MAX_COMPLETION_CHARS}); "
                     "lower the generation's max_tokens")
    outside, has_think = _strip_think(text)
    if require_think and not has_think:
        return _fail("no <think>...</think> block before the answer")
    body = _answer_body(outside)
    if body is None:
        return _fail("no <answer> tag in the completion", has_think)
    body = _strip_fence(body)
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
