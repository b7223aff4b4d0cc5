"""PubMed-style Boolean queries -> SQLite FTS5 MATCH expressions.

Accepted syntax (what a literature rewriter writes): ``AND`` / ``OR`` / ``NOT`` (upper case, as PubMed requires),
parentheses, quoted phrases, a trailing ``*`` wildcard, adjacent terms (an implicit ``AND``) and field tags such as
``[tiab]``, ``[ti]``, ``[ab]``, ``[mh]``, ``[pt]``. Operators are applied left to right, as PubMed does
(``a OR b AND c`` is ``(a OR b) AND c``); the FTS5 expression is written fully parenthesised so FTS5's own
precedence never applies.

Field tags map onto the two indexed columns: ``[ti]`` -> title, ``[ab]`` -> abstract, ``[tiab]``/``[tw]``/``[all]``
-> both. Tags FTS5 cannot express are dropped with a note: subject tags (``[mh]``, ``[majr]``, ``[pt]``, ...) keep
their words as free text; metadata tags (``[au]``, ``[dp]``, ``[la]``, ...) drop the whole term. Every word is
emitted as a quoted FTS5 string made only of letters and digits, so nothing the model writes can become FTS5 (or
SQL) syntax. A malformed query raises :class:`BooleanQueryError`: the reward scores it as a format failure.

Hostile text is bounded before it is parsed: a query longer than :data:`MAX_BOOLEAN_CHARS` is refused, and so is
one whose parentheses, or whose left-to-right operator chain (``a AND b OR c AND d ...``), nest deeper than
:data:`MAX_DEPTH`, so the parser, the renderer and FTS5 never recurse without bound.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Collection
from dataclasses import dataclass, field

logger = logging.getLogger(__name__)

OPERATORS = ("AND", "OR", "NOT")
TITLE, ABSTRACT = "title", "abstract"
_TITLE_TAGS = {"ti", "title"}
_ABSTRACT_TAGS = {"ab", "abstract"}
_BOTH_TAGS = {"tiab", "title/abstract", "tw", "text word", "textword", "all", "all fields"}
# Subject indexing the collection does not have: the words are still searched in title and abstract.
_SUBJECT_TAGS = {
    "mh", "mesh", "mesh terms", "majr", "mesh major topic", "sh", "subheading", "pt", "publication type",
    "ot", "other term", "nm", "supplementary concept", "tn", "mesh subheading", "pa", "pharmacological action",
}
# Metadata the collection does not have: the term cannot be evaluated and is dropped.
_METADATA_TAGS = {
    "au", "author", "1au", "lastau", "fau", "full author name", "dp", "pdat", "publication date", "edat", "crdt",
    "mhda", "la", "language", "ta", "journal", "jour", "ad", "affiliation", "pmid", "uid", "sb", "subset", "filter",
    "vi", "volume", "ip", "issue", "pg", "pagination", "gr", "grant number", "is", "issn", "pl", "place of publication",
    "lr", "dcom", "si", "secondary source id", "ir", "investigator", "cn", "corporate author", "aid",
}
#: The longest query parsed (systematic-review search strategies run to a few thousand characters).
MAX_BOOLEAN_CHARS = 20_000
#: The deepest nesting of parentheses or of alternating operators (real strategies nest a handful deep; FTS5 stops
#: at 256).
MAX_DEPTH = 64
_WORD = re.compile(r"[^\W_]+")
_STOP_WORD_CHARS = set(' \t\r\n()"[')


class BooleanQueryError(ValueError):
    """A query the Boolean parser cannot read; the message says where and how to fix it.

    The trainer's reward treats it as a format failure (:data:`FORMAT_ERRORS`).
    """

    def __init__(self, query: str, position: int | None, problem: str) -> None:
        where = f" at position {position}" if position is not None else ""
        shown = query if len(query) <= 300 else f"{query[:300]}... ({len(query)} characters)"
        super().__init__(f"Boolean query {shown!r}{where}: {problem}")
        self.query, self.position, self.problem = query, position, problem


#: Exceptions a literature engine's ``search`` raises for a query the model wrote badly (not an engine failure).
FORMAT_ERRORS: tuple[type[Exception], ...] = (BooleanQueryError,)


def is_format_error(exc: BaseException) -> bool:
    """True when ``exc`` means "the query is malformed" (score as a format failure), not "the engine failed"."""
    return isinstance(exc, FORMAT_ERRORS)


def text_tokens(text: str, stopwords: Collection[str] = ()) -> list[str]:
    """Lower-cased letter/digit runs without stop words: the one tokenization shared by index and queries."""
    return [word for word in _WORD.findall(text.lower()) if word not in stopwords]


@dataclass(frozen=True)
class _Token:
    kind: str  # "(" ")" "op" "word" "phrase" "tag"
    text: str
    position: int
    prefix: bool = False


@dataclass
class Term:
    text: str
    phrase: bool
    prefix: bool
    columns: tuple[str, ...] | None = None  # None: title and abstract


@dataclass
class Node:
    op: str
    children: list
    depth: int = 1  # Node levels from here down to the deepest Term


@dataclass(frozen=True)
class Translation:
    """An FTS5 MATCH expression and the notes on what was dropped or approximated."""

    query: str
    expression: str
    notes: tuple[str, ...] = field(default=())


def _tokenize(query: str) -> list[_Token]:
    tokens, i, n = [], 0, len(query)
    while i < n:
        char = query[i]
        if char.isspace():
            i += 1
        elif char in "()":
            tokens.append(_Token(char, char, i))
            i += 1
        elif char in "[]":
            end = query.find("]", i + 1)
            if char == "]" or end < 0:
                raise BooleanQueryError(query, i, f"unbalanced {char!r}; a field tag is written like [tiab]")
            tokens.append(_Token("tag", query[i + 1:end].strip(), i))
            i = end + 1
        elif char == '"':
            end = query.find('"', i + 1)
            if end < 0:
                raise BooleanQueryError(query, i, 'unterminated quote; close the phrase with another "')
            prefix = end + 1 < n and query[end + 1] == "*"
            tokens.append(_Token("phrase", query[i + 1:end], i, prefix))
            i = end + 1 + prefix
        else:
            start = i
            while i < n and query[i] not in _STOP_WORD_CHARS:
                i += 1
            word = query[start:i]
            if word in OPERATORS:
                tokens.append(_Token("op", word, start))
            else:
                tokens.append(_Token("word", word.rstrip("*"), start, word.endswith("*")))
    return tokens


class _Parser:
    def __init__(self, query: str, stopwords: Collection[str]) -> None:
        self.query, self.stopwords = query, stopwords
        self.tokens = _tokenize(query)
        self.index = 0
        self.depth = 0  # open parentheses around the current position
        self.notes: list[str] = []

    def error(self, token: _Token | None, problem: str) -> BooleanQueryError:
        return BooleanQueryError(self.query, token.position if token else len(self.query), problem)

    def peek(self) -> _Token | None:
        return self.tokens[self.index] if self.index < len(self.tokens) else None

    def take(self) -> _Token:
        token = self.tokens[self.index]
        self.index += 1
        return token

    def parse(self) -> Term | Node | None:
        if not self.tokens:
            raise self.error(None, "the query is empty; write at least one term")
        tree = self.expression()
        if self.peek() is not None:  # only a stray ")" stops an expression early
            raise self.error(self.peek(), "unbalanced ')'; remove it or add the matching '('")
        return tree

    def expression(self) -> Term | Node | None:
        left = self.unit()
        while (token := self.peek()) is not None and token.kind != ")":
            op = "AND"
            if token.kind == "op":
                op = self.take().text
                following = self.peek()
                if following is None or following.kind in (")", "op"):
                    raise self.error(token, f"{op} has no right-hand operand; add a term after it or remove it")
            left = _combine(op, left, self.unit(), self.notes)
            if isinstance(left, Node) and left.depth > MAX_DEPTH:
                raise self.error(token, f"the operators nest more than {MAX_DEPTH} deep (PubMed applies a chain of "
                                        "mixed AND/OR left to right, one level per change); group terms with "
                                        "parentheses or shorten the query")
        return left

    def unit(self) -> Term | Node | None:
        token = self.take()
        if token.kind == "(":
            if (following := self.peek()) is not None and following.kind == ")":
                raise self.error(following, "empty parentheses; put a term inside or remove them")
            if self.depth >= MAX_DEPTH:
                raise self.error(token, f"parentheses nest more than {MAX_DEPTH} deep; remove redundant ones")
            self.depth += 1
            inner = self.expression()
            self.depth -= 1
            closing = self.peek()
            if closing is None or closing.kind != ")":
                raise self.error(token, "unbalanced '('; add the matching ')'")
            self.take()
            if (tag := self.peek()) is not None and tag.kind == "tag":
                self.take()
                self.notes.append(f"field tag [{tag.text}] after parentheses is not supported by PubMed; ignored")
            return inner
        if token.kind in ("word", "phrase"):
            return self.term(token)
        if token.kind == "op":
            raise self.error(token, f"{token.text} has no left-hand operand; put a term before it")
        if token.kind == "tag":
            raise self.error(token, f"field tag [{token.text}] follows no term; write it right after a word or phrase")
        raise self.error(token, "unbalanced ')'; remove it or add the matching '('")

    def term(self, token: _Token) -> Term | None:
        tag = self.take().text if (following := self.peek()) is not None and following.kind == "tag" else None
        if token.prefix and not _WORD.search(token.text):
            raise self.error(token, "a wildcard * needs a word stem before it, e.g. cardio*")
        words = text_tokens(token.text, self.stopwords)
        if not words:
            self.notes.append(f"{token.text!r} has no searchable words (stop words or punctuation only); dropped")
            return None
        columns = self.columns(tag, token.text) if tag is not None else None
        if columns == ():
            return None
        return Term(" ".join(words), token.kind == "phrase" or len(words) > 1, token.prefix, columns)

    def columns(self, tag: str, text: str) -> tuple[str, ...] | None:
        name = tag.split(":")[0].strip().lower()
        if ":" in tag:
            self.notes.append(f"[{tag}]: the option after ':' is not supported; used [{name}]")
        if name in _TITLE_TAGS:
            return (TITLE,)
        if name in _ABSTRACT_TAGS:
            return (ABSTRACT,)
        if name in _BOTH_TAGS:
            return None
        if name in _METADATA_TAGS:
            self.notes.append(f"{text!r}[{tag}]: the collection has no such field; the term is dropped")
            return ()
        kind = "subject" if name in _SUBJECT_TAGS else "unknown"
        self.notes.append(f"{text!r}[{tag}]: {kind} field tag not indexed; searched in title and abstract")
        return None


def _combine(op: str, left, right, notes: list[str]):
    if left is None or right is None:
        if op == "NOT" and left is None and right is not None:
            notes.append("NOT with a dropped left-hand operand cannot be evaluated; the NOT clause is dropped")
            return None
        return right if left is None else left
    below = max(child.depth if isinstance(child, Node) else 0 for child in (left, right))
    if op != "NOT" and isinstance(left, Node) and left.op == op:  # flatten chains: keeps FTS5's depth limit away
        left.children.append(right)
        left.depth = max(left.depth, below)
        return left
    return Node(op, [left, right], below + 1)


def _render(tree: Term | Node) -> str:
    if isinstance(tree, Term):
        quoted = f'"{tree.text}"' + ("*" if tree.prefix else "")
        if tree.columns is None:
            return quoted
        return f"{{{' '.join(tree.columns)}}} : {quoted}" if len(tree.columns) > 1 else f"{tree.columns[0]} : {quoted}"
    return f" {tree.op} ".join(f"({_render(child)})" for child in tree.children)


def translate(query: str, *, stopwords: Collection[str] = ()) -> Translation:
    """Parse a PubMed-style Boolean query into an FTS5 MATCH expression; raise :class:`BooleanQueryError`."""
    if not isinstance(query, str):
        raise BooleanQueryError(repr(query)[:300], None, "the query must be text")
    if len(query) > MAX_BOOLEAN_CHARS:
        raise BooleanQueryError(query, None, f"the query has {len(query)} characters (limit {MAX_BOOLEAN_CHARS}); "
                                             "shorten it")
    parser = _Parser(query, frozenset(stopwords))
    tree = parser.parse()
    if tree is None:
        raise BooleanQueryError(query, None, "nothing searchable is left after dropping unsupported parts "
                                             f"({'; '.join(parser.notes)}); add title/abstract words")
    for note in parser.notes:
        logger.debug("query %r: %s", query, note)
    return Translation(query, _render(tree), tuple(parser.notes))
