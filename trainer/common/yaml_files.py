"""Reading the YAML we are given (training configs, CLI flag values, a run's ``config.yaml``, retriever pipeline
files) with a bound on what its aliases may repeat.

YAML aliases (``&a`` ... ``*a``) share one node many times. A few hundred bytes of nested aliases (a "billion
laughs") load quickly as a shared tree, but whatever walks that tree later, an error message's ``repr()`` or
Haystack's deep copy of a pipeline, visits every repetition: billions of nodes, minutes and gigabytes. So before a
document is built, its node graph is walked once (each distinct node once) to count what its aliases would repeat:
nodes, plus the characters of repeated scalars. Beyond :data:`MAX_ALIAS_EXPANSION` the file is refused with a
:class:`~.errors.ConfigError` naming it and the fix; so is an alias inside its own anchor (a cycle). A file without
aliases is never refused here, however large.

Integers with more digits than Python converts (``sys.get_int_max_str_digits()``) are a YAML error naming the line,
not the interpreter's ``ValueError``.
"""

from __future__ import annotations

import sys
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from .errors import ConfigError

MAX_ALIAS_EXPANSION = 100_000  # nodes and characters that aliases may add to a document, in all
_CAP = 1 << 62  # sizes are capped so a deep bomb's counts stay small integers


class _Loader(yaml.SafeLoader):
    """``yaml.SafeLoader`` whose integers beyond Python's digit limit are a YAML error naming the line."""

    def construct_yaml_int(self, node: ScalarNode) -> int:
        try:
            return super().construct_yaml_int(node)
        except ValueError:
            limit = sys.get_int_max_str_digits() if hasattr(sys, "get_int_max_str_digits") else 4300
            raise yaml.constructor.ConstructorError(
                None, None, f"a number of {len(node.value)} digits is longer than Python reads ({limit} digits); "
                "write a shorter number (or quote it as text)", node.start_mark) from None


_Loader.add_constructor("tag:yaml.org,2002:int", _Loader.construct_yaml_int)


def load_yaml(text: str, *, source: str) -> Any:
    """``yaml.safe_load(text)``, refusing aliases that repeat more than :data:`MAX_ALIAS_EXPANSION` (``source``:
    the file or flag the text came from, for the message). YAML errors and ``RecursionError`` (nesting too deep)
    propagate for the caller to word."""
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        check_aliases(node, source=source)
        return loader.construct_document(node)
    finally:
        loader.dispose()


def check_yaml_aliases(text: str, *, source: str) -> None:
    """Refuse ``text`` if its aliases repeat too much, building nothing (for YAML another library then loads, e.g.
    Haystack's ``Pipeline.loads``). Each document of a multi-document stream is checked."""
    for node in yaml.compose_all(text, Loader=yaml.SafeLoader):
        if node is not None:
            check_aliases(node, source=source)


def alias_expansion(root: Node) -> int:
    """How many nodes and characters aliases add to the document under ``root``: its size with every alias expanded
    minus its size as written (each distinct node once). Raises ``ValueError`` for an alias inside its own anchor."""
    expanded: dict[int, int] = {}
    written = 0
    ancestors: set[int] = set()
    stack: list[tuple[Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        key = id(node)
        if children_done:
            ancestors.discard(key)
            expanded[key] = min(_CAP, _own_size(node) + sum(expanded[id(child)] for child in _children(node)))
            continue
        if key in expanded:
            continue
        if key in ancestors:
            raise ValueError(f"an alias at line {node.start_mark.line + 1} refers to a node that contains it")
        written += _own_size(node)
        ancestors.add(key)
        stack.append((node, True))
        stack.extend((child, False) for child in _children(node) if id(child) not in expanded)
    return max(0, expanded[id(root)] - written)


def check_aliases(root: Node, *, source: str) -> None:
    """Raise :class:`ConfigError` naming ``source`` when aliases repeat too much (see :func:`alias_expansion`)."""
    try:
        added = alias_expansion(root)
    except ValueError as exc:
        raise ConfigError(f"{source}: {exc} (a cycle, which no config needs); write the value out instead of "
                          "the alias") from None
    if added > MAX_ALIAS_EXPANSION:
        amount = "billions of" if added >= _CAP else f"{added:,}"
        raise ConfigError(f"{source}: its YAML aliases (*name) would repeat {amount} nodes and characters, more than "
                          f"the {MAX_ALIAS_EXPANSION:,} allowed (nested aliases multiply: reading such a file takes "
                          "minutes and gigabytes); write the repeated values out, or use fewer aliases")


def _own_size(node: Node) -> int:
    return 1 + len(node.value) if isinstance(node, ScalarNode) else 1


def _children(node: Node) -> list[Node]:
    if isinstance(node, SequenceNode):
        return node.value
    if isinstance(node, MappingNode):
        return [part for pair in node.value for part in pair]
    return []
