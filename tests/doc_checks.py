"""Checks that a Markdown doc still matches the code, each returning the doc's problems as readable lines (empty: none).

- :func:`broken_links`: every relative link (and ``#anchor``) points to an existing file (and heading).
- :func:`unresolved_names`: every dotted name of our packages (``deepretrieval_trainer.x.y``) imports or getattrs.
- :func:`unresolved_imports`: every ``from <our package> import ...`` / ``import <our package>`` resolves.
- :func:`unknown_keywords`: every keyword a python block passes to one of our callables is one of its parameters.
- :func:`unknown_yaml_parameters`: every component of ours in a pipeline YAML block exists and takes its
  ``init_parameters``.
- :func:`unknown_cli_flags`: every ``deepretrieval <command> --flag`` names a command and a flag of its parser
  (:func:`deepretrieval_trainer.cli.build_parser`).

All of them read the doc only; nothing runs the doc's code (the slow ``test_every_block_runs`` tests do that).
:func:`broken_doc_references` checks the other direction: the ``docs/...`` entries the code's comments point to.
"""

from __future__ import annotations

import argparse
import ast
import functools
import importlib
import inspect
import re
import shlex
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("deepretrieval_trainer", "llamaindex_deepretrieval", "haystack_deepretrieval")

_FENCE = re.compile(r"^(`{3,}|~{3,})([^\n`]*)\n(.*?)^\1[ \t]*$", re.S | re.M)
_INLINE_CODE = re.compile(r"(`+)(.+?)\1", re.S)
_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_REFERENCE = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+\"[^\"]*\")?\s*$", re.M)
_HEADING = re.compile(r"^ {0,3}(#{1,6})[ \t]+(.+?)[ \t#]*$", re.M)
_HTML_ANCHOR = re.compile(r"<a\s+(?:name|id)=\"([^\"]+)\"", re.I)
_DOTTED = re.compile(rf"(?<![\w.])(?:{'|'.join(PACKAGES)})(?:\.[A-Za-z_]\w*)+")
_COMMAND = re.compile(r"(?<![\w/.-])deepretrieval[ \t]+(.*)")


def read(doc: Path) -> str:
    return doc.read_text(encoding="utf-8")


def code_blocks(text: str, *languages: str) -> list[str]:
    """The fenced blocks' bodies, in order; only those of ``languages`` when given (``""``: no language)."""
    return [body for _, language, body in _FENCE.findall(text)
            if not languages or language.strip().split(" ")[0] in languages]


def prose(text: str) -> str:
    """The doc without its fenced blocks and inline code spans (what renders as text and links)."""
    return _INLINE_CODE.sub(" ", _FENCE.sub("", text))


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: the rendered text, lower case, punctuation dropped, spaces as hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link in a heading anchors by its text
    text = re.sub(r"<[^>]+>", "", text).strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


@functools.cache
def anchors(doc: Path) -> frozenset[str]:
    """The anchors a Markdown file defines: its headings' slugs (a repeated one gets -1, -2, ...) and HTML anchors."""
    text = read(doc)
    seen: dict[str, int] = {}
    found = set(_HTML_ANCHOR.findall(text))
    for _, heading in _HEADING.findall(_FENCE.sub("", text)):
        base = slug(heading)
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return frozenset(found)


def _missing(target: str, base: Path, doc: Path) -> str | None:
    """Why ``target`` (``path#anchor``, relative to the folder ``base``; ``#anchor`` alone: in ``doc``) points
    nowhere, or None when it points to an existing file and heading."""
    path_part, _, anchor = target.partition("#")
    path = (base / path_part).resolve() if path_part else doc
    if not path.exists():
        return f"{path_part} does not exist"
    if anchor and path.suffix == ".md" and anchor not in anchors(path):
        return f"{path.name} has no heading with anchor #{anchor}"
    return None


def broken_links(doc: Path) -> list[str]:
    text = prose(read(doc))
    problems = []
    for target in _LINK.findall(text) + _REFERENCE.findall(text):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I):  # http:, https:, mailto:
            continue
        reason = _missing(target, doc.parent, doc)
        if reason:
            problems.append(f"{doc.name}: link to {target}: {reason}")
    return problems


_DOC_REFERENCE = re.compile(r"(?<![\w/.-])((?:docs/[\w./-]+|README)\.md(?:#[\w-]+)?)")


def broken_doc_references(source: Path) -> list[tuple[str, str]]:
    """``(reference, reason)`` for each ``docs/<name>.md#<anchor>`` that a source file names (in a comment, a
    docstring, a message) and that is not an existing file and heading of the repository."""
    found = []
    for reference in sorted(set(_DOC_REFERENCE.findall(source.read_text(encoding="utf-8")))):
        reason = _missing(reference.rstrip("."), ROOT, ROOT / "README.md")
        if reason:
            found.append((reference, reason))
    return found


def resolve(dotted: str) -> Any:
    """The module, or the attribute of the longest importable module prefix, that ``dotted`` names.

    Raises ImportError or AttributeError when it names nothing; a module that exists but fails to import raises its
    own error (a missing dependency is not a missing name).
    """
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        module_name = ".".join(parts[:cut])
        try:
            value = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name is not None and (module_name + ".").startswith(exc.name + ".") or cut == 1:
                continue  # this prefix is not a module; try a shorter one
            raise
        for position, attribute in enumerate(parts[cut:], start=cut):
            value = _attribute(value, attribute, ".".join(parts[:position]))
        return value
    raise ImportError(f"no module named {parts[0]!r}")


def _attribute(owner: Any, name: str, owner_name: str) -> Any:
    try:
        return getattr(owner, name)
    except AttributeError:
        fields = getattr(owner, "__dataclass_fields__", {})
        if inspect.isclass(owner) and (name in fields or name in getattr(owner, "__annotations__", {})):
            return fields.get(name)  # a dataclass field without a default: declared, not a class attribute
        raise AttributeError(f"{owner_name} has no attribute {name!r}") from None


def unresolved_names(doc: Path) -> list[str]:
    problems = []
    for dotted in sorted(set(_DOTTED.findall(read(doc)))):
        try:
            resolve(dotted)
        except (ImportError, AttributeError) as exc:
            problems.append(f"{doc.name}: {dotted} does not resolve: {exc}")
    return problems


_IMPORT_LINE = re.compile(r"^[ \t]*((?:from|import)[ \t]+[\w.]+[^\n(#]*(?:\([^)]*\))?)", re.M)


def _import_statements(text: str) -> list[tuple[str, list[str]]]:
    """``(module, names)`` of every import statement of our packages in the doc's python blocks and inline code."""
    trees = []
    for source in code_blocks(text, "python", "py") + [span for _, span in _INLINE_CODE.findall(_FENCE.sub("", text))]:
        try:
            trees.append(ast.parse(source))
        except SyntaxError:  # a span of prose, or a block unknown_keywords reports: its import lines one by one
            for statement in _IMPORT_LINE.findall(source):
                try:
                    trees.append(ast.parse(statement.strip()))
                except SyntaxError:
                    continue  # prose that starts with "from" or "import"
    found = []
    for node in (node for tree in trees for node in ast.walk(tree)):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.module, [alias.name for alias in node.names]))
        elif isinstance(node, ast.Import):
            found.extend((alias.name, []) for alias in node.names)
    return [(module, names) for module, names in found if module.split(".")[0] in PACKAGES]


def unresolved_imports(doc: Path) -> list[str]:
    problems = []
    for module, names in _import_statements(read(doc)):
        try:
            imported = importlib.import_module(module)
        except ImportError as exc:
            problems.append(f"{doc.name}: import {module}: {exc}")
            continue
        for name in names:
            if name != "*" and not hasattr(imported, name):
                problems.append(f"{doc.name}: from {module} import {name}: {module} has no {name!r}")
    return problems


def _parameters(target: Any) -> tuple[set[str], bool] | None:
    """A callable's keyword-capable parameter names and whether it takes ``**kwargs``; None when it has no signature.

    A class is read from its ``__init__`` first: a metaclass (Haystack's ``@component``) can make the class itself
    look like ``(*args, **kwargs)``.
    """
    found = None
    for candidate in ([target.__init__, target] if inspect.isclass(target) else [target]):
        try:
            signature = inspect.signature(candidate)
        except (TypeError, ValueError):
            continue
        kinds = {p.kind for p in signature.parameters.values()}
        names = {name for name, p in signature.parameters.items()
                 if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
        found = names, inspect.Parameter.VAR_KEYWORD in kinds
        if not found[1]:
            return found
    return found


def unknown_keywords(doc: Path) -> list[str]:
    """Keyword arguments the doc's python blocks pass to callables they import from our packages (the blocks run in
    one namespace, so an import in an earlier block counts) that those callables do not take."""
    problems = []
    imported: dict[str, str] = {}
    for number, block in enumerate(code_blocks(read(doc), "python", "py"), start=1):
        try:
            tree = ast.parse(block)
        except SyntaxError as exc:
            problems.append(f"{doc.name}: python block {number} does not parse: {exc}")
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in PACKAGES:
                imported.update({alias.asname or alias.name: f"{node.module}.{alias.name}" for alias in node.names})
        for node in ast.walk(tree):
            called = _called(node, imported) if isinstance(node, ast.Call) else None
            if called is None:
                continue
            shown, dotted = called
            try:
                parameters = _parameters(resolve(dotted))
            except (ImportError, AttributeError) as exc:
                if "." in shown:  # a method or attribute of an imported name (an import unresolved_imports reports)
                    problems.append(f"{doc.name}: python block {number}: {shown}(...): {exc}")
                continue
            if parameters is None or parameters[1]:
                continue
            for keyword in node.keywords:
                if keyword.arg is not None and keyword.arg not in parameters[0]:
                    problems.append(f"{doc.name}: python block {number}: {shown}(... {keyword.arg}=...): "
                                    f"{dotted} has no parameter {keyword.arg!r}")
    return problems


def _called(call: ast.Call, imported: dict[str, str]) -> tuple[str, str] | None:
    """``(as written, dotted name)`` of a call to an imported name (``Name(...)``) or to its attribute
    (``Name.from_beir(...)``); None for any other call."""
    func = call.func
    if isinstance(func, ast.Name) and func.id in imported:
        return func.id, imported[func.id]
    if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) and func.value.id in imported:
        return f"{func.value.id}.{func.attr}", f"{imported[func.value.id]}.{func.attr}"
    return None


def unknown_yaml_parameters(doc: Path) -> list[str]:
    """Components of our packages in the doc's YAML blocks (``type:`` + ``init_parameters:``): the type resolves
    and its ``__init__`` takes every init parameter."""
    problems = []
    for number, block in enumerate(code_blocks(read(doc), "yaml", "yml"), start=1):
        try:
            loaded = yaml.safe_load(block)
        except yaml.YAMLError as exc:
            problems.append(f"{doc.name}: yaml block {number} does not parse: {exc}")
            continue
        for component in _yaml_components(loaded):
            kind = component["type"]
            try:
                cls = resolve(kind)
            except (ImportError, AttributeError) as exc:
                problems.append(f"{doc.name}: yaml block {number}: type {kind} does not resolve: {exc}")
                continue
            parameters = _parameters(cls.__init__)
            if parameters is None or parameters[1]:
                continue
            for name in component.get("init_parameters") or {}:
                if name not in parameters[0]:
                    problems.append(f"{doc.name}: yaml block {number}: {kind} has no init parameter {name!r}")
    return problems


def _yaml_components(value: Any):
    if isinstance(value, dict):
        if isinstance(value.get("type"), str) and value["type"].split(".")[0] in PACKAGES:
            yield value
        for item in value.values():
            yield from _yaml_components(item)
    elif isinstance(value, list):
        for item in value:
            yield from _yaml_components(item)


@functools.lru_cache(maxsize=1)
def _parser() -> argparse.ArgumentParser:
    from deepretrieval_trainer.cli import build_parser

    return build_parser()


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _flags(parser: argparse.ArgumentParser) -> set[str]:
    return {option for action in parser._actions for option in action.option_strings}


def command_lines(text: str) -> list[str]:
    """What follows ``deepretrieval`` on each command line of the doc: in shell blocks (backslash continuations
    joined, comments dropped) and in inline code spans."""
    shell = [body for _, language, body in _FENCE.findall(text)
             if language.strip().split(" ")[0] in ("", "bash", "sh", "shell", "console", "text")]
    spans = [span for _, span in _INLINE_CODE.findall(_FENCE.sub("", text))]
    lines = []
    for source in shell + spans:
        source = re.sub(r"\\\n", " ", source)
        for line in source.splitlines():
            line = re.sub(r"(^|\s)#.*$", "", line)  # a shell comment; a '#' inside a word (URL#name) stays
            lines.extend(_COMMAND.findall(line))
    return lines


def unknown_cli_flags(doc: Path) -> list[str]:
    problems = []
    for line in command_lines(read(doc)):
        try:
            tokens = shlex.split(line)
        except ValueError:
            tokens = line.split()
        shown = " ".join(line.split())
        shown = shown if len(shown) <= 60 else shown[:57] + "..."
        parser, where = _parser(), "deepretrieval"
        for token in tokens:
            if token in ("|", "||", "&&", ";", ">", "2>&1", "&") or token.startswith((">", "$(")):
                break
            if token.startswith("-") and not re.match(r"^-\d", token) and token != "-":
                flag = token.split("=", 1)[0]
                if flag not in _flags(parser):
                    problems.append(f"{doc.name}: `deepretrieval {shown}`: {where} has no flag {flag}")
                continue
            commands = _subcommands(parser)
            if token in commands:
                parser, where = commands[token], f"{where} {token}"
            elif parser is _parser():
                if token.isidentifier() or re.fullmatch(r"[a-z]+(-[a-z]+)*", token):
                    problems.append(f"{doc.name}: `deepretrieval {shown}`: no command {token!r}")
                break  # not a command line after all (e.g. a path or prose)
    return problems


CHECKS = {"links": broken_links, "names": unresolved_names, "imports": unresolved_imports,
          "keywords": unknown_keywords, "yaml": unknown_yaml_parameters, "flags": unknown_cli_flags}


def problems(doc: Path, *checks: str) -> list[str]:
    """Every problem the named checks (default: all of :data:`CHECKS`) find in ``doc``."""
    return [line for name in (checks or CHECKS) for line in CHECKS[name](doc)]
