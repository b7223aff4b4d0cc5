"""Secrets never reach a log record, ours or a library's, at any level, in any form.

A backend that holds a secret (the NCBI API key, an OpenAI-compatible server's key) registers it with
:func:`register_secret`. From then on a log record factory masks it in the message, the arguments and the formatted
traceback of every record any logger creates: httpx's INFO line ``HTTP Request: GET https://...&api_key=...``
included. A factory and not a filter, because a filter only sees the records of the logger or handler it is attached
to, and a library may log through any child logger while the user's handlers come and go. The factory runs only for
records that pass the level check, so it costs nothing for disabled levels.

A secret shows up in more shapes than the one registered: a key read from a mounted secret file ends with a newline,
and an error message shows it as Python or JSON escapes it (``b'Bearer sk-...\\n'`` from h11), or URL-encoded. Each
registered value is masked as given and stripped of surrounding whitespace, each of those plain, ``repr``-escaped
(str and UTF-8 bytes), JSON-escaped and URL-encoded. A text cut inside a secret keeps part of it: a prefix of a
secret form of at least :data:`MIN_PARTIAL` characters that ends a text (or ends it before ``...``), or such a suffix
that starts it, is masked too; :func:`excerpt` masks before it cuts, then masks what the cut left at its edge.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import traceback
from urllib.parse import quote, quote_plus

MASK = "***"
#: The shortest part of a secret, left at a cut edge, that is masked (shorter parts say too little to matter).
MIN_PARTIAL = 8
_CUT_MARKS = ("...", "\u2026")
_PERCENT = re.compile(r"%[0-9A-F]{2}")

_secrets: tuple[str, ...] = ()
_longest = 0
_lock = threading.Lock()
_installed = False


def secret_forms(value: str) -> set[str]:
    """Every text ``value`` may show up as: as given and stripped, each plain, escaped and URL-encoded."""
    forms: set[str] = set()
    for base in {value, value.strip()}:
        if not base:
            continue
        encoded = quote(base, safe="")
        forms |= {
            base,
            repr(base)[1:-1],
            repr(base.encode("utf-8", "surrogatepass"))[2:-1],
            json.dumps(base)[1:-1],
            json.dumps(base, ensure_ascii=False)[1:-1],
            encoded,
            _PERCENT.sub(lambda m: m.group().lower(), encoded),
            quote(base),
            quote_plus(base, safe=""),
        }
    return {form for form in forms if form}


def register_secret(value: str | None) -> None:
    """Mask ``value`` in every form (see the module) in every log record from now on; empty values are ignored."""
    global _secrets, _longest
    if not isinstance(value, str) or not value.strip():
        return
    with _lock:
        forms = secret_forms(value) - set(_secrets)
        if forms:
            _secrets = tuple(sorted(set(_secrets) | forms, key=len, reverse=True))  # longest first
            _longest = len(_secrets[0])
        _install()


def redact(text: str) -> str:
    """``text`` with every registered secret, and a secret's part left at either edge of it, replaced by ``***``."""
    if not _secrets:
        return text
    for secret in _secrets:
        if secret in text:
            text = text.replace(secret, MASK)
    return _mask_edges(text)


def excerpt(text: str, limit: int) -> str:
    """At most ``limit`` characters of ``text``, whitespace runs as one space, for an error message.

    Secrets are masked before the cut (a cut first would leave part of one), and what a cut leaves of one at its
    edge is masked after it. Only the first ``4 * limit`` characters are read: the text may be huge.
    """
    shown = " ".join(redact(text[: limit * 4 + _longest]).split())
    return shown if len(shown) <= limit else redact(shown[:limit]) + "..."


def _prefix_at_end(text: str) -> tuple[int, int] | None:
    """``(start, stop)`` of the longest secret prefix (>= MIN_PARTIAL) ending ``text``, or ending it before a cut
    mark."""
    stops = {len(text)} | {len(text) - len(mark) for mark in _CUT_MARKS if text.endswith(mark)}
    best = None
    for stop in stops:
        offset = max(0, stop - _longest)
        window = text[offset:stop]
        for form in _secrets:
            head = form[:MIN_PARTIAL]
            at = window.find(head)
            while at != -1:
                if form.startswith(window[at:]):
                    if best is None or stop - offset - at > best[1] - best[0]:
                        best = (offset + at, stop)
                    break
                at = window.find(head, at + 1)
    return best


def _suffix_at_start(text: str) -> tuple[int, int] | None:
    """``(start, stop)`` of the longest secret suffix (>= MIN_PARTIAL) starting ``text``, or starting it after a cut
    mark."""
    starts = {0} | {len(mark) for mark in _CUT_MARKS if text.startswith(mark)}
    best = None
    for start in starts:
        window = text[start:start + _longest]
        for form in _secrets:
            tail = form[-MIN_PARTIAL:]
            at = window.find(tail)
            while at != -1:
                end = at + len(tail)
                if form.endswith(window[:end]) and (best is None or end > best[1] - best[0]):
                    best = (start, start + end)
                at = window.find(tail, at + 1)
    return best


def _mask_edges(text: str) -> str:
    end = _prefix_at_end(text)
    if end is not None:
        text = text[:end[0]] + MASK + text[end[1]:]
    start = _suffix_at_start(text)
    if start is not None:
        text = text[:start[0]] + MASK + text[start[1]:]
    return text


def _contains_secret(text: str) -> bool:
    return any(secret in text for secret in _secrets) or _prefix_at_end(text) is not None \
        or _suffix_at_start(text) is not None


def _scrub(record: logging.LogRecord) -> None:
    try:
        message = record.getMessage()
    except Exception:  # noqa: BLE001 - a malformed format string: the handler reports it, with the raw args
        message = f"{record.msg} {record.args}"
        if _contains_secret(message):
            record.msg, record.args = redact(message), ()
        return
    if _contains_secret(message):
        record.msg, record.args = redact(message), ()
    if record.exc_info and record.exc_info[1] is not None and not record.exc_text:
        text = "".join(traceback.format_exception(*record.exc_info)).rstrip("\n")
        if _contains_secret(text):
            record.exc_text = redact(text)  # formatters use exc_text instead of formatting exc_info again
    if record.stack_info and _contains_secret(record.stack_info):
        record.stack_info = redact(record.stack_info)


def _install() -> None:
    global _installed
    if _installed:
        return
    previous = logging.getLogRecordFactory()

    def factory(*args, **kwargs) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        if _secrets:
            _scrub(record)
        return record

    logging.setLogRecordFactory(factory)
    _installed = True
