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
_KEY_PATTERNS: dict[str, re.Pattern[str]] = {}  # answer key -> its ``"key": "`` pattern (the value's end: _closing_quote)


def _key_pattern(key: str) -> re.Pattern[str]:
    if key not in _KEY_PATTERNS:
        _KEY_PATTERNS[key] = re.compile(r"""["']""" + re.escape(key) + r"""["']\s*:\s*(["'])""")
    return _KEY_PATTERNS[key]


@dataclass(frozen=True)
class Rewrite:
    """A parsed completion: ``query`` is set when ``ok``; ``reason`` says what was wrong otherwise."""

    query: str | None
    ok: bool
    reason: str | None = None
    has_think: bool = False
    is_json: bool = False
    # the answer ran into a repetition loop and was cut at its first repeat (:func:`cut_loop`): usable, not well formed
    repaired: bool = False

    @property
    def well_formed(self) -> bool:
        """The exact trained format: a ``<think>`` block and a JSON object answer with a usable query."""
        return self.ok and self.has_think and self.is_json and not self.repaired


def _fail(reason: str, has_think: bool = False) -> Rewrite:
    return Rewrite(query=None, ok=False, reason=reason, has_think=has_think)


def _json_query(body: str, key: str = "query") -> str | None:
    """The ``key`` field (``query`` by default) of a JSON-ish object, or None when there is none."""
    candidates = [body, _TRAILING_COMMA.sub(r"\1", body)]
    for text in candidates:
        try:
            value = json.loads(text)
        except (ValueError, RecursionError):
            continue
        if isinstance(value, dict):
            query = value.get(key)
            if isinstance(query, list) and all(isinstance(q, str) for q in query):
                return " ".join(query)
            return query if isinstance(query, str) else None
        if isinstance(value, str):
            return value
        return None
    return _loose_query(body, key)


def _loose_query(body: str, key: str = "query") -> str | None:
    """The value of the first ``"key": "..."`` pair whose value is closed (an unescaped matching quote)."""
    unclosed: set[str] = set()  # quote characters with no unescaped occurrence after some key: none later either
    position = 0
    pattern = _key_pattern(key)
    while (found := pattern.search(body, position)) is not None:
        quote = found.group(1)
        if quote not in unclosed:
            end = _closing_quote(body, found.end(), quote)
            if end is not None:
                return body[found.end():end].replace('\\"', '"')
            unclosed.add(quote)
            if len(unclosed) == 2:
                return None
        position = found.start() + 1
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


def _answer_body(text: str) -> tuple[str | None, bool]:
    """What follows the first ``<answer>``, up to ``</answer>`` or the end (None without the tag), and whether the
    answer was closed."""
    opening = _ANSWER_OPEN.search(text)
    if opening is None:
        return None, False
    closing = _ANSWER_CLOSE.search(text, opening.end())
    return text[opening.end():closing.start() if closing else len(text)], closing is not None


_WORD = re.compile(r"\S+")
_LOOP_UNIT = 8  # the longest repeated unit looked for, in words
LOOP_REPEATS = 3  # a unit written this many times in a row at the end of an unfinished answer is a loop


def cut_loop(text: str) -> str:
    """``text`` without the repetition loop it ends in, if any: the longest run at its end of one unit of 1 to 8
    words written at least :data:`LOOP_REPEATS` times in a row (compared without case and punctuation; the last word
    may be cut short) is cut after its first occurrence. Greedy decoding of a small model can repeat a word until the
    token budget ends the answer unfinished; what it wrote before the loop is the answer it meant. Linear in the
    text."""
    spans = [(m.start(), m.end()) for m in _WORD.finditer(text)]
    words = [text[a:b].strip(".,;:\"'()[]{}").lower() for a, b in spans]
    for end in (len(words), len(words) - 1):  # the budget may have ended the loop inside a word
        keep = _loop_start(words[:end])
        if keep is not None:
            return text[: spans[keep - 1][1]]
    return text


def _loop_start(words: list[str]) -> int | None:
    """How many words to keep so that a trailing loop keeps only its first unit (None: no loop)."""
    best = None
    for unit in range(1, min(_LOOP_UNIT, len(words) // LOOP_REPEATS) + 1):
        run = 0  # trailing positions i with words[i] == words[i + unit]
        while run < len(words) - unit and words[len(words) - unit - 1 - run] == words[len(words) - 1 - run]:
            run += 1
        if (run + unit) // unit >= LOOP_REPEATS and (best is None or len(words) - run < best):
            best = len(words) - run
    return best


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


def parse_answer(text: object, *, max_chars: int = MAX_QUERY_CHARS, require_think: bool = False,
                 key: str = "query") -> Rewrite:
    """Extract the rewritten query from a completion (the JSON answer's ``key`` field: ``query``, or ``terms`` for the
    corpus-steered task). Never raises on any input."""
    if not isinstance(text, str):
        return _fail(f"completion is {type(text).__name__}, not text")
    if len(text) > MAX_COMPLETION_CHARS:
        return _fail(f"the completion has {len(text)} characters (limit {MAX_COMPLETION_CHARS}); "
                     "lower the generation's max_tokens")
    outside, has_think = _strip_think(text)
    if require_think and not has_think:
        return _fail("no <think>...</think> block before the answer")
    body, closed = _answer_body(outside)
    if body is None:
        return _fail("no <answer> tag in the completion", has_think)
    repaired = False
    if not closed:  # cut off by the token budget: a repetition loop, cut at its first repeat, is repaired
        unlooped = cut_loop(body)
        repaired = unlooped != body
        body = unlooped
    body = _strip_fence(body)
    if body.lower().startswith("json"):
        body = body[4:].strip()
    if not body:
        return _fail("empty <answer>", has_think)
    is_json = body.startswith("{")
    if is_json:
        query = _json_query(body, key)
        if query is None and repaired:  # the loop ran to the budget inside the JSON string: close it
            query = _json_query(body + '"}', key)
        if query is None:
            return _fail(f'<answer> is not a JSON object with a string "{key}" field', has_think)
    else:
        query = body.strip("\"'")
    query = " ".join(query.split())
    if not query:
        return _fail("the rewritten query is empty", has_think)
    if len(query) > max_chars:
        return _fail(f"the rewritten query has {len(query)} characters (limit {max_chars})", has_think)
    return Rewrite(query=query, ok=True, reason=None, has_think=has_think, is_json=is_json, repaired=repaired)
