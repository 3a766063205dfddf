"""The syntax tree of a rule: what :mod:`cloud.rules.parser` builds and
:mod:`cloud.rules.compiler` turns into closures. Every node carries the position (1-based line
and column in the rule's SQL) that compile errors point at.

    Rule        Select(projection, topic, where) | Foreach(source, name, projection, incase, topic, where)
    projection  tuple of Star | Column(expr, alias)
    Expr        Literal | Name | Member | Index | Call | Neg | Not | Arith | Compare | Logic
                | In | IsNull
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Pos:
    line: int
    column: int

    def __str__(self) -> str:
        return f"{self.line}:{self.column}"


@dataclass(frozen=True, slots=True)
class Literal:
    """A string, integer, float, boolean or null written in the rule."""

    value: Any
    pos: Pos


@dataclass(frozen=True, slots=True)
class Name:
    """A bare name: a top-level field of the document, or the FOREACH item's name."""

    name: str
    pos: Pos


@dataclass(frozen=True, slots=True)
class Member:
    """``base.key`` or ``base['key']``: a key known when the rule is compiled."""

    base: Expr
    key: str | int
    pos: Pos  # of the key


@dataclass(frozen=True, slots=True)
class Index:
    """``base[expr]`` where ``expr`` is computed per message (e.g. ``counts[c.key]``)."""

    base: Expr
    index: Expr
    pos: Pos


@dataclass(frozen=True, slots=True)
class Call:
    name: str
    args: tuple[Expr, ...]
    pos: Pos


@dataclass(frozen=True, slots=True)
class Neg:
    operand: Expr
    pos: Pos


@dataclass(frozen=True, slots=True)
class Not:
    operand: Expr
    pos: Pos


@dataclass(frozen=True, slots=True)
class Arith:
    op: str  # + - * / %
    left: Expr
    right: Expr
    pos: Pos  # of the operator


@dataclass(frozen=True, slots=True)
class Compare:
    op: str  # = != < <= > >=  ('<>' is parsed as '!=')
    left: Expr
    right: Expr
    pos: Pos


@dataclass(frozen=True, slots=True)
class Logic:
    op: str  # and, or
    left: Expr
    right: Expr
    pos: Pos


@dataclass(frozen=True, slots=True)
class In:
    value: Expr
    options: tuple[Expr, ...]
    negated: bool
    pos: Pos


@dataclass(frozen=True, slots=True)
class IsNull:
    value: Expr
    negated: bool
    pos: Pos


Expr = Literal | Name | Member | Index | Call | Neg | Not | Arith | Compare | Logic | In | IsNull


@dataclass(frozen=True, slots=True)
class Star:
    pos: Pos


@dataclass(frozen=True, slots=True)
class Column:
    expr: Expr
    alias: str | None
    pos: Pos  # where the expression starts
    alias_pos: Pos | None = None


Item = Star | Column


@dataclass(frozen=True, slots=True)
class TopicFilter:
    text: str
    pos: Pos


@dataclass(frozen=True, slots=True)
class Select:
    projection: tuple[Item, ...]
    topic: TopicFilter
    where: Expr | None


@dataclass(frozen=True, slots=True)
class Foreach:
    source: Expr
    name: str
    name_pos: Pos
    projection: tuple[Item, ...] | None  # None: no DO, each item is the row
    incase: Expr | None
    topic: TopicFilter
    where: Expr | None


Rule = Select | Foreach
