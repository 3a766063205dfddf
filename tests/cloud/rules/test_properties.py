"""Property tests: the compiled closures against a plain tree-walking interpreter of the
documented semantics, and the compiler against arbitrary text."""

from __future__ import annotations

import math
from typing import Any

from hypothesis import example, given, settings
from hypothesis import strategies as st

from cloud.rules import FieldSchema, RuleError, compile_rule
from tests.cloud.rules.support import context

UNDEF = object()  # the reference's undefined
FIELDS = {"i": 7, "j": -3, "z": 0, "f": 2.5, "s": "abc", "u": "b", "t": True, "b": False, "n": None}
SCHEMA = FieldSchema({**dict.fromkeys(FIELDS, "scalar"), "missing": "scalar"})
ARITH = ["+", "-", "*", "/", "%"]
COMPARE = ["=", "!=", "<>", "<", "<=", ">", ">="]

# An expression is a tuple: (kind, ...) and renders to fully parenthesised SQL.
integers = st.integers(-20, 20).map(lambda v: ("lit", v))
literals = st.one_of(
    st.sampled_from([0.5, -1.25, 3.0]),
    st.sampled_from(["'abc'", "'b'", "''"]),
    st.sampled_from(["true", "false"]),
).map(lambda v: ("lit", v))
numeric_names = st.sampled_from(["i", "j", "z", "f"]).map(lambda n: ("name", n))
names = st.sampled_from([*FIELDS, "missing"]).map(lambda n: ("name", n))
# Numbers are drawn more often than the rest so that arithmetic mostly has numbers to work on.
leaves = st.one_of(integers, numeric_names, integers, numeric_names, literals, names)


def _extend(inner: st.SearchStrategy[tuple[Any, ...]]) -> st.SearchStrategy[tuple[Any, ...]]:
    return st.one_of(
        st.tuples(st.just("arith"), st.sampled_from(ARITH), inner, inner),
        st.tuples(st.just("cmp"), st.sampled_from(COMPARE), inner, inner),
        st.tuples(st.just("logic"), st.sampled_from(["AND", "OR"]), inner, inner),
        st.tuples(st.just("not"), inner),
        st.tuples(st.just("neg"), inner),
        st.tuples(st.just("in"), st.booleans(), inner, st.lists(inner, min_size=1, max_size=3)),
        st.tuples(st.just("isnull"), st.booleans(), inner),
        st.tuples(st.just("coalesce"), st.lists(inner, min_size=1, max_size=3)),
    )


expressions = st.recursive(leaves, _extend, max_leaves=12)
arithmetic = st.recursive(
    st.one_of(integers, numeric_names, st.just(("name", "missing"))),
    lambda inner: st.one_of(
        st.tuples(st.just("arith"), st.sampled_from(ARITH), inner, inner),
        st.tuples(st.just("neg"), inner),
    ),
    max_leaves=5,
)


def render(e: tuple[Any, ...]) -> str:
    kind = e[0]
    if kind in ("lit", "name"):
        return str(e[1])
    if kind in ("arith", "cmp", "logic"):
        return f"({render(e[2])} {e[1]} {render(e[3])})"
    if kind == "not":
        return f"(NOT {render(e[1])})"
    if kind == "neg":
        return f"(- {render(e[1])})"
    if kind == "in":
        options = ", ".join(render(o) for o in e[3])
        return f"({render(e[2])} {'NOT IN' if e[1] else 'IN'} ({options}))"
    if kind == "isnull":
        return f"({render(e[2])} IS {'NOT ' if e[1] else ''}NULL)"
    if kind == "coalesce":
        return f"coalesce({', '.join(render(a) for a in e[1])})"
    raise AssertionError(e)


def _num(v: Any) -> bool:
    return type(v) in (int, float)


def _eq(a: Any, b: Any) -> bool:
    if a is UNDEF or b is UNDEF or a is None or b is None:
        return False
    if _num(a) and _num(b):
        return bool(a == b)
    return type(a) is type(b) and bool(a == b)


def _comparable(a: Any, b: Any) -> bool:
    if a is UNDEF or b is UNDEF or a is None or b is None:
        return False
    return (_num(a) and _num(b)) or type(a) is type(b)


def _truth(v: Any) -> bool | None:
    return v if type(v) is bool else None


def reference(e: tuple[Any, ...]) -> Any:
    kind = e[0]
    if kind == "lit":
        v = e[1]
        if isinstance(v, str):
            return {"true": True, "false": False}.get(v, v.strip("'") if v.startswith("'") else v)
        return v
    if kind == "name":
        return FIELDS.get(e[1], UNDEF)
    if kind == "arith":
        a, b = reference(e[2]), reference(e[3])
        if not (_num(a) and _num(b)):
            return UNDEF
        op = e[1]
        if op in "/%" and b == 0:
            return UNDEF
        if op == "%":
            if type(a) is int and type(b) is int:
                return int(math.copysign(abs(a) % abs(b), a)) if a % b else 0
            return math.fmod(a, b)
        return {"+": a + b, "-": a - b, "*": a * b, "/": a / b if b else 0}[op]
    if kind == "cmp":
        a, b = reference(e[2]), reference(e[3])
        op = e[1]
        if op == "=":
            return _eq(a, b)
        if op in ("!=", "<>"):
            return _comparable(a, b) and not _eq(a, b)
        if not ((_num(a) and _num(b)) or (type(a) is str and type(b) is str)):
            return False
        return {"<": a < b, "<=": a <= b, ">": a > b, ">=": a >= b}[op]
    if kind == "logic":
        a, b = _truth(reference(e[2])), _truth(reference(e[3]))
        if e[1] == "AND":
            if a is False or b is False:
                return False
            return True if (a and b) else UNDEF
        if a is True or b is True:
            return True
        return False if (a is False and b is False) else UNDEF
    if kind == "not":
        a = _truth(reference(e[1]))
        return UNDEF if a is None else not a
    if kind == "neg":
        a = reference(e[1])
        return -a if _num(a) else UNDEF
    if kind == "in":
        v = reference(e[2])
        if v is None or v is UNDEF:
            return False
        found = any(_eq(v, reference(o)) for o in e[3])
        return not found if e[1] else found
    if kind == "isnull":
        v = reference(e[2])
        null = v is None or v is UNDEF
        return not null if e[1] else null
    if kind == "coalesce":
        values = [reference(a) for a in e[1]]
        for v in values:
            if v is not None and v is not UNDEF:
                return v
        return None if None in values else UNDEF
    raise AssertionError(e)


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return type(a) is type(b) and a == b


@settings(max_examples=400, deadline=None)
@given(expressions)
def test_compiled_expressions_agree_with_the_reference(expr: tuple[Any, ...]) -> None:
    sql = f"SELECT {render(expr)} AS x FROM '#'"
    try:
        rule = compile_rule("prop", sql, schema=SCHEMA)
    except RuleError as err:
        # Only the documented compile-time refusals: none apply to scalar-only expressions.
        raise AssertionError(f"{sql}: {err}") from err
    [row] = rule.evaluate(FIELDS, context())
    expected = reference(expr)
    if expected is UNDEF:
        assert "x" not in row, sql
    else:
        assert "x" in row and _same(row["x"], expected), (sql, row, expected)


@settings(max_examples=300, deadline=None)
@given(arithmetic, st.sampled_from(COMPARE), arithmetic)
@example(("arith", "%", ("name", "j"), ("lit", 2)), "=", ("lit", -1))
@example(("arith", "%", ("lit", 7), ("neg", ("name", "j"))), "<", ("name", "f"))
@example(("arith", "/", ("name", "i"), ("name", "z")), "!=", ("lit", 0))
def test_arithmetic_and_comparisons_agree_with_the_reference(
    left: tuple[Any, ...], op: str, right: tuple[Any, ...]
) -> None:
    test_compiled_expressions_agree_with_the_reference.hypothesis.inner_test(left)  # type: ignore[attr-defined]
    test_compiled_expressions_agree_with_the_reference.hypothesis.inner_test(  # type: ignore[attr-defined]
        ("cmp", op, left, right)
    )


@settings(max_examples=200, deadline=None)
@given(expressions)
def test_a_where_condition_holds_exactly_when_the_reference_is_true(
    expr: tuple[Any, ...],
) -> None:
    rule = compile_rule("prop", f"SELECT i FROM '#' WHERE {render(expr)}", schema=SCHEMA)
    assert bool(rule.evaluate(FIELDS, context())) is (reference(expr) is True)


SQL_WORDS = st.sampled_from(
    ["SELECT", "FOREACH", "AS", "DO", "INCASE", "FROM", "WHERE", "AND", "OR", "NOT", "IN", "IS",
     "NULL", "*", ",", "(", ")", "[", "]", ".", "=", "<>", "<", "+", "-", "/", "%", "'#'",
     "'a/+'", "device", "counts", "c", "c.key", "1", "2.5", "'x'", "topic(4)", "sum_values",
     "true", "\n", "'", '"', "!", "#"]
)  # fmt: skip


@settings(max_examples=400, deadline=None)
@given(st.one_of(st.lists(SQL_WORDS, max_size=14).map(" ".join), st.text(max_size=60)))
def test_any_text_either_compiles_or_raises_a_rule_error_with_a_position(sql: str) -> None:
    try:
        compile_rule("fuzz", sql)
    except RuleError as err:
        assert err.rule == "fuzz"
        assert err.line is not None and err.column is not None
        assert err.line >= 1 and err.column >= 1
        assert str(err).startswith(f"rule 'fuzz' at {err.line}:{err.column}: ")
