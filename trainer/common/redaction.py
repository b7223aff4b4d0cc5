"""Secrets never reach a log record, ours or a library's, at any level.

A backend that holds a secret (the NCBI API key, an OpenAI-compatible server's key) registers it with
:func:`register_secret`. From then on a log record factory masks it, in plain and URL-encoded form, in the message,
the arguments and the formatted traceback of every record any logger creates: httpx's INFO line
``HTTP Request: GET https://...&api_key=...`` included. A factory and not a filter, because a filter only sees the
records of the logger or handler it is attached to, and a library may log through any child logger while the user's
handlers come and go. The factory runs only for records that pass the level check, so it costs nothing for
disabled levels.
"""

from __future__ import annotations

import logging
import threading
import traceback
from urllib.parse import quote, quote_plus

MASK = "***"

_secrets: tuple[str, ...] = ()
_lock = threading.Lock()
_installed = False


def register_secret(value: str | None) -> None:
    """Mask ``value`` (and its URL-encoded forms) in every log record from now on; empty values are ignored."""
    global _secrets
    if not isinstance(value, str) or not value:
        return
    with _lock:
        forms = {value, quote(value, safe=""), quote_plus(value, safe="")} - set(_secrets)
        if forms:
            _secrets = tuple(sorted(set(_secrets) | forms, key=len, reverse=True))  # longest first
        _install()


def redact(text: str) -> str:
    """``text`` with every registered secret replaced by ``***``."""
    for secret in _secrets:
        if secret in text:
            text = text.replace(secret, MASK)
    return text


def _contains_secret(text: str) -> bool:
    return any(secret in text for secret in _secrets)


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
