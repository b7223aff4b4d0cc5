"""Whether text can be passed on: what a rewrite or a query must be before the next component encodes it."""

from __future__ import annotations

import re

_CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f]")  # C0 controls but tab, newline, carriage return


def encoding_problem(text: str) -> str | None:
    """Why ``text`` cannot be sent on as a query (None when it can): it must encode as UTF-8 (no lone surrogate, as a
    JSON escape like ``"\\ud800"`` decodes to) and hold no C0 control character but tab, newline and carriage return
    (NUL and the like break URL parameters, C strings and XML alike)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        return (f"it holds a lone surrogate U+{ord(text[exc.start]):04X} at position {exc.start}, which UTF-8 "
                "cannot encode")
    control = _CONTROL.search(text)
    if control is not None:
        return f"it holds the control character U+{ord(control.group()):04X} at position {control.start()}"
    return None
