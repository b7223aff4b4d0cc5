"""Values checked against their type annotations where they enter: config files, CLI flags, component parameters.

One generic check, driven by the annotations, so a field someone adds is covered without a line here: ``bool``
takes only true/false (YAML ``'no'`` in quotes is text, and a non-empty text is truthy), ``int`` only whole numbers
(``2.5`` retries would fail every request later), ``float`` any finite number (an int becomes a float; a numeric
text such as ``"5e-4"``, which YAML 1.1 reads as a string, becomes its number), ``str`` only text; ``Literal``,
``Optional``/``Union``, ``list[...]``/``tuple[...]`` and dataclasses nest. Every error names the field, the value
(masked for secrets), what it must be and how to write it.

We keep this instead of pydantic: the core has no pydantic dependency, the dataclasses stay plain (TRL's and
peft's style, ``dataclasses.asdict`` and YAML dumps unchanged), and the messages can give the YAML fix.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import re
import types
import typing
from collections.abc import Iterator
from functools import lru_cache
from typing import Any, Literal, Union

# a number written as text; matched only on short text (its backtracking is quadratic in a long run of digits)
_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")
_SECRET_WORDS = ("key", "token", "secret", "password")
SHOWN_CHARS = 80  # how much of a value an error message shows


class FieldTypeError(ValueError):
    """A value of the wrong type for its field (the default error class of the checks)."""


def is_secret(name: str) -> bool:
    """Whether a field's value must never be shown (API keys, tokens, passwords)."""
    last = name.rsplit(".", 1)[-1].lower()
    return any(word in last for word in _SECRET_WORDS)


def shown(name: str, value: Any, limit: int = SHOWN_CHARS) -> str:
    """The value as an error message may show it: masked for secrets, cut when long (see :func:`bounded_repr`)."""
    if is_secret(name) and value is not None:
        return "***"
    return bounded_repr(value, limit)


def bounded_repr(value: Any, limit: int = SHOWN_CHARS) -> str:
    """``repr(value)`` cut to ``limit`` characters (then ``...``), without rendering more than that.

    Lists, tuples, sets, dicts and dataclasses are walked lazily and the walk stops at ``limit`` characters, so a
    value that shares one sub-tree a billion times (YAML aliases) costs what is shown; text is cut before it is
    quoted; an integer too long for ``repr`` (Python's digit limit) is described by its size.
    """
    pieces: list[str] = []
    size = 0
    for piece in _repr_pieces(value, limit + 1):
        pieces.append(piece)
        size += len(piece)
        if size > limit:
            break
    text = "".join(pieces)
    return text if len(text) <= limit else text[:limit] + "..."


def _repr_pieces(value: Any, limit: int) -> Iterator[str]:
    """``repr(value)`` in pieces, each at most about ``limit`` characters, produced as they are consumed."""
    if isinstance(value, (str, bytes, bytearray)):
        yield repr(value[:limit])
    elif isinstance(value, bool) or value is None:
        yield repr(value)
    elif isinstance(value, int):
        bits = value.bit_length()
        yield repr(value) if bits <= 4 * limit else f"<an integer of about {int(bits * math.log10(2)) + 1} digits>"
    elif isinstance(value, (list, tuple, set, frozenset, dict)) and type(value).__repr__ in _CONTAINER_REPRS:
        yield from _container_pieces(value, limit)
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        yield f"{type(value).__name__}("
        for i, f in enumerate(field for field in dataclasses.fields(value) if field.repr):
            yield f"{', ' if i else ''}{f.name}="
            item = getattr(value, f.name)
            yield from ("***",) if is_secret(f.name) and item is not None else _repr_pieces(item, limit)
        yield ")"
    else:
        try:
            text = repr(value)
        except Exception:  # noqa: BLE001 - a value whose repr fails is still named
            text = f"<{type(value).__name__}>"
        yield text[:limit]


_CONTAINER_REPRS = (list.__repr__, tuple.__repr__, set.__repr__, frozenset.__repr__, dict.__repr__)


def _container_pieces(value: Any, limit: int) -> Iterator[str]:
    if isinstance(value, dict):
        open_, close = "{", "}"
    elif isinstance(value, tuple):
        open_, close = "(", ",)" if len(value) == 1 else ")"
    elif isinstance(value, (set, frozenset)):
        if not value:
            yield f"{type(value).__name__}()"
            return
        open_, close = ("{", "}") if type(value) is set else ("frozenset({", "})")
    else:
        open_, close = "[", "]"
    yield open_
    for i, item in enumerate(value.items() if isinstance(value, dict) else value):
        if i:
            yield ", "
        if isinstance(value, dict):
            key, item = item
            yield from _repr_pieces(key, limit)
            yield ": "
            if isinstance(key, str) and is_secret(key) and item is not None:
                yield "***"
                continue
        yield from _repr_pieces(item, limit)
    yield close


def describe(hint: Any) -> str:
    """What a value of this annotation looks like, in the words of a config file."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is type(None):
        return "null"
    if origin is Literal:
        return f"one of {list(args)}"
    if origin in (Union, types.UnionType):
        return " or ".join(describe(arg) for arg in args)
    if origin in (list, tuple) or hint in (list, tuple):
        return f"a list of {describe(args[0])}" if args else "a list"
    names = {bool: "true or false", int: "a whole number", float: "a number", str: "text", dict: "a mapping"}
    if hint in names:
        return names[hint]
    return f"a {getattr(hint, '__name__', hint)}"


def check_value(name: str, value: Any, hint: Any, error: type[Exception] = FieldTypeError) -> Any:
    """``value`` checked against ``hint``: returned as is, or normalized (int -> float, lists item by item)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any or hint is object or isinstance(hint, typing.TypeVar):
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [arg for arg in args if arg is not type(None)]
        if len(options) == 1:  # Optional[X]: X's own message (it names the bad item of a list)
            return check_value(name, value, options[0], error)
        for arg in options:
            try:
                return check_value(name, value, arg, error)
            except error:
                continue
        raise _wrong(name, value, hint, error)
    if origin is Literal:
        if any(value == arg and type(value) is type(arg) for arg in args):
            return value
        raise error(f"{name}={shown(name, value)} is not supported: choose {describe(hint)}")
    if hint is type(None):
        if value is None:
            return None
        raise _wrong(name, value, hint, error)
    if hint in (bool, int, float, str):
        return _scalar(name, value, hint, error)
    if origin in (list, tuple) or hint in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise _wrong(name, value, hint, error)
        item = args[0] if args and (origin is list or len(args) == 1 or args[-1] is Ellipsis) else Any
        return type(value)(check_value(f"{name}[{i}]", v, item, error) for i, v in enumerate(value))
    if origin is dict or hint is dict:
        if not isinstance(value, dict):
            raise _wrong(name, value, hint, error)
        return value
    if isinstance(hint, type) and not isinstance(value, hint):
        raise _wrong(name, value, hint, error)
    return value


def _scalar(name: str, value: Any, hint: type, error: type[Exception]) -> Any:
    if hint is bool:
        if isinstance(value, bool):
            return value
        fix = f"; write it without quotes ({name.rsplit('.', 1)[-1]}: {_truth(value)})" if _truth(value) else ""
        raise error(f"{name}={shown(name, value)} must be true or false{fix}")
    if hint is str:
        if isinstance(value, str):
            return value
        raise _wrong(name, value, hint, error)
    if isinstance(value, str) and hint is float and len(value) <= 64 and _NUMBER.fullmatch(value.strip()):
        value = float(value)  # YAML 1.1 reads 5e-4 (no dot) as text
    if isinstance(value, bool) or not isinstance(value, numbers.Real):  # numpy numbers are Real too
        raise _wrong(name, value, hint, error)
    if hint is int:
        if isinstance(value, numbers.Integral):
            return value if type(value) is int else int(value)
        raise error(f"{name}={shown(name, value)} must be a whole number, e.g. {max(0, math.floor(value))}"
                    if math.isfinite(value) else f"{name}={shown(name, value)} must be a whole number")
    try:
        number = float(value)
    except OverflowError:  # an integer beyond float's range
        number = math.inf
    if not math.isfinite(number):
        raise error(f"{name}={shown(name, value)} must be a finite number")
    return number


def _truth(value: Any) -> str | None:
    if isinstance(value, str):
        lowered = value.strip().lower()
        if lowered in ("true", "yes", "on", "y", "1"):
            return "true"
        if lowered in ("false", "no", "off", "n", "0"):
            return "false"
    return None


def _wrong(name: str, value: Any, hint: Any, error: type[Exception]) -> Exception:
    got = type(value).__name__
    return error(f"{name}={shown(name, value)} ({got}) must be {describe(hint)}")


@lru_cache(maxsize=None)
def _hints(owner: Any) -> dict[str, Any]:
    """The resolved annotations; one that cannot be resolved (a name imported only for type checkers) is not checked."""
    try:
        return typing.get_type_hints(owner)
    except Exception:  # noqa: BLE001 - resolve what can be resolved, one annotation at a time
        module = __import__(owner.__module__, fromlist=["_"])
        hints = {}
        for name, annotation in getattr(owner, "__annotations__", {}).items():
            try:
                hints[name] = typing.get_type_hints(type("_", (), {"__annotations__": {name: annotation}}),
                                                    globalns=vars(module))[name]
            except Exception:  # noqa: BLE001
                hints[name] = Any
        return hints


def check_fields(instance: Any, *, prefix: str = "", error: type[Exception] = FieldTypeError) -> None:
    """Check every field of a dataclass instance against its annotation, normalizing in place (frozen too)."""
    hints = _hints(type(instance))
    for f in dataclasses.fields(instance):
        value = getattr(instance, f.name)
        checked = check_value(f"{prefix}{f.name}", value, hints[f.name], error)
        if checked is not value:
            object.__setattr__(instance, f.name, checked)


def check_arguments(function: Any, values: dict[str, Any], *, prefix: str = "",
                    error: type[Exception] = FieldTypeError) -> dict[str, Any]:
    """``values`` (parameter name -> value) checked against ``function``'s annotations; returns them normalized."""
    hints = _hints(function)
    return {name: check_value(f"{prefix}{name}", value, hints[name], error) if name in hints else value
            for name, value in values.items()}
