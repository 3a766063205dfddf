"""FieldSchema: the batch document's shape, extensions, and what compile_rule checks with it."""

from __future__ import annotations

import pytest

from cloud.rules import FieldSchema, RuleSchemaError, compile_rule
from tests.cloud.rules.support import DOC, context


def test_batch_schema_is_exactly_the_documents_fields() -> None:
    schema = FieldSchema.batch()
    assert list(schema) == [
        "v", "election", "device", "precinct", "seq", "prev", "issued_at", "ballots",
        "counts", "final", "totals", "kid", "body_hash",
    ]  # fmt: skip
    assert set(schema) == set(DOC)
    counts = FieldSchema.map(FieldSchema.map("scalar"))
    assert schema.get("counts") == counts
    assert schema.get("totals") == FieldSchema.object({"ballots": "scalar", "counts": counts})
    assert all(schema.get(name) == FieldSchema.scalar() for name in ("v", "seq", "final"))
    assert str(schema.get("totals")) == "object (ballots, counts)"
    assert str(counts) == "map of map of scalar"


def test_every_batch_field_compiles_and_a_misspelt_one_does_not() -> None:
    for name in FieldSchema.batch():
        compile_rule("r", f"SELECT {name} FROM '#'")
    with pytest.raises(RuleSchemaError, match="unknown field 'body_hsh'"):
        compile_rule("r", "SELECT body_hsh FROM '#'")


def test_with_fields_adds_what_the_engine_provides() -> None:
    schema = FieldSchema.batch().with_fields({"gateway": "scalar", "meta": {"received": "any"}})
    assert "gateway" in schema and len(schema) == 15
    rule = compile_rule("r", "SELECT gateway, meta.received.x.y AS y FROM '#'", schema=schema)
    assert rule.evaluate({"gateway": "gw1", "meta": {"received": {"x": {"y": 3}}}}, context()) == [
        {"gateway": "gw1", "y": 3}
    ]
    with pytest.raises(RuleSchemaError, match="unknown field 'sent' in 'meta'"):
        compile_rule("r", "SELECT meta.sent FROM '#'", schema=schema)
    assert "gateway" not in FieldSchema.batch()  # the original is unchanged


def test_any_kind_is_not_checked_below_it() -> None:
    schema = FieldSchema({"payload": "any"})
    rule = compile_rule("r", "SELECT payload.a[0].b['c-d'] AS x FROM '#'", schema=schema)
    assert rule.evaluate({"payload": {"a": [{"b": {"c-d": 1}}]}}, context()) == [{"x": 1}]


def test_array_kind_items_are_checked() -> None:
    schema = FieldSchema({"readings": FieldSchema.array({"value": "scalar"})})
    rule = compile_rule(
        "r",
        "FOREACH readings AS r DO r.value AS v FROM '#' WHERE readings[0].value > 1",
        schema=schema,
    )
    assert rule.evaluate({"readings": [{"value": 2}, {"value": 3}]}, context()) == [
        {"v": 2},
        {"v": 3},
    ]
    with pytest.raises(RuleSchemaError, match="unknown field 'valeu' in 'r'"):
        compile_rule("r", "FOREACH readings AS r DO r.valeu AS v FROM '#'", schema=schema)


def test_schemas_compare_by_content() -> None:
    assert FieldSchema.batch() == FieldSchema.batch()
    assert hash(FieldSchema.batch()) == hash(FieldSchema.batch())
    assert FieldSchema({"a": "scalar"}) != FieldSchema({"a": "any"})
    assert "counts: map of map of scalar" in repr(FieldSchema.batch())


def test_a_bad_kind_spelling_is_refused() -> None:
    with pytest.raises(ValueError, match="not a field kind"):
        FieldSchema({"a": "number"})  # type: ignore[dict-item]
