"""Values during evaluation and what the operators do with them (docs/rules.md, "Undefined
and null", says the same for people).

A value is what JSON decoding gives (``None`` for null, ``bool``, ``int``, ``float``, ``str``,
``list``, ``dict``) or :data:`UNDEFINED`: the value of a field that is not there, of a member
of something that is not an object, of an operator or function given the wrong types.

* A comparison is true only when both operands are defined, non-null and comparable (numbers
  with numbers, strings with strings, and for ``=``/``!=`` also booleans, arrays and objects
  with their own kind) and the relation holds; otherwise it is **false** (never undefined).
  Booleans are not numbers: ``true = 1`` is false. Arrays and objects are compared deeply,
  by the same rule, except that inside them null equals null.
* Arithmetic needs two numbers; anything else (null included), a division or remainder by
  zero, or an overflow, gives undefined. ``/`` divides exactly (``7 / 2`` is ``3.5``); ``%``
  keeps the sign of the dividend (``-7 % 3`` is ``-1``), like SQL.
* ``AND``, ``OR``, ``NOT`` use three values: true, false, and unknown (undefined, null or any
  non-boolean). ``false AND x`` is false, ``true OR x`` is true, ``NOT unknown`` is unknown.
* A condition (WHERE, INCASE) holds only when its value is exactly ``true``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Final


class _Undefined:
    """The one undefined value: falsy, equal only to itself, never in a result row."""

    __slots__ = ()
    _instance: _Undefined | None = None

    def __new__(cls) -> _Undefined:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "undefined"

    def __bool__(self) -> bool:
        return False

    def __reduce__(self) -> str:
        return "UNDEFINED"


UNDEFINED: Final = _Undefined()


def is_number(value: object) -> bool:
    t = type(value)
    return t is int or t is float


def equal(a: Any, b: Any) -> bool:
    """``a = b`` under the rules above."""
    if a is None or b is None or a is UNDEFINED or b is UNDEFINED:
        return False
    return same_value(a, b)


def not_equal(a: Any, b: Any) -> bool:
    """``a != b``: true only when both are defined, non-null, comparable and different."""
    if a is None or b is None or a is UNDEFINED or b is UNDEFINED:
        return False
    if not comparable(a, b):
        return False
    return not same_value(a, b)


def comparable(a: Any, b: Any) -> bool:
    """Whether ``=``/``!=`` can tell ``a`` and ``b`` apart: both numbers, or the same kind."""
    ta = type(a)
    tb = type(b)
    if ta is tb:
        return True
    if (ta is int or ta is float) and (tb is int or tb is float):
        return True
    return isinstance(a, Mapping) and isinstance(b, Mapping)


def same_value(a: Any, b: Any) -> bool:
    """Equality of JSON values where a boolean is not a number, at any depth (inside arrays
    and objects, null equals null: two documents are the same document)."""
    ta = type(a)
    tb = type(b)
    if (ta is int or ta is float) and (tb is int or tb is float):
        return bool(a == b)
    if ta is dict or isinstance(a, Mapping):
        if not (tb is dict or isinstance(b, Mapping)) or len(a) != len(b):
            return False
        return all(k in b and same_value(v, b[k]) for k, v in a.items())
    if ta is list:
        return tb is list and len(a) == len(b) and all(map(same_value, a, b))
    return ta is tb and bool(a == b)


# --- arithmetic --------------------------------------------------------------------------


def add(a: Any, b: Any) -> Any:
    if is_number(a) and is_number(b):
        try:
            return a + b
        except OverflowError:
            return UNDEFINED
    return UNDEFINED


def sub(a: Any, b: Any) -> Any:
    if is_number(a) and is_number(b):
        try:
            return a - b
        except OverflowError:
            return UNDEFINED
    return UNDEFINED


def mul(a: Any, b: Any) -> Any:
    if is_number(a) and is_number(b):
        try:
            return a * b
        except OverflowError:
            return UNDEFINED
    return UNDEFINED


def div(a: Any, b: Any) -> Any:
    if is_number(a) and is_number(b) and b != 0:
        try:
            return a / b
        except OverflowError:
            return UNDEFINED
    return UNDEFINED


def mod(a: Any, b: Any) -> Any:
    if is_number(a) and is_number(b) and b != 0:
        if type(a) is int and type(b) is int:
            r = abs(a) % abs(b)
            return -r if a < 0 else r
        try:
            return math.fmod(a, b)
        except (OverflowError, ValueError):
            return UNDEFINED
    return UNDEFINED


def neg(a: Any) -> Any:
    return -a if is_number(a) else UNDEFINED


ARITHMETIC: Final = {"+": add, "-": sub, "*": mul, "/": div, "%": mod}


# --- access ------------------------------------------------------------------------------


def member(value: Any, key: str | int) -> Any:
    """``value.key`` / ``value['key']`` / ``value[n]``: undefined when not there."""
    if type(key) is str:
        if type(value) is dict:
            return value.get(key, UNDEFINED)
        if isinstance(value, Mapping):
            return value.get(key, UNDEFINED)
        return UNDEFINED
    if type(key) is int and isinstance(value, list | tuple):
        return value[key] if 0 <= key < len(value) else UNDEFINED
    return UNDEFINED
