"""FOREACH ... AS ... DO ... INCASE: one message fanned out into rows."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest

from cloud.rules import FieldSchema, compile_rule
from devices.generator import device_batches, expected_totals
from protocol import Election
from tests.cloud.rules.support import DOC, TOPIC, context, probe, rows

PER_CONTEST = (
    "FOREACH counts AS c "
    "DO topic(4) AS device, c.key AS contest, sum_values(c.value) AS votes "
    "FROM 'edgetally/v1/+/+/batch'"
)


def test_foreach_over_a_map_gives_one_row_per_contest() -> None:
    rule = compile_rule("per-contest", PER_CONTEST)
    assert rule.kind == "foreach"
    assert rule.columns == ("device", "contest", "votes")
    assert rule.evaluate(DOC, context()) == [
        {"device": "town-p1-a", "contest": "mayor", "votes": 3},
        {"device": "town-p1-a", "contest": "measure-1", "votes": 3},
    ]


def test_foreach_over_a_map_of_a_map_gives_one_row_per_choice() -> None:
    rule = compile_rule(
        "mayor",
        "FOREACH counts.mayor AS choice DO device, choice.key AS choice, choice.value AS votes "
        "FROM '#'",
    )
    assert rule.evaluate(DOC, context()) == [
        {"device": "town-p1-a", "choice": "ada", "votes": 2},
        {"device": "town-p1-a", "choice": "bo", "votes": 1},
    ]


def test_incase_keeps_only_the_items_for_which_it_is_true() -> None:
    over = (
        "FOREACH counts AS c DO device, seq, c.key AS contest, sum_values(c.value) AS votes "
        "INCASE sum_values(c.value) > ballots FROM '#'"
    )
    assert rows(over) == []
    inflated = {**DOC, "counts": {**DOC["counts"], "mayor": {"ada": 9, "bo": 1}}}
    assert rows(over, inflated) == [
        {"device": "town-p1-a", "seq": 1, "contest": "mayor", "votes": 10}
    ]


def test_where_is_checked_once_before_iterating() -> None:
    calls: list[Any] = []
    ctx = context(functions={"probe": probe(calls)})
    sql = "FOREACH counts AS c DO c.key AS k FROM '#' WHERE final AND probe(1)"
    assert rows(sql, ctx=ctx, functions={"probe": 1}) == []
    assert calls == []
    assert rows(sql, {**DOC, "final": True}, ctx=ctx, functions={"probe": 1}) == [
        {"k": "mayor"},
        {"k": "measure-1"},
    ]
    assert calls == [1]


def test_foreach_over_an_array() -> None:
    assert rows("FOREACH arr AS x DO x * 2 AS double INCASE x > 10 FROM '#'") == [
        {"double": 40},
        {"double": 60},
    ]
    assert rows("FOREACH keys(counts) AS k DO upper(k) AS name FROM '#'") == [
        {"name": "MAYOR"},
        {"name": "MEASURE-1"},
    ]


def test_without_do_an_object_item_is_the_row_and_a_scalar_is_wrapped() -> None:
    assert rows("FOREACH counts AS c FROM '#'") == [
        {"key": "mayor", "value": {"ada": 2, "bo": 1}},
        {"key": "measure-1", "value": {"no": 2, "yes": 1}},
    ]
    assert rows("FOREACH arr AS x INCASE x < 30 FROM '#'") == [{"x": 10}, {"x": 20}]
    assert compile_rule("r", "FOREACH counts AS c FROM '#'").columns is None


@pytest.mark.parametrize(
    "source", ["totals.counts", "obj.missing", "obj.a.b.c", "obj['key with-dash']", "obj.n"]
)
def test_foreach_over_nothing_iterable_gives_no_rows(source: str) -> None:
    assert rows(f"FOREACH {source} AS x DO x AS y FROM '#'") == []


def test_the_item_name_is_visible_only_in_do_and_incase() -> None:
    from cloud.rules import RuleSchemaError

    with pytest.raises(RuleSchemaError, match="unknown field 'c'"):
        compile_rule("r", "FOREACH counts AS c DO c.key AS k FROM '#' WHERE c.key = 'x'")
    with pytest.raises(RuleSchemaError, match="unknown field 'c'"):
        compile_rule("r", "FOREACH c.value AS c FROM '#'")


def test_do_columns_can_mix_item_document_and_context() -> None:
    rule = compile_rule(
        "mix",
        "FOREACH counts AS c DO election, device, seq, c.key AS contest, "
        "c.value['ada'] AS ada, concat(topic(3), ':', c.key) AS label, timestamp() AS at "
        "INCASE c.key IN ('mayor') FROM '#' WHERE NOT final",
    )
    assert rule.evaluate(DOC, context(timestamp_ms=9)) == [
        {
            "election": "demo-2026",
            "device": "town-p1-a",
            "seq": 1,
            "contest": "mayor",
            "ada": 2,
            "label": "demo-2026:mayor",
            "at": 9,
        }
    ]


def test_per_contest_rows_add_up_to_the_generators_totals(sample_election: Election) -> None:
    """Every batch of the sample election through the per-contest rule: the votes summed per
    contest are what the devices counted."""
    rule = compile_rule("per-contest", PER_CONTEST, schema=FieldSchema.batch())
    seed, batches = 7, 3
    votes: Counter[str] = Counter()
    devices: Counter[str] = Counter()
    for device in sample_election.devices:
        for body in device_batches(sample_election, seed, device, batches):
            topic = f"edgetally/v1/{body.election}/{body.device}/batch"
            for row in rule.evaluate(body.to_mapping(), context(topic=topic)):
                assert row["device"] == body.device
                votes[row["contest"]] += row["votes"]
                devices[row["device"]] += 1
    expected = expected_totals(sample_election, seed, batches)
    assert votes == {contest: sum(c.values()) for contest, c in expected.contests.items()}
    assert set(devices) == set(sample_election.devices)


def test_the_topic_helper_matches_the_documents_topic() -> None:
    assert TOPIC.split("/")[3] == DOC["device"]
