"""Built-in functions and engine-provided functions."""

from __future__ import annotations

from typing import Any

import pytest

from cloud.rules import EvalContext, RuleEvaluationError, RuleSchemaError, compile_rule
from tests.cloud.rules.support import DOC, MISSING, context, rows, value


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        ("topic()", "edgetally/v1/demo-2026/town-p1-a/batch"),
        ("topic(1)", "edgetally"),
        ("topic(3)", "demo-2026"),
        ("topic(4)", "town-p1-a"),
        ("topic(5)", "batch"),
        ("topic(6)", MISSING),
        ("topic(i - 3)", "town-p1-a"),  # computed level
        ("topic(i - 7)", MISSING),  # level 0
        ("topic(s)", MISSING),
        ("clientid()", "gw1"),
        ("timestamp()", 1_793_822_460_000),
        ("sum_values(counts.mayor)", 3),
        ("sum_values(counts['measure-1'])", 3),
        ("sum_values(arr)", 60),
        ("sum_values(obj.list)", MISSING),  # not all numbers
        ("sum_values(obj.nothing)", MISSING),
        ("sum_values(obj.a.b)", 1),
        ("keys(counts)", ["mayor", "measure-1"]),
        ("keys(counts.mayor)", ["ada", "bo"]),
        ("keys(obj.list)", MISSING),  # an array at run time
        ("values(counts.mayor)", [2, 1]),
        ("values(counts.nobody)", MISSING),
        ("len(counts)", 2),
        ("len(arr)", 3),
        ("len(s)", 3),
        ("len(i)", MISSING),
        ("len(missing)", MISSING),
        ("coalesce(missing, n, i)", 7),
        ("coalesce(missing, n)", None),
        ("coalesce(missing)", MISSING),
        ("coalesce(s, i)", "Abc"),
        ("abs(-i)", 7),
        ("abs(-2.5)", 2.5),
        ("abs(s)", MISSING),
        ("lower(s)", "abc"),
        ("upper(s)", "ABC"),
        ("upper(i)", MISSING),
        ("concat(device, '/', seq, '/', t, '/', f)", "town-p1-a/1/true/2.5"),
        ("concat(device, missing)", MISSING),
        ("concat(device, n)", MISSING),
        ("max(1, i, 3)", 7),
        ("min(1, i, -3)", -3),
        ("max(i, missing, n)", 7),  # null and undefined are skipped
        ("max(missing)", MISSING),
        ("max('a', 'b')", "b"),
        ("max('a', 1)", MISSING),
        ("min(f, i)", 2.5),
    ],
)
def test_builtin(expr: str, expected: Any) -> None:
    got = value(expr)
    assert got == expected and type(got) is type(expected)


def test_clientid_is_undefined_when_the_engine_does_not_know_it() -> None:
    assert value("clientid()", ctx=context(clientid=None)) == MISSING


def test_coalesce_stops_at_the_first_present_value() -> None:
    calls: list[Any] = []
    ctx = context(functions={"probe": lambda v: calls.append(v)})
    assert rows("SELECT coalesce(i, probe(1)) AS x FROM '#'", ctx=ctx, functions={"probe": 1}) == [
        {"x": 7}
    ]
    assert calls == []


def test_engine_functions_are_called_with_evaluated_arguments() -> None:
    registered = {"town-p1": 100}
    seen: list[tuple[Any, ...]] = []

    def record(*args: Any) -> int:
        seen.append(args)
        return len(args)

    rule = compile_rule(
        "over",
        "SELECT device, registered(precinct) AS registered, record(seq, 'x', counts.mayor) AS n "
        "FROM 'edgetally/v1/+/+/batch' WHERE ballots * 40 > registered(precinct)",
        functions={"registered": 1, "record": None},
    )
    ctx = context(functions={"registered": registered.get, "record": record})
    assert rule.evaluate(DOC, ctx) == [{"device": "town-p1-a", "registered": 100, "n": 3}]
    assert seen == [(1, "x", {"ada": 2, "bo": 1})]
    assert rule.evaluate({**DOC, "ballots": 2}, ctx) == []


def test_an_engine_function_is_not_called_with_undefined_and_none_is_null() -> None:
    calls: list[Any] = []

    def lookup(*args: Any) -> None:
        calls.append(args)

    rule = compile_rule(
        "r",
        "SELECT lookup(precinct) AS a, lookup(totals.ballots) AS b, "
        "lookup(seq, totals.ballots) AS c FROM '#'",
        functions={"lookup": None},
    )
    assert rule.evaluate(DOC, context(functions={"lookup": lookup})) == [{"a": None}]
    assert calls == [("town-p1",)]


def test_a_declared_engine_function_missing_at_evaluation_names_rule_and_call() -> None:
    rule = compile_rule(
        "over",
        "SELECT device\nFROM '#' WHERE registered(precinct) > 0",
        functions={"registered": 1},
    )
    with pytest.raises(RuleEvaluationError) as caught:
        rule.evaluate(DOC, EvalContext(topic="t", timestamp_ms=0))
    assert str(caught.value) == (
        "rule 'over' at 2:16: engine function 'registered' is not in the EvalContext"
    )


def test_an_engine_function_exception_propagates_unchanged() -> None:
    def broken(_: Any) -> Any:
        raise LookupError("no such precinct")

    rule = compile_rule(
        "r", "SELECT registered(precinct) AS r FROM '#'", functions={"registered": 1}
    )
    with pytest.raises(LookupError, match="no such precinct"):
        rule.evaluate(DOC, context(functions={"registered": broken}))


@pytest.mark.parametrize(
    ("functions", "message"),
    [
        ({"topic": 1}, "clashes with a built-in"),
        ({"select": 1}, "clashes with a built-in or a keyword"),
        ({"bad-name": 1}, "is not an identifier"),
        ({"f": -1}, "arity must be an int >= 0 or None"),
        ({"f": "1"}, "arity must be an int >= 0 or None"),
    ],
)
def test_bad_engine_function_declarations_are_a_programming_error(
    functions: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        compile_rule("r", "SELECT device FROM '#'", functions=functions)


def test_an_engine_function_without_arguments_sees_the_message_through_its_context() -> None:
    rule = compile_rule(
        "after final",
        "SELECT device, seq, ledger_outcome() FROM 'edgetally/v1/+/+/batch' "
        "WHERE ledger_outcome() = 'rejected' AND device_rate(60) > 10",
        functions={"ledger_outcome": 0, "device_rate": 1},
    )
    assert rule.columns == ("device", "seq", "ledger_outcome")

    def ctx(outcome: str | None, rate: int) -> EvalContext:
        return context(functions={"ledger_outcome": lambda: outcome, "device_rate": lambda s: rate})

    assert rule.evaluate(DOC, ctx("rejected", 11)) == [
        {"device": "town-p1-a", "seq": 1, "ledger_outcome": "rejected"}
    ]
    assert rule.evaluate(DOC, ctx("accepted", 11)) == []
    assert rule.evaluate(DOC, ctx(None, 11)) == []  # null compares false
    assert rule.evaluate(DOC, ctx("rejected", 3)) == []
    with pytest.raises(RuleSchemaError, match="takes 0 arguments, got 1"):
        compile_rule("r", "SELECT ledger_outcome(1) AS x FROM '#'", functions={"ledger_outcome": 0})
