"""Evaluation semantics: fields, literals, operators, undefined and null, projections."""

from __future__ import annotations

import pickle
import threading
from typing import Any

import pytest

from cloud.rules import UNDEFINED, FieldSchema, compile_rule
from tests.cloud.rules.support import DOC, MISSING, context, holds, probe, rows, value

# --- fields --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        ("device", "town-p1-a"),
        ("counts.mayor.ada", 2),
        ("counts['measure-1'].yes", 1),
        ("counts['measure-1']['no']", 2),
        ("obj.a.b.c", 1),
        ("obj['key with-dash']", "x"),
        ("obj.list[1].z", 2),
        ("arr[0]", 10),
        ("arr[2]", 30),
        ("arr[3]", MISSING),  # past the end: undefined
        ("counts.nobody", MISSING),  # a map key that is not there
        ("counts.mayor.nobody", MISSING),
        ("totals.ballots", MISSING),  # totals is null on a non-final batch
        ("obj.a.b.c.d", MISSING),  # member of a number
        ("obj['list'][i - 7]", 1),  # a computed index
        ("counts[s]", MISSING),  # a computed key that is not there
        ("obj[t]", MISSING),  # a key that is neither string nor integer
    ],
)
def test_field_access(expr: str, expected: Any) -> None:
    assert value(expr) == expected


def test_a_missing_field_is_left_out_of_the_row_and_null_is_kept() -> None:
    assert rows("SELECT device, missing, n, totals FROM '#'") == [
        {"device": "town-p1-a", "n": None, "totals": None}
    ]


def test_keywords_are_case_insensitive() -> None:
    assert rows("sElEcT device As d FrOm '#' wHeRe seq = 1 AnD NoT t Is NuLl") == [
        {"d": "town-p1-a"}
    ]


# --- literals ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        ("'text'", "text"),
        ("'it''s'", "it's"),
        ("''", ""),
        ("'a-b/c #+'", "a-b/c #+"),
        ("42", 42),
        ("-42", -42),
        ("1.5", 1.5),
        ("1e3", 1000.0),
        (".5", 0.5),
        ("2.5E-1", 0.25),
        ("true", True),
        ("FALSE", False),
        ("null", None),
        ("12345678901234567890", 12345678901234567890),
    ],
)
def test_literals(expr: str, expected: Any) -> None:
    got = value(expr)
    assert got == expected and type(got) is type(expected)


# --- arithmetic --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        ("i + 1", 8),
        ("i - 10", -3),
        ("i * f", 17.5),
        ("i / 2", 3.5),  # exact division
        ("8 / 2", 4.0),
        ("i % 3", 1),
        ("-i % 3", -1),  # the sign of the dividend, as in SQL
        ("i % -3", 1),
        ("7.5 % 2", 1.5),
        ("-i", -7),
        ("- -i", 7),
        ("1 + 2 * 3", 7),
        ("(1 + 2) * 3", 9),
        ("10 - 4 - 3", 3),  # left-associative
        ("2 * 3 % 4", 2),
        ("ballots - sum_values(counts.mayor)", 0),
        # undefined
        ("i / 0", MISSING),
        ("i % 0", MISSING),
        ("missing + 1", MISSING),
        ("n + 1", MISSING),
        ("s + 1", MISSING),
        ("t + 1", MISSING),  # booleans are not numbers
        ("-s", MISSING),
        ("obj + 1", MISSING),
        ("1e308 * 10", float("inf")),  # floats overflow to infinity, as in IEEE 754
    ],
)
def test_arithmetic(expr: str, expected: Any) -> None:
    assert value(expr) == expected


def test_integer_overflow_into_float_division_is_undefined() -> None:
    huge = "9" * 400
    assert value(f"{huge} / 3") == MISSING  # too large for a float: undefined, not an error
    assert value(f"{huge} * 1.5") == MISSING


# --- comparisons -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("condition", "expected"),
    [
        ("i = 7", True),
        ("i = 7.0", True),
        ("7 = i", True),
        ("i != 7", False),
        ("i <> 8", True),
        ("i < 8", True),
        ("i <= 7", True),
        ("i > 7", False),
        ("i >= 7.0", True),
        ("f > i", False),
        ("s = 'Abc'", True),
        ("'Abc' = s", True),
        ("s < 'B'", True),
        ("s > 'a'", False),  # code point order
        ("t = true", True),
        ("t != false", True),
        ("counts = counts", True),
        ("counts.mayor = obj.a", False),
        ("arr = arr", True),
        ("obj.ints = obj.floats", True),  # deep: 1 = 1.0, and null = null inside
        ("obj.ints = obj.bools", False),  # deep: true is not 1
        ("obj.ints != obj.bools", True),
        ("obj.list = obj.ints", False),
        ("obj.a != arr", False),  # an object and an array are not comparable
        # not comparable: false, whichever the operator
        ("s = 1", False),
        ("s != 1", False),
        ("s < 1", False),
        ("t = 1", False),  # a boolean is not a number
        ("t != 1", False),
        ("i < s", False),
        ("t < true", False),
        # null and undefined: false, whichever the operator
        ("n = n", False),
        ("n != 1", False),
        ("missing = missing", False),
        ("missing != 1", False),
        ("missing < 1", False),
        ("missing > 1", False),
        ("missing >= missing", False),
        ("i > missing", False),
        # so NOT of a comparison with undefined is true
        ("NOT missing > 1", True),
        ("NOT (missing = 1)", True),
    ],
)
def test_comparisons(condition: str, expected: bool) -> None:
    assert holds(condition) is expected


# --- logic: three values -----------------------------------------------------------------

TRUTH = {"T": "i = 7", "F": "i = 8", "U": "missing"}  # U: undefined, not a boolean


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        ("{T} AND {T}", True),
        ("{T} AND {F}", False),
        ("{F} AND {U}", False),
        ("{U} AND {F}", False),
        ("{T} AND {U}", MISSING),
        ("{U} AND {U}", MISSING),
        ("{T} OR {F}", True),
        ("{U} OR {T}", True),
        ("{T} OR {U}", True),
        ("{F} OR {F}", False),
        ("{F} OR {U}", MISSING),
        ("NOT {T}", False),
        ("NOT {F}", True),
        ("NOT {U}", MISSING),
        ("NOT NOT {T}", True),
        ("{T} OR {T} AND {F}", True),  # AND binds tighter than OR
        ("({T} OR {T}) AND {F}", False),
        ("NOT {F} AND {F}", False),  # NOT binds tighter than AND
    ],
)
def test_logic_is_three_valued(expr: str, expected: Any) -> None:
    assert value(expr.format(**{k: f"({v})" for k, v in TRUTH.items()})) == expected


@pytest.mark.parametrize("condition", ["i", "s", "n", "missing", "1", "'true'", "arr", "obj"])
def test_a_condition_holds_only_when_it_is_exactly_true(condition: str) -> None:
    assert not holds(condition)
    assert holds("t")


def test_and_does_not_evaluate_its_right_side_after_false() -> None:
    calls: list[Any] = []
    ctx = context(functions={"probe": probe(calls)})
    assert (
        rows("SELECT device FROM '#' WHERE i = 8 AND probe(1)", ctx=ctx, functions={"probe": 1})
        == []
    )
    assert rows(
        "SELECT device FROM '#' WHERE i = 7 OR probe(2)", ctx=ctx, functions={"probe": 1}
    ) == [{"device": "town-p1-a"}]
    assert calls == []


# --- IN, IS NULL -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("condition", "expected"),
    [
        ("i IN (1, 7, 9)", True),
        ("i IN (7.0)", True),
        ("i IN ('7')", False),
        ("s IN ('Abc', 'x')", True),
        ("t IN (1, true)", True),
        ("t IN (1)", False),
        ("i IN (i - 1, i)", True),  # computed options
        ("i IN (seq, ballots)", False),
        ("i NOT IN (1, 2)", True),
        ("i NOT IN (7)", False),
        ("i NOT IN (seq, 7)", False),
        ("missing IN (1)", False),
        ("missing NOT IN (1)", False),  # undefined is in nothing and not-in nothing
        ("n IN (null)", False),
        ("n NOT IN (1)", False),
        ("NOT i IN (1)", True),
        ("device IN ('town-p1-a', 'town-p1-b')", True),
    ],
)
def test_in(condition: str, expected: bool) -> None:
    assert holds(condition) is expected


@pytest.mark.parametrize(
    ("condition", "expected"),
    [
        ("n IS NULL", True),
        ("missing IS NULL", True),  # undefined counts as null here
        ("totals IS NULL", True),
        ("i IS NULL", False),
        ("n IS NOT NULL", False),
        ("missing IS NOT NULL", False),
        ("i IS NOT NULL", True),
        ("counts IS NOT NULL", True),
        ("totals.ballots IS NULL", True),
        ("NOT totals IS NULL", False),
        ("i + 1 IS NOT NULL", True),
    ],
)
def test_is_null(condition: str, expected: bool) -> None:
    assert holds(condition) is expected


# --- projections ---------------------------------------------------------------------------


def test_star_copies_the_document() -> None:
    [row] = compile_rule("r", "SELECT * FROM '#'").evaluate(DOC, context())
    assert row == DOC and row is not DOC


def test_star_with_columns_adds_and_overrides_fields() -> None:
    [row] = compile_rule("r", "SELECT *, topic(4) AS gateway_device, 0 AS seq FROM '#'").evaluate(
        DOC, context()
    )
    assert row == {**DOC, "gateway_device": "town-p1-a", "seq": 0}


def test_columns_are_named_by_alias_field_or_function() -> None:
    rule = compile_rule(
        "r",
        "SELECT device, counts['measure-1'].yes, counts.mayor, topic(), timestamp(), "
        "seq + 1 AS next FROM '#'",
    )
    assert rule.columns == ("device", "yes", "mayor", "topic", "timestamp", "next")
    [row] = rule.evaluate(DOC, context(timestamp_ms=5))
    assert list(row) == list(rule.columns)
    assert row["next"] == 2 and row["timestamp"] == 5 and row["mayor"] == {"ada": 2, "bo": 1}


def test_select_without_where_gives_one_row_and_false_where_gives_none() -> None:
    assert len(rows("SELECT device FROM '#'")) == 1
    assert rows("SELECT device FROM '#' WHERE seq > 1") == []
    assert rows("SELECT device FROM '#' WHERE seq = 1") == [{"device": "town-p1-a"}]


def test_rule_metadata() -> None:
    rule = compile_rule(
        "anomaly",
        "SELECT device FROM 'edgetally/v1/+/+/batch' WHERE ballots > registered(precinct)",
        functions={"registered": 1, "unused": None},
    )
    assert (rule.name, rule.kind, rule.topic_filter) == (
        "anomaly",
        "select",
        "edgetally/v1/+/+/batch",
    )
    assert rule.sql.startswith("SELECT device")
    assert rule.engine_functions == frozenset({"registered"})
    assert compile_rule("s", "SELECT * FROM '#'").columns is None


def test_evaluation_does_not_modify_the_document() -> None:
    doc = pickle.loads(pickle.dumps(DOC))
    compile_rule("r", "SELECT *, 1 AS v FROM '#'").evaluate(doc, context())
    compile_rule(
        "f", "FOREACH counts AS c DO c.key AS k, sum_values(c.value) AS n FROM '#'"
    ).evaluate(doc, context())
    assert doc == DOC


def test_a_compiled_rule_can_be_shared_between_threads() -> None:
    rule = compile_rule(
        "f",
        "FOREACH counts AS c DO topic(4) AS device, c.key AS contest, "
        "sum_values(c.value) AS votes FROM '#' WHERE ballots > 0",
    )
    expected = rule.evaluate(DOC, context())
    results: list[bool] = []

    def work() -> None:
        results.append(all(rule.evaluate(DOC, context()) == expected for _ in range(2000)))

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert results == [True] * 4


def test_undefined_is_a_falsy_singleton_that_survives_pickling() -> None:
    assert not UNDEFINED
    assert repr(UNDEFINED) == "undefined"
    assert pickle.loads(pickle.dumps(UNDEFINED)) is UNDEFINED


def test_documents_may_be_any_mapping() -> None:
    from types import MappingProxyType

    doc = MappingProxyType({**DOC, "counts": MappingProxyType(DOC["counts"])})
    rule = compile_rule(
        "r",
        "SELECT counts.mayor.ada AS ada, len(counts) AS n FROM '#' WHERE device = 'town-p1-a'",
        schema=FieldSchema.batch(),
    )
    assert rule.evaluate(doc, context()) == [{"ada": 2, "n": 2}]
