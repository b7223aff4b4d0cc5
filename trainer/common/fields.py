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
from functools import lru_cache
from typing import Any, Literal, Union

_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")
_SECRET_WORDS = ("key", "token", "secret", "password")


class FieldTypeError(ValueError):
    """A value of the wrong type for its field (the default error class of the checks)."""


def is_secret(name: str) -> bool:
    """Whether a field's value must never be shown (API keys, tokens, passwords)."""
    last = name.rsplit(".", 1)[-1].lower()
    return any(word in last for word in _SECRET_WORDS)


def shown(name: str, value: Any) -> str:
    """The value as an error message may show it: masked for secrets, cut when long."""
    if is_secret(name) and value is not None:
        return "***"
    text = repr(value)
    return text if len(text) <= 80 else text[:80] + "..."


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
    if isinstance(value, str) and hint is float and _NUMBER.fullmatch(value.strip()):
        value = float(value)  # YAML 1.1 reads 5e-4 (no dot) as text
    if isinstance(value, bool) or not isinstance(value, numbers.Real):  # numpy numbers are Real too
        raise _wrong(name, value, hint, error)
    if hint is int:
        if isinstance(value, numbers.Integral):
            return value if type(value) is int else int(value)
        raise error(f"{name}={shown(name, value)} must be a whole number, e.g. {max(0, math.floor(value))}"
                    if math.isfinite(value) else f"{name}={shown(name, value)} must be a whole number")
    if not math.isfinite(value):
        raise error(f"{name}={shown(name, value)} must be a finite number")
    return float(value)


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
