"""What one statement may cost inside a single step of the database, where no time limit can reach.

SQLite checks its time limit (the progress handler) only between loop iterations, and PostgreSQL its
``statement_timeout`` only where a function chooses to look: the expressions of one row, and each function call in
them, run to their end. Two shapes make that unbounded, and :func:`check_cost` refuses both (parsed with sqlglot):

- **Inlining blowup.** Both databases inline a subquery or CTE in FROM into the query that reads it, copying the
  column's expression to every place it is used: ``WITH t1(v) AS (SELECT v+v FROM t0), t2(v) AS (SELECT v+v FROM
  t1) ...`` doubles per CTE, so 22 CTEs (749 characters) made SQLite build 4 million expression nodes, 1.5 GB, before
  running anything. The statement's size once inlined (an upper bound: every reference to a subquery's column
  counts that column's whole expression, a UNION ALL in FROM counts the reading query once per arm) must stay
  within :data:`MAX_INLINED_NODES`.
- **n*m search functions.** LIKE, GLOB, SIMILAR TO, instr/strpos/position, replace, split_part, trim with a set of
  characters, translate and json_patch cost the product of their arguments' lengths inside one call; PostgreSQL's
  strpos, replace and LIKE do not look at ``statement_timeout`` meanwhile (``strpos(repeat('a', 200000), 'b' ||
  repeat('a', 100000))`` ran 18 s under a 1 s limit). Their arguments must be *small*: stored columns and literals,
  through functions that do not build long values (lower, upper, substr, trim, ``||``, CAST, dates, numbers), at
  most :data:`MAX_SEARCH_TERMS` terms and :data:`MAX_SEARCH_LITERAL_CHARS` characters of literals once inlined. A
  value built by the statement itself (repeat, printf, zeroblob, group_concat, a subquery, a recursive CTE's column)
  is refused there, so its cost is bounded by the stored data, which the statement cannot grow.

And one builder whose time is not bounded by the length limit: SQLite's ``printf('%.*c', n, 'x')`` repeats the
character n times even when it returns NULL past the limit (2^31 times: 7 s in one call). printf/format need a
literal format whose widths and precisions, and the integer literals a ``*`` reads, are at most
:data:`MAX_FORMAT_WIDTH`.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

from sqlglot import exp
from sqlglot.optimizer.scope import Scope, traverse_scope, walk_in_scope

MAX_INLINED_NODES = 5000
MAX_SEARCH_TERMS = 64
MAX_SEARCH_LITERAL_CHARS = 256
MAX_FORMAT_WIDTH = 100_000  # SQLite's MAX_VALUE_BYTES: a wider field could not be returned anyway
_CAP = 10**9  # sizes saturate here: an exponential blowup stays a small integer

# Functions whose single call costs the product of their arguments' lengths.
SEARCH_CLASSES = (exp.Like, exp.ILike, exp.Glob, exp.SimilarTo, exp.StrPosition, exp.Replace, exp.SplitPart,
                  exp.Translate, exp.StringToArray)
SEARCH_NAMES = frozenset({"json_patch", "instr", "strpos", "position", "replace", "split_part", "translate",
                          "string_to_array", "string_to_table", "like", "glob", "btrim"})

# What may appear inside a search function's arguments: values no longer than their inputs plus literals.
_SMALL_CLASSES = tuple(getattr(exp, name) for name in (
    "Column", "Literal", "Null", "Boolean", "Paren", "Alias", "Identifier", "DataType", "Var", "Placeholder",
    "Cast", "TryCast", "Lower", "Upper", "Initcap", "Substring", "Left", "Right", "Trim", "Coalesce", "Nullif",
    "If", "Case", "DPipe", "Concat", "ConcatWs", "Length", "Abs", "Round", "Floor", "Ceil", "Neg", "Add", "Sub",
    "Mul", "Div", "IntDiv", "Mod", "EQ", "NEQ", "GT", "GTE", "LT", "LTE", "And", "Or", "Not", "Is", "Between",
    "Tuple", "Distinct", "Escape", "Count", "Sum", "Avg", "Min", "Max", "Greatest", "Least", "Typeof", "Unicode",
    # dates: as long as their format literal
    "TimeToStr", "StrToTime", "StrToDate", "Date", "Datetime", "Time", "Extract", "CurrentDate", "CurrentTime",
    "CurrentTimestamp", "TsOrDsToDate", "TsOrDsToTimestamp", "TimeStrToTime", "UnixToTime", "DateAdd", "DateSub",
    "DateDiff", "DateTrunc", "TimestampTrunc",
) if hasattr(exp, name)) + SEARCH_CLASSES
_SMALL_NAMES = frozenset({"julianday", "datetime", "time", "unixepoch", "strftime", "date", "ifnull", "iif",
                          "length", "lower", "upper", "substr", "ltrim", "rtrim", "btrim", "trim", "abs", "round",
                          "typeof", "date_part", "to_char", "instr", "strpos"})


@dataclass(frozen=True)
class Size:
    """An upper bound on an expression once subqueries and CTEs are inlined: its nodes, the characters of literals
    in it, and whether it holds a value the statement builds (see the module docstring)."""

    nodes: int = 0
    literal_chars: int = 0
    built: bool = False

    def __add__(self, other: Size) -> Size:
        return Size(min(self.nodes + other.nodes, _CAP), min(self.literal_chars + other.literal_chars, _CAP),
                    self.built or other.built)

    def widest(self, other: Size) -> Size:
        return Size(max(self.nodes, other.nodes), max(self.literal_chars, other.literal_chars),
                    self.built or other.built)


STORED = Size(1)  # a column of a real table: the data, not the statement, sets its length
RECURSIVE = Size(1, 0, True)  # a recursive CTE's column: not inlined, but its value may grow with every iteration


class CostRefused(ValueError):
    """The statement's cost cannot be bounded; the message says which rule and how to rewrite it."""


def _name(node: exp.Expr) -> str:
    if isinstance(node, exp.Anonymous):
        return node.name.lower()
    return node.sql_name().lower() if isinstance(node, exp.Func) else node.key


def is_search(node: exp.Expr) -> bool:
    if isinstance(node, exp.Trim):
        return node.args.get("expression") is not None  # trim(x, characters): every character against the set
    if isinstance(node, exp.Anonymous):
        return _name(node) in SEARCH_NAMES
    return isinstance(node, SEARCH_CLASSES)


def _is_small(node: exp.Expr) -> bool:
    if isinstance(node, exp.Replace):  # replace(x, 'ab', 'c') never lengthens x; replace(x, 'a', 'aaaa') does
        pattern, replacement = node.args.get("expression"), node.args.get("replacement")
        return (isinstance(pattern, exp.Literal) and isinstance(replacement, exp.Literal)
                and len(replacement.name) <= max(len(pattern.name), 1))
    if isinstance(node, exp.Anonymous):
        return _name(node) in _SMALL_NAMES
    if isinstance(node, exp.Window):
        return True  # its function is judged on its own
    return isinstance(node, _SMALL_CLASSES)


def _is_child_scope(node: exp.Expr, root: exp.Expr) -> bool:
    return node is not root and isinstance(node, (exp.CTE, exp.Query))


class _Analysis:
    """Sizes of columns and expressions, memoized, so the analysis is linear in the statement's text."""

    def __init__(self, tree: exp.Expr) -> None:
        self.scopes = traverse_scope(tree)
        self._columns: dict[tuple[int, str], Size] = {}
        self._active: set[tuple[int, str]] = set()
        self._names: dict[int, list[str]] = {}
        self._recursive: dict[int, bool] = {}
        self._unqualified: dict[tuple[int, str], Size | None] = {}
        self._index: dict[int, tuple[dict[str, list[Scope]], list[Scope], bool]] = {}
        self._sizes: dict[tuple[int, bool], Size] = {}

    # --- the output columns of a scope -------------------------------------------------------------------------
    def names(self, scope: Scope) -> list[str]:
        if id(scope) not in self._names:
            self._names[id(scope)] = self._output_names(scope)
        return self._names[id(scope)]

    def _output_names(self, scope: Scope) -> list[str]:
        alias = scope.expression.parent.args.get("alias") if scope.expression.parent is not None else None
        columns = [c.name.lower() for c in alias.args.get("columns") or []] if isinstance(alias, exp.TableAlias) \
            else []
        if columns:
            return columns
        if scope.is_set_operation:
            return self.names(scope.union_scopes[0]) if scope.union_scopes else []
        return [s.alias_or_name.lower() for s in scope.expression.selects]

    def column(self, scope: Scope, name: str) -> Size:
        key = (id(scope), name)
        if key in self._columns:
            return self._columns[key]
        if key in self._active or (scope.is_cte and self._is_recursive(scope)):
            return RECURSIVE
        self._active.add(key)
        try:
            size = self._column(scope, name)
        finally:
            self._active.discard(key)
        self._columns[key] = size
        return size

    def _is_recursive(self, scope: Scope) -> bool:
        if id(scope) not in self._recursive:
            cte = scope.expression.parent
            name = cte.alias_or_name.lower() if isinstance(cte, exp.CTE) else ""
            self._recursive[id(scope)] = bool(name) and any(t.name.lower() == name
                                                            for t in scope.expression.find_all(exp.Table))
        return self._recursive[id(scope)]

    def _column(self, scope: Scope, name: str) -> Size:
        names = self.names(scope)
        if scope.is_set_operation:
            position = names.index(name) if name in names else None
            size = Size()
            for arm in scope.union_scopes:
                arm_names = self.names(arm)
                arm_name = arm_names[position] if position is not None and position < len(arm_names) else name
                size = size.widest(self.column(arm, arm_name))
            return size
        selects = scope.expression.selects
        found = [e for n, e in zip(names, selects, strict=False) if n == name and not _is_star(e)]
        if found:
            size = Size()
            for projection in found:
                size = size.widest(self.size(projection.unalias(), scope))
            return size
        if any(_is_star(e) for e in selects):
            size = STORED
            for source in self._sources(scope):
                if isinstance(source, Scope):
                    size = size.widest(self.column(source, name))
            return size
        size = STORED  # not one of its names: take the widest, an upper bound
        for projection in selects:
            size = size.widest(self.size(projection.unalias(), scope))
        return size

    # --- expressions --------------------------------------------------------------------------------------------
    def _sources(self, scope: Scope) -> Iterator[object]:
        for _node, source in scope.selected_sources.values():
            yield source

    def resolve(self, column: exp.Column, scope: Scope, aliases: bool) -> Size:
        size = self._resolve(column, scope)
        if aliases and not column.table and not scope.is_set_operation:
            # SQLite reads a result-column alias in WHERE, GROUP BY, HAVING and ORDER BY as a copy of its expression
            for projection in scope.expression.selects:
                if isinstance(projection, exp.Alias) and projection.alias.lower() == column.name.lower():
                    size = size.widest(self.size(projection.this, scope))
        return size

    def _resolve(self, column: exp.Column, scope: Scope) -> Size:
        name, table = column.name.lower(), column.table.lower()
        current: Scope | None = scope
        while current is not None:  # correlated references look outwards
            if table:
                for alias, (_node, source) in current.selected_sources.items():
                    if alias.lower() == table:
                        return self.column(source, name) if isinstance(source, Scope) else STORED
            else:
                key = (id(current), name)
                if key not in self._unqualified:
                    self._unqualified[key] = self._unqualified_in(current, name)
                if self._unqualified[key] is not None:
                    return self._unqualified[key]
            current = current.parent
        return STORED

    def _unqualified_in(self, scope: Scope, name: str) -> Size | None:
        """The widest source column ``name`` may be in ``scope``; None when ``scope`` has no sources (look outwards)."""
        if id(scope) not in self._index:
            self._index[id(scope)] = self._source_index(scope)
        named, stars, any_source = self._index[id(scope)]
        if not any_source:
            return None
        size = STORED
        for source in named.get(name, []):
            size = size.widest(self.column(source, name))
        for source in stars:  # the name may come through its *: bounded by its widest column
            size = size.widest(self.widest(source))
        return size

    def widest(self, scope: Scope) -> Size:
        """The widest column ``scope`` may output (through a ``*`` too)."""
        key = (id(scope), "*")
        if key in self._columns:
            return self._columns[key]
        if key in self._active:
            return RECURSIVE
        self._active.add(key)
        try:
            size = STORED
            for name in set(self.names(scope)) - {"*"}:
                size = size.widest(self.column(scope, name))
            if not scope.is_set_operation and any(_is_star(e) for e in scope.expression.selects):
                for source in self._sources(scope):
                    if isinstance(source, Scope):
                        size = size.widest(self.widest(source))
        finally:
            self._active.discard(key)
        self._columns[key] = size
        return size

    def _source_index(self, scope: Scope) -> tuple[dict[str, list[Scope]], list[Scope], bool]:
        """Which derived sources of ``scope`` name each column, and which pass a ``*`` over derived sources of their
        own (a ``*`` over real tables only gives stored columns)."""
        sources = list(self._sources(scope))
        named: dict[str, list[Scope]] = {}
        stars = []
        for source in sources:
            if not isinstance(source, Scope):
                continue
            for name in set(self.names(source)):
                named.setdefault(name, []).append(source)
            if not source.is_set_operation and any(_is_star(e) for e in source.expression.selects) \
                    and any(isinstance(inner, Scope) for inner in self._sources(source)):
                stars.append(source)
        return named, stars, bool(sources)

    def size(self, node: exp.Expr, scope: Scope, *, aliases: bool = False) -> Size:
        """``node``'s size in ``scope``; ``aliases``: outside the select list, where a name may be a result alias."""
        key = (id(node), aliases)
        if key not in self._sizes:
            self._sizes[key] = self._size(node, scope, aliases)
        return self._sizes[key]

    def _size(self, node: exp.Expr, scope: Scope, aliases: bool) -> Size:
        total = Size()
        for part in walk_in_scope(node):
            if isinstance(part, exp.Identifier):
                continue
            if isinstance(part, exp.Column) and not isinstance(part.this, exp.Star):
                total += self.resolve(part, scope, aliases)
            elif _is_child_scope(part, node):
                total += Size(1, 0, True)  # a subquery's value: counted in its own scope
            else:
                chars = len(part.name) if isinstance(part, exp.Literal) and part.is_string else 0
                total += Size(1, chars, not _is_small(part))
        return total

    # --- the statement ------------------------------------------------------------------------------------------
    def inlined_nodes(self) -> int:
        arms = 1
        for scope in self.scopes:
            if scope.is_set_operation and (scope.is_derived_table or scope.is_cte):
                arms = min(arms * _leaf_arms(scope), _CAP)
        own = 0
        for scope in self.scopes:
            if scope.is_set_operation:
                continue
            for key, value in scope.expression.args.items():
                for part in value if isinstance(value, list) else [value]:
                    if isinstance(part, exp.Expr):
                        own = min(own + self.size(part, scope, aliases=key != "expressions").nodes, _CAP)
        return min(own * arms, _CAP)

    def search_calls(self) -> Iterator[tuple[exp.Expr, exp.Expr, Size]]:
        for scope in self.scopes:
            if scope.is_set_operation:
                continue
            for node in walk_in_scope(scope.expression):
                if is_search(node):
                    aliases = not _in_select_list(node, scope.expression)
                    for argument in _arguments(node):
                        yield node, argument, self.size(argument, scope, aliases=aliases)


def _is_star(node: exp.Expr) -> bool:
    return isinstance(node, exp.Star) or (isinstance(node, exp.Column) and isinstance(node.this, exp.Star))


def _in_select_list(node: exp.Expr, select: exp.Expr) -> bool:
    while node.parent is not None and node.parent is not select:
        node = node.parent
    return node.arg_key == "expressions"


def _leaf_arms(scope: Scope) -> int:
    return sum(_leaf_arms(arm) if arm.is_set_operation else 1 for arm in scope.union_scopes) or 1


def _arguments(node: exp.Expr) -> list[exp.Expr]:
    if isinstance(node, exp.Anonymous):
        return list(node.expressions)
    return [value for key, value in node.args.items() if isinstance(value, exp.Expr) and key != "position"]


def check_cost(tree: exp.Expr, dialect: str = "sqlite") -> None:
    """Raise :class:`CostRefused` when ``tree`` breaks one of the module's rules (see its docstring)."""
    deep = "the query is nested too deeply to measure; write it with fewer nested subqueries"
    try:
        analysis = _Analysis(tree)
        nodes = analysis.inlined_nodes()
        calls = list(analysis.search_calls())
    except RecursionError:
        raise CostRefused(deep) from None
    except Exception as exc:  # noqa: BLE001 - sqlglot's scope builder rejects some malformed queries
        raise CostRefused(f"the query's subqueries and CTEs cannot be resolved ({type(exc).__name__}: "
                          f"{str(exc)[:120]}); name every subquery and CTE once") from None
    if nodes > MAX_INLINED_NODES:
        raise CostRefused(f"the query grows to {_count(nodes)} expression nodes once its subqueries and CTEs are "
                          f"inlined (limit {MAX_INLINED_NODES}): each reference to a subquery's column copies its "
                          "expression; refer to each computed column fewer times")
    for call in tree.find_all(exp.Anonymous, exp.Format):
        problem = _format_problem(call)
        if problem:
            raise CostRefused(f"{_short(call.sql(dialect=dialect))}: {problem}; a printf/format field is repeated "
                              "inside one call, which no time limit interrupts")
    for call, argument, size in calls:
        what = _short(call.sql(dialect=dialect))
        if size.built:
            raise CostRefused(f"{what}: a search (LIKE, GLOB, instr, replace, trim with characters, ...) costs the "
                              "product of its arguments' lengths inside one call, which no time limit interrupts; "
                              "its arguments may be stored columns and literals (through lower, upper, substr, trim, "
                              "||, CAST, dates), not a value the query builds: "
                              f"{_short(argument.sql(dialect=dialect))} (repeat, printf, zeroblob, group_concat, a "
                              "subquery, a recursive CTE's column)")
        if size.nodes > MAX_SEARCH_TERMS or size.literal_chars > MAX_SEARCH_LITERAL_CHARS:
            raise CostRefused(f"{what}: a search argument may hold at most {MAX_SEARCH_TERMS} terms and "
                              f"{MAX_SEARCH_LITERAL_CHARS} characters of literals once inlined (limit); "
                              f"{_short(argument.sql(dialect=dialect))} has {_count(size.nodes)} and "
                              f"{_count(size.literal_chars)}")


_CONVERSION = re.compile(r"%%|%(?:\d+\$)?[-+ 0#!,]*(\*[\d$]*|\d+)?(?:\.(\*[\d$]*|\d+))?")


def _format_problem(call: exp.Expr) -> str | None:
    """Why a printf/format call may loop past any limit (see the module docstring); None when it cannot."""
    if isinstance(call, exp.Anonymous) and call.name.lower() in ("printf", "format"):
        form, values = (call.expressions[0], call.expressions[1:]) if call.expressions else (None, [])
    elif isinstance(call, exp.Format):
        form, values = call.this, list(call.expressions)
    else:
        return None
    if not (isinstance(form, exp.Literal) and form.is_string):
        return "its format must be a string literal"
    used = 0
    for match in _CONVERSION.finditer(form.name):
        if match.group(0) == "%%":
            continue
        for field in (match.group(1), match.group(2)):
            if field is None:
                continue
            if not field.startswith("*"):
                if int(field) > MAX_FORMAT_WIDTH:
                    return f"a width or precision of {int(field):,} (limit {MAX_FORMAT_WIDTH:,})"
                continue
            value = _integer(values[used]) if field == "*" and used < len(values) else None
            used += 1
            if value is None or abs(value) > MAX_FORMAT_WIDTH:
                return f"a * width or precision must read an integer literal within the limit of {MAX_FORMAT_WIDTH:,}"
        used += 1
    return None


def _integer(node: exp.Expr) -> int | None:
    sign = -1 if isinstance(node, exp.Neg) else 1
    node = node.this if isinstance(node, exp.Neg) else node
    if isinstance(node, exp.Literal) and not node.is_string and node.name.lstrip("-").isdigit():
        return sign * int(node.name)
    return None


def _short(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _count(value: int) -> str:
    return f"more than {_CAP:,}" if value >= _CAP else f"{value:,}"
