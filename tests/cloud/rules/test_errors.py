"""Every compile error: its class, the rule's name, the position and what was expected."""

from __future__ import annotations

import pickle

import pytest

from cloud.rules import (
    RuleError,
    RuleEvaluationError,
    RuleSchemaError,
    RuleSyntaxError,
    compile_rule,
)

# (sql, error class, "line:column", detail) with compile_rule("r", sql, functions={"registered": 1})
CASES: list[tuple[str, type[RuleError], str, str]] = [
    ("", RuleSyntaxError, "1:1", "expected FOREACH or SELECT, got the end of the rule"),
    ("SELECT FROM '#'", RuleSyntaxError, "1:8", "expected an expression or '*', got FROM"),
    ("SELECT device", RuleSyntaxError, "1:14", "expected ',', AS or FROM, got the end of the rule"),
    ("SELECT * FORM '#'", RuleSyntaxError, "1:10", "expected ',' or FROM, got name 'FORM'"),
    (
        "SELECT device FROM #",
        RuleSyntaxError,
        "1:20",
        "unexpected character '#' (the topic filter is a quoted string: FROM 'a/#')",
    ),
    (
        "SELECT device FROM x",
        RuleSyntaxError,
        "1:20",
        "expected a quoted string, got name 'x' (the topic filter is a quoted string: FROM 'a/+/b')",
    ),
    (
        "SELECT device FROM '#' WHERE",
        RuleSyntaxError,
        "1:29",
        "expected an expression, got the end of the rule",
    ),
    (
        "SELECT device FROM '#' WHERE device = \"x\"",
        RuleSyntaxError,
        "1:39",
        "unexpected '\"': strings are in single quotes ('like this'), a quote inside is doubled ('it''s')",
    ),
    (
        "SELECT device FROM 'edgetally/#",
        RuleSyntaxError,
        "1:20",
        "unterminated string: a quote (') opens it and none closes it",
    ),
    (
        "SELECT device FROM '#' WHERE seq ! 1",
        RuleSyntaxError,
        "1:34",
        "unexpected character '!' (not equal is != or <>)",
    ),
    (
        "SELECT device FROM '#' WHERE 1 < seq < 3",
        RuleSyntaxError,
        "1:38",
        "expected the end of the rule or an operator, got '<'",
    ),
    (
        "SELECT device FROM '#' WHERE seq IN 1",
        RuleSyntaxError,
        "1:37",
        "expected '(', got number 1",
    ),
    (
        "SELECT device FROM '#' WHERE totals IS 1",
        RuleSyntaxError,
        "1:40",
        "expected NOT or NULL, got number 1",
    ),
    (
        "SELECT device AS in FROM '#'",
        RuleSyntaxError,
        "1:18",
        "expected a name, got IN (IN is a keyword, not a name)",
    ),
    (
        "FOREACH counts c DO c.key AS k FROM '#'",
        RuleSyntaxError,
        "1:16",
        "expected AS or an operator, got name 'c'",
    ),
    ("SELECT (seq + 1 AS s FROM '#'", RuleSyntaxError, "1:17", "expected ')', got AS"),
    (
        "FOREACH counts AS c DO *, c.key AS k FROM '#'",
        RuleSyntaxError,
        "1:24",
        "'*' cannot be used in DO: a FOREACH row is made of its DO columns",
    ),
    ("SELECT *, * FROM '#'", RuleSyntaxError, "1:11", "'*' appears twice"),
    (
        "SELECT seq + 1 FROM '#'",
        RuleSyntaxError,
        "1:8",
        "this column needs a name: write '<expression> AS <name>' (only fields and function calls name themselves)",
    ),
    (
        "SELECT device FROM '#' WHERE seq = = 1",
        RuleSyntaxError,
        "1:36",
        "expected an expression, got '='",
    ),
    (
        "SELECT devcie FROM '#'",
        RuleSchemaError,
        "1:8",
        "unknown field 'devcie' (did you mean 'device'?)",
    ),
    (
        "SELECT totals.ballotz FROM '#'",
        RuleSchemaError,
        "1:15",
        "unknown field 'ballotz' in 'totals' (did you mean 'ballots'?); it has: ballots, counts",
    ),
    (
        "SELECT ballots.x FROM '#'",
        RuleSchemaError,
        "1:16",
        "'ballots' is a scalar: it has no field 'x'",
    ),
    (
        "SELECT counts[1] AS c FROM '#'",
        RuleSchemaError,
        "1:15",
        "'counts' is a map, its keys are strings: write counts['...'], not [1]",
    ),
    (
        "SELECT keys(counts)['x'] AS c FROM '#'",
        RuleSchemaError,
        "1:21",
        "'keys(counts)' is an array: index it with a number, not 'x'",
    ),
    (
        "SELECT ballots[device] AS c FROM '#'",
        RuleSchemaError,
        "1:16",
        "'ballots' is a scalar: it cannot be indexed",
    ),
    ("SELECT sum(counts) AS c FROM '#'", RuleSchemaError, "1:8", "unknown function 'sum'"),
    ("SELECT foo(1) AS c FROM '#'", RuleSchemaError, "1:8", "unknown function 'foo'"),
    (
        "SELECT device(1) AS c FROM '#'",
        RuleSchemaError,
        "1:8",
        "unknown function 'device' (device is a field, not a function)",
    ),
    (
        "SELECT topic FROM '#'",
        RuleSchemaError,
        "1:8",
        "unknown field 'topic' (topic is a function: topic(...))",
    ),
    (
        "SELECT sum_values() AS c FROM '#'",
        RuleSchemaError,
        "1:8",
        "sum_values() takes 1 argument, got 0 (sum_values(map))",
    ),
    (
        "SELECT registered() AS c FROM '#'",
        RuleSchemaError,
        "1:8",
        "registered() takes 1 argument, got 0",
    ),
    (
        "SELECT sum_values(ballots) AS c FROM '#'",
        RuleSchemaError,
        "1:19",
        "sum_values() needs a map, an object or an array; 'ballots' is a scalar",
    ),
    (
        "SELECT abs(counts) AS c FROM '#'",
        RuleSchemaError,
        "1:12",
        "abs() needs a string, number or boolean; 'counts' is a map of map of scalar",
    ),
    (
        "SELECT topic(0) AS c FROM '#'",
        RuleSchemaError,
        "1:14",
        "topic(n) counts levels from 1; 0 is not a level",
    ),
    (
        "SELECT topic('x') AS c FROM '#'",
        RuleSchemaError,
        "1:14",
        "topic(n) counts levels from 1; 'x' is not a level",
    ),
    (
        "SELECT device FROM 'a/#/b'",
        RuleSchemaError,
        "1:20",
        "topic filter 'a/#/b': '#' must be a whole level and the last one (level 2 is '#')",
    ),
    (
        "SELECT device FROM 'a/b+'",
        RuleSchemaError,
        "1:20",
        "topic filter 'a/b+': '+' must be a whole level (level 2 is 'b+')",
    ),
    ("SELECT device FROM ''", RuleSchemaError, "1:20", "the topic filter is empty"),
    (
        "SELECT device FROM '$share/g/a'",
        RuleSchemaError,
        "1:20",
        "topic filter '$share/g/a' is a shared subscription; a rule names the topic messages are published on (the engine decides how it subscribes)",
    ),
    (
        "SELECT device, seq AS device FROM '#'",
        RuleSchemaError,
        "1:23",
        "column 'device' is named twice (first at 1:8); give one of them another name with AS",
    ),
    (
        "FOREACH ballots AS b FROM '#'",
        RuleSchemaError,
        "1:9",
        "FOREACH needs an array or a map; 'ballots' is a scalar",
    ),
    (
        "FOREACH counts AS device FROM '#'",
        RuleSchemaError,
        "1:19",
        "the FOREACH name 'device' is also a field of the document; choose another",
    ),
    (
        "SELECT device FROM '#' WHERE totals = null",
        RuleSchemaError,
        "1:39",
        "a comparison with null is never true: write 'IS NULL'",
    ),
    (
        "SELECT device FROM '#' WHERE totals != NULL",
        RuleSchemaError,
        "1:40",
        "a comparison with null is never true: write 'IS NOT NULL'",
    ),
    (
        "SELECT counts + 1 AS c FROM '#'",
        RuleSchemaError,
        "1:8",
        "'+' needs numbers; 'counts' is a map of map of scalar",
    ),
    (
        "SELECT device FROM '#' WHERE counts > 1",
        RuleSchemaError,
        "1:30",
        "'>' needs numbers or strings; 'counts' is a map of map of scalar",
    ),
    (
        "SELECT -totals AS c FROM '#'",
        RuleSchemaError,
        "1:9",
        "unary '-' needs numbers; 'totals' is an object (ballots, counts)",
    ),
    (
        "SELECT device,\n       seq\nFROM 'edgetally/v1/+/+/batch'\nWHERE ballots > registerd(precinct)",
        RuleSchemaError,
        "4:17",
        "unknown function 'registerd' (did you mean 'registered'?)",
    ),
]


@pytest.mark.parametrize(("sql", "cls", "position", "detail"), CASES, ids=[c[0] for c in CASES])
def test_compile_error(sql: str, cls: type[RuleError], position: str, detail: str) -> None:
    with pytest.raises(RuleError) as caught:
        compile_rule("r", sql, functions={"registered": 1})
    err = caught.value
    assert type(err) is cls
    assert f"{err.line}:{err.column}" == position
    assert err.detail == detail
    assert str(err) == f"rule 'r' at {position}: {detail}"
    assert err.rule == "r" and err.sql == sql


def test_every_error_class_is_a_rule_error() -> None:
    for cls in (RuleSyntaxError, RuleSchemaError, RuleEvaluationError):
        assert issubclass(cls, RuleError)


def test_the_message_names_the_rule_and_the_excerpt_points_at_the_column() -> None:
    sql = (
        "SELECT device,\n\tseq\nFROM 'edgetally/v1/+/+/batch'\nWHERE ballots > registerd(precinct)"
    )
    with pytest.raises(RuleSchemaError) as caught:
        compile_rule("ballots over registered", sql, functions={"registered": 1})
    err = caught.value
    assert str(err).startswith("rule 'ballots over registered' at 4:17: unknown function")
    assert err.excerpt() == ("WHERE ballots > registerd(precinct)\n                ^")
    with pytest.raises(RuleSyntaxError) as caught_syntax:
        compile_rule("tabs", "SELECT device,\n\tseq x\nFROM '#'")
    assert caught_syntax.value.excerpt() == "\tseq x\n\t    ^"


def test_errors_survive_pickling() -> None:
    with pytest.raises(RuleError) as caught:
        compile_rule("r", "SELECT devcie FROM '#'")
    copy = pickle.loads(pickle.dumps(caught.value))
    assert type(copy) is RuleSchemaError
    assert (str(copy), copy.rule, copy.line, copy.column) == (str(caught.value), "r", 1, 8)


def test_an_absurdly_nested_rule_is_refused_not_crashed() -> None:
    sql = "SELECT " + "(" * 3000 + "seq" + ")" * 3000 + " AS s FROM '#'"
    with pytest.raises(RuleSyntaxError, match="nested too deeply"):
        compile_rule("deep", sql)
    sql = "SELECT " + "-" * 3000 + "seq AS s FROM '#'"
    with pytest.raises(RuleSyntaxError, match="nested too deeply"):
        compile_rule("deep", sql)


def test_a_long_but_flat_rule_compiles() -> None:
    sql = "SELECT device FROM '#' WHERE " + " OR ".join(f"seq = {n}" for n in range(300))
    assert compile_rule("flat", sql).kind == "select"
