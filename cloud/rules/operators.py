"""What each construct compiles to: builders that take the closures of the parts (and the
constants known at compile time) and return the closure of the whole. No checking here: the
compiler (:mod:`cloud.rules.compiler`) has refused every rule these could not serve.

Every expression closure has the signature ``fn(doc, ctx, item) -> value`` (:data:`Fn`);
statements become ``run(doc, ctx) -> rows``. Semantics are those of :mod:`cloud.rules.values`,
inlined where a closure runs for every message (type tests with ``is``, no helper calls).
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Mapping
from typing import Any

from cloud.rules._errors import RuleEvaluationError
from cloud.rules.context import EvalContext
from cloud.rules.functions import Fn
from cloud.rules.values import ARITHMETIC, UNDEFINED, equal, member, neg, not_equal

Row = dict[str, Any]
Doc = Mapping[str, Any]
Run = Callable[[Doc, EvalContext], list[Row]]
RELATIONS: dict[str, Callable[[Any, Any], bool]] = {
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}


# --- values and access ---------------------------------------------------------------------


def constant(value: Any) -> Fn:
    return lambda doc, ctx, item: value


def field(name: str) -> Fn:
    return lambda doc, ctx, item: doc.get(name, UNDEFINED)


def the_item(doc: Doc, ctx: EvalContext, item: Any) -> Any:
    return item


def field_member(top: str, key: str) -> Fn:
    """``top.key``: a top-level field's member, in one closure."""

    def get(doc: Doc, ctx: EvalContext, item: Any) -> Any:
        value = doc.get(top, UNDEFINED)
        if type(value) is dict:
            return value.get(key, UNDEFINED)
        return member(value, key)

    return get


def item_member(key: str) -> Fn:
    """``c.key`` where ``c`` is the FOREACH item."""

    def get(doc: Doc, ctx: EvalContext, item: Any) -> Any:
        if type(item) is dict:
            return item.get(key, UNDEFINED)
        return member(item, key)

    return get


def key_member(base: Fn, key: str | int) -> Fn:
    """``base.key``, ``base['key']``, ``base[0]``."""
    if type(key) is str:

        def get(doc: Doc, ctx: EvalContext, item: Any) -> Any:
            value = base(doc, ctx, item)
            if type(value) is dict:
                return value.get(key, UNDEFINED)
            return member(value, key)

        return get
    return lambda doc, ctx, item: member(base(doc, ctx, item), key)


def index(base: Fn, index_fn: Fn) -> Fn:
    """``base[expr]``: a string key or an integer index computed per message."""

    def get(doc: Doc, ctx: EvalContext, item: Any) -> Any:
        key = index_fn(doc, ctx, item)
        t = type(key)
        if t is str or t is int:
            return member(base(doc, ctx, item), key)
        return UNDEFINED

    return get


def engine_call(name: str, args: tuple[Fn, ...], missing: Callable[[], RuleEvaluationError]) -> Fn:
    """A call of an engine function: not made when an argument is undefined."""
    if len(args) == 1:
        (a,) = args

        def call1(doc: Doc, ctx: EvalContext, item: Any) -> Any:
            value = a(doc, ctx, item)
            if value is UNDEFINED:
                return UNDEFINED
            function = ctx.functions.get(name)
            if function is None:
                raise missing()
            return function(value)

        return call1

    def call(doc: Doc, ctx: EvalContext, item: Any) -> Any:
        values = [a(doc, ctx, item) for a in args]
        if UNDEFINED in values:
            return UNDEFINED
        function = ctx.functions.get(name)
        if function is None:
            raise missing()
        return function(*values)

    return call


# --- operators -----------------------------------------------------------------------------


def negate(operand: Fn) -> Fn:
    return lambda doc, ctx, item: neg(operand(doc, ctx, item))


def arith(op: str, left: Fn, right: Fn) -> Fn:
    apply = ARITHMETIC[op]
    return lambda doc, ctx, item: apply(left(doc, ctx, item), right(doc, ctx, item))


def relation(op: str, left: Fn, right: Fn, right_const: Any) -> Fn:
    """``<``, ``<=``, ``>``, ``>=``: true only for two numbers or two strings that relate.
    ``right_const``: the right operand's value when it is a literal (``NOT_CONSTANT`` or any
    non-scalar otherwise)."""
    rel = RELATIONS[op]
    k = right_const
    if type(k) is int or type(k) is float:

        def vs_number(doc: Doc, ctx: EvalContext, item: Any) -> Any:
            a = left(doc, ctx, item)
            t = type(a)
            return (t is int or t is float) and rel(a, k)

        return vs_number
    if type(k) is str:

        def vs_string(doc: Doc, ctx: EvalContext, item: Any) -> Any:
            a = left(doc, ctx, item)
            return type(a) is str and rel(a, k)

        return vs_string

    def general(doc: Doc, ctx: EvalContext, item: Any) -> Any:
        a = left(doc, ctx, item)
        b = right(doc, ctx, item)
        ta = type(a)
        tb = type(b)
        if ((ta is int or ta is float) and (tb is int or tb is float)) or (ta is str and tb is str):
            return rel(a, b)
        return False

    return general


def equality(same: bool, left: Fn, right: Fn, right_const: Any) -> Fn:
    """``=`` (``same``) or ``!=``; specialised when the right operand is a string or number
    literal (the compiler puts a literal on the right)."""
    k = right_const
    if type(k) is str:

        def vs_string(doc: Doc, ctx: EvalContext, item: Any) -> Any:
            a = left(doc, ctx, item)
            if type(a) is str:
                return (a == k) is same
            return False

        return vs_string
    if type(k) is int or type(k) is float:

        def vs_number(doc: Doc, ctx: EvalContext, item: Any) -> Any:
            a = left(doc, ctx, item)
            t = type(a)
            if t is int or t is float:
                return (a == k) is same
            return False

        return vs_number
    test = equal if same else not_equal
    return lambda doc, ctx, item: test(left(doc, ctx, item), right(doc, ctx, item))


def logic_and(left: Fn, right: Fn) -> Fn:
    def and_(doc: Doc, ctx: EvalContext, item: Any) -> Any:
        a = left(doc, ctx, item)
        if a is False:
            return False
        b = right(doc, ctx, item)
        if b is False:
            return False
        return True if (a is True and b is True) else UNDEFINED

    return and_


def logic_or(left: Fn, right: Fn) -> Fn:
    def or_(doc: Doc, ctx: EvalContext, item: Any) -> Any:
        a = left(doc, ctx, item)
        if a is True:
            return True
        b = right(doc, ctx, item)
        if b is True:
            return True
        return False if (a is False and b is False) else UNDEFINED

    return or_


def logic_not(operand: Fn) -> Fn:
    def not_(doc: Doc, ctx: EvalContext, item: Any) -> Any:
        a = operand(doc, ctx, item)
        if a is True:
            return False
        if a is False:
            return True
        return UNDEFINED

    return not_


def in_constants(value_fn: Fn, constants: list[Any], negated: bool) -> Fn:
    """``x [NOT] IN (literals)``: one set lookup per type (booleans apart from numbers)."""
    numbers = frozenset(c for c in constants if type(c) is int or type(c) is float)
    strings = frozenset(c for c in constants if type(c) is str)
    bools = frozenset(c for c in constants if type(c) is bool)

    def in_(doc: Doc, ctx: EvalContext, item: Any) -> Any:
        value = value_fn(doc, ctx, item)
        t = type(value)
        if t is str:
            found = value in strings
        elif t is int or t is float:
            found = value in numbers
        elif t is bool:
            found = value in bools
        elif value is None or value is UNDEFINED:
            return False
        else:
            found = False
        return found is not negated

    return in_


def in_values(value_fn: Fn, options: tuple[Fn, ...], negated: bool) -> Fn:
    def in_(doc: Doc, ctx: EvalContext, item: Any) -> Any:
        value = value_fn(doc, ctx, item)
        if value is None or value is UNDEFINED:
            return False
        found = any(equal(value, o(doc, ctx, item)) for o in options)
        return found is not negated

    return in_


def is_null(value_fn: Fn, negated: bool) -> Fn:
    if negated:

        def is_not_null(doc: Doc, ctx: EvalContext, item: Any) -> Any:
            value = value_fn(doc, ctx, item)
            return value is not None and value is not UNDEFINED

        return is_not_null

    def is_null_(doc: Doc, ctx: EvalContext, item: Any) -> Any:
        value = value_fn(doc, ctx, item)
        return value is None or value is UNDEFINED

    return is_null_


# --- rows and statements -------------------------------------------------------------------


def project(columns: tuple[tuple[str, Fn], ...], star: bool) -> Fn:
    """A row: the columns that are not undefined, after a copy of the document for ``*``."""
    if star:

        def with_star(doc: Doc, ctx: EvalContext, item: Any) -> Row:
            row = dict(doc)
            for column, fn in columns:
                value = fn(doc, ctx, item)
                if value is not UNDEFINED:
                    row[column] = value
            return row

        return with_star

    def row(doc: Doc, ctx: EvalContext, item: Any) -> Row:
        return {
            column: value
            for column, fn in columns
            if (value := fn(doc, ctx, item)) is not UNDEFINED
        }

    return row


def item_row(name: str) -> Fn:
    """FOREACH without DO: the item when it is an object, else ``{name: item}``."""

    def row(doc: Doc, ctx: EvalContext, item: Any) -> Row:
        if type(item) is dict or isinstance(item, Mapping):
            return dict(item)
        return {name: item}

    return row


def select(project_fn: Fn, where: Fn | None) -> Run:
    if where is None:
        return lambda doc, ctx: [project_fn(doc, ctx, None)]

    def run(doc: Doc, ctx: EvalContext) -> list[Row]:
        if where(doc, ctx, None) is True:
            return [project_fn(doc, ctx, None)]
        return []

    return run


def foreach(source: Fn, project_fn: Fn, incase: Fn | None, where: Fn | None) -> Run:
    """WHERE once; then a map's entries as ``{key, value}`` objects, or an array's items;
    anything else gives no rows."""

    def run(doc: Doc, ctx: EvalContext) -> list[Row]:
        if where is not None and where(doc, ctx, None) is not True:
            return []
        found = source(doc, ctx, None)
        items: Any
        if type(found) is dict or isinstance(found, Mapping):
            items = [{"key": k, "value": v} for k, v in found.items()]
        elif type(found) is list:
            items = found
        else:
            return []
        if incase is None:
            return [project_fn(doc, ctx, item) for item in items]
        return [project_fn(doc, ctx, item) for item in items if incase(doc, ctx, item) is True]

    return run
