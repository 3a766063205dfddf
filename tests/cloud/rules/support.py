"""A batch document and context as the engine will hand them to rules, and a shortcut."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from cloud.rules import EvalContext, FieldSchema, compile_rule

TOPIC = "edgetally/v1/demo-2026/town-p1-a/batch"

# The first batch of docs/protocol.md's test vector, plus what the engine adds.
DOC: dict[str, Any] = {
    "v": 1,
    "election": "demo-2026",
    "device": "town-p1-a",
    "precinct": "town-p1",
    "seq": 1,
    "prev": "0" * 64,
    "issued_at": "2026-11-03T20:01:00Z",
    "ballots": 3,
    "counts": {"mayor": {"ada": 2, "bo": 1}, "measure-1": {"no": 2, "yes": 1}},
    "final": False,
    "totals": None,
    "kid": "56475aa75463474c",
    "body_hash": "02c2a07aca279bb731907990882123ecfc527b1674a3823c00eef31108396aaf",
}

# For expression tests: fields of every kind, values of every type.
MIXED_SCHEMA = FieldSchema.batch().with_fields(
    {
        "i": "scalar",
        "f": "scalar",
        "s": "scalar",
        "t": "scalar",
        "n": "scalar",
        "missing": "scalar",
        "arr": FieldSchema.array("scalar"),
        "obj": "any",
    }
)
MIXED = {
    **DOC,
    "i": 7,
    "f": 2.5,
    "s": "Abc",
    "t": True,
    "n": None,
    "arr": [10, 20, 30],
    "obj": {
        "a": {"b": {"c": 1}},
        "key with-dash": "x",
        "list": [1, {"z": 2}],
        "ints": [1, {"x": None}],
        "floats": [1.0, {"x": None}],
        "bools": [True, {"x": None}],
    },
}


def context(
    topic: str = TOPIC,
    timestamp_ms: int = 1_793_822_460_000,
    clientid: str | None = "gw1",
    functions: Mapping[str, Callable[..., Any]] | None = None,
) -> EvalContext:
    return EvalContext(
        topic=topic, timestamp_ms=timestamp_ms, clientid=clientid, functions=functions or {}
    )


def rows(
    sql: str,
    doc: Mapping[str, Any] = MIXED,
    ctx: EvalContext | None = None,
    functions: Mapping[str, int | None] | None = None,
) -> list[dict[str, Any]]:
    rule = compile_rule("test", sql, schema=MIXED_SCHEMA, functions=functions)
    return rule.evaluate(doc, ctx or context())


def value(expr: str, doc: Mapping[str, Any] = MIXED, ctx: EvalContext | None = None) -> Any:
    """The value of one expression (missing: the projection left it out)."""
    result = rows(f"SELECT {expr} AS x FROM '#'", doc, ctx)
    assert len(result) == 1
    return result[0].get("x", MISSING)


def holds(condition: str, doc: Mapping[str, Any] = MIXED) -> bool:
    """Whether WHERE ``condition`` lets the message through."""
    return bool(rows(f"SELECT device FROM '#' WHERE {condition}", doc))


class _Missing:
    def __repr__(self) -> str:
        return "MISSING"


MISSING = _Missing()


def probe(calls: list[Any]) -> Callable[[Any], bool]:
    """An engine function that records its argument and returns true."""

    def record(argument: Any) -> bool:
        calls.append(argument)
        return True

    return record
