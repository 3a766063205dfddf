"""The built-in functions. Each is described once here (arity, what its arguments should be, the
kind of its result) with a builder that turns the compiled argument
closures into the closure that computes the call. No built-in raises on data: a wrong type or
an undefined argument gives undefined.

Closures have the signature ``fn(doc, ctx, item) -> value`` (:data:`Fn`): the document, the
:class:`EvalContext`, and the current FOREACH item (``None`` outside FOREACH).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal

from cloud.rules.context import EvalContext
from cloud.rules.schema import ANY, SCALAR, ArrayKind, Kind, MapKind, ObjectKind
from cloud.rules.values import UNDEFINED

Fn = Callable[[Mapping[str, Any], EvalContext, Any], Any]
NOT_CONSTANT: Final = object()  # in ``consts``: the argument is not a literal
Wants = Literal["any", "scalar", "map", "container"]


@dataclass(frozen=True, slots=True)
class Builtin:
    name: str
    min_args: int
    max_args: int | None  # None: any number
    wants: Wants  # what every argument should be; checked against the schema when known
    build: Callable[[tuple[Fn, ...], tuple[Any, ...]], Fn]
    result: Callable[[tuple[Kind, ...]], Kind]
    signature: str

    def arity(self) -> str:
        if self.max_args is None:
            return f"at least {self.min_args} argument{'s' if self.min_args != 1 else ''}"
        if self.min_args == self.max_args:
            return f"{self.min_args} argument{'s' if self.min_args != 1 else ''}"
        return f"{self.min_args} to {self.max_args} arguments"


def _scalar(_kinds: tuple[Kind, ...]) -> Kind:
    return SCALAR


# --- context -----------------------------------------------------------------------------


def _build_topic(args: tuple[Fn, ...], consts: tuple[Any, ...]) -> Fn:
    if not args:
        return lambda doc, ctx, item: ctx.topic
    (level_fn,) = args
    (const,) = consts
    if type(const) is int:
        index = const - 1

        def topic_level(doc: Mapping[str, Any], ctx: EvalContext, item: Any) -> Any:
            levels = ctx.topic_levels()
            return levels[index] if index < len(levels) else UNDEFINED

        return topic_level

    def topic_dynamic(doc: Mapping[str, Any], ctx: EvalContext, item: Any) -> Any:
        n = level_fn(doc, ctx, item)
        if type(n) is not int or n < 1:
            return UNDEFINED
        levels = ctx.topic_levels()
        return levels[n - 1] if n <= len(levels) else UNDEFINED

    return topic_dynamic


def _build_clientid(args: tuple[Fn, ...], consts: tuple[Any, ...]) -> Fn:
    def clientid(doc: Mapping[str, Any], ctx: EvalContext, item: Any) -> Any:
        return UNDEFINED if ctx.clientid is None else ctx.clientid

    return clientid


def _build_timestamp(args: tuple[Fn, ...], consts: tuple[Any, ...]) -> Fn:
    return lambda doc, ctx, item: ctx.timestamp_ms


# --- maps --------------------------------------------------------------------------------


def sum_values(value: Any) -> Any:
    if type(value) is dict or isinstance(value, Mapping):
        items: Any = value.values()
    elif type(value) is list:
        items = value
    else:
        return UNDEFINED
    total: Any = 0
    for x in items:
        t = type(x)
        if t is int or t is float:
            total += x
        else:
            return UNDEFINED
    return total


def keys(value: Any) -> Any:
    if type(value) is dict or isinstance(value, Mapping):
        return list(value)
    return UNDEFINED


def values(value: Any) -> Any:
    if type(value) is dict or isinstance(value, Mapping):
        return list(value.values())
    return UNDEFINED


def length(value: Any) -> Any:
    if type(value) in (str, list, dict) or isinstance(value, Mapping):
        return len(value)
    return UNDEFINED


def _values_kind(kinds: tuple[Kind, ...]) -> Kind:
    (kind,) = kinds
    if isinstance(kind, MapKind):
        return ArrayKind(kind.values)
    return ArrayKind(ANY)


# --- scalars -----------------------------------------------------------------------------


def absolute(value: Any) -> Any:
    t = type(value)
    return abs(value) if t is int or t is float else UNDEFINED


def lower(value: Any) -> Any:
    return value.lower() if type(value) is str else UNDEFINED


def upper(value: Any) -> Any:
    return value.upper() if type(value) is str else UNDEFINED


def _text(value: Any) -> str | None:
    t = type(value)
    if t is str:
        return str(value)
    if t is bool:
        return "true" if value else "false"
    if t is int or t is float:
        return str(value)
    return None


def concat(*parts: Any) -> Any:
    texts = []
    for part in parts:
        text = _text(part)
        if text is None:
            return UNDEFINED
        texts.append(text)
    return "".join(texts)


def _extreme(pick: Callable[..., Any]) -> Callable[..., Any]:
    def extreme(*args: Any) -> Any:
        present = [a for a in args if a is not None and a is not UNDEFINED]
        if not present:
            return UNDEFINED
        if all(type(a) is int or type(a) is float for a in present) or all(
            type(a) is str for a in present
        ):
            return pick(present)
        return UNDEFINED

    return extreme


def _build_coalesce(args: tuple[Fn, ...], consts: tuple[Any, ...]) -> Fn:
    def coalesce(doc: Mapping[str, Any], ctx: EvalContext, item: Any) -> Any:
        seen_null = False
        for arg in args:
            value = arg(doc, ctx, item)
            if value is None:
                seen_null = True
            elif value is not UNDEFINED:
                return value
        return None if seen_null else UNDEFINED

    return coalesce


def _coalesce_kind(kinds: tuple[Kind, ...]) -> Kind:
    return kinds[0] if all(k == kinds[0] for k in kinds) else ANY


def _strict(function: Callable[..., Any]) -> Callable[[tuple[Fn, ...], tuple[Any, ...]], Fn]:
    """A builder for a plain function of its evaluated arguments (undefined ones included)."""

    def build(args: tuple[Fn, ...], consts: tuple[Any, ...]) -> Fn:
        if len(args) == 1:
            (a,) = args

            def call1(doc: Mapping[str, Any], ctx: EvalContext, item: Any) -> Any:
                return function(a(doc, ctx, item))

            return call1

        def call(doc: Mapping[str, Any], ctx: EvalContext, item: Any) -> Any:
            return function(*[a(doc, ctx, item) for a in args])

        return call

    return build


def _container_kind(_kinds: tuple[Kind, ...]) -> Kind:
    return ArrayKind(SCALAR)


def _table(*builtins: Builtin) -> Mapping[str, Builtin]:
    return {b.name: b for b in builtins}


# name, arguments (min, max; None: any number), what each argument should be, builder,
# kind of the result, signature (shown in arity errors). docs/rules.md describes each.
BUILTINS: Final = _table(
    Builtin("topic", 0, 1, "scalar", _build_topic, _scalar, "topic() / topic(n)"),
    Builtin("clientid", 0, 0, "any", _build_clientid, _scalar, "clientid()"),
    Builtin("timestamp", 0, 0, "any", _build_timestamp, _scalar, "timestamp()"),
    Builtin("sum_values", 1, 1, "container", _strict(sum_values), _scalar, "sum_values(map)"),
    Builtin("keys", 1, 1, "map", _strict(keys), _container_kind, "keys(map)"),
    Builtin("values", 1, 1, "map", _strict(values), _values_kind, "values(map)"),
    Builtin("len", 1, 1, "any", _strict(length), _scalar, "len(x)"),
    Builtin("coalesce", 1, None, "any", _build_coalesce, _coalesce_kind, "coalesce(a, ...)"),
    Builtin("abs", 1, 1, "scalar", _strict(absolute), _scalar, "abs(n)"),
    Builtin("lower", 1, 1, "scalar", _strict(lower), _scalar, "lower(s)"),
    Builtin("upper", 1, 1, "scalar", _strict(upper), _scalar, "upper(s)"),
    Builtin("concat", 1, None, "scalar", _strict(concat), _scalar, "concat(a, ...)"),
    Builtin("max", 1, None, "scalar", _strict(_extreme(max)), _scalar, "max(a, ...)"),
    Builtin("min", 1, None, "scalar", _strict(_extreme(min)), _scalar, "min(a, ...)"),
)


def kind_fits(wants: Wants, kind: Kind) -> bool:
    """Whether an argument of ``kind`` can ever be what a function ``wants``."""
    if wants == "scalar":
        return kind in (SCALAR, ANY)
    if wants == "map":
        return isinstance(kind, MapKind | ObjectKind) or kind == ANY
    if wants == "container":
        return isinstance(kind, MapKind | ObjectKind | ArrayKind) or kind == ANY
    return True


WANTS_TEXT: Final[Mapping[str, str]] = {
    "scalar": "a string, number or boolean",
    "map": "a map or an object",
    "container": "a map, an object or an array",
}
