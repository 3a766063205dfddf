"""The rules engine around the ledger, on a real database (SQLite file and PostgreSQL): the
default rules on an honest fleet and on crafted anomalies signed with the devices' real keys,
exactly-once alerts, messages no rule selects, and the engine's functions."""

from __future__ import annotations

import dataclasses
import logging
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy.engine import Engine

from cloud import models
from cloud.engine.stats import RateWindows
from cloud.ledger.chain import Verdict
from cloud.ledger.ledger import Ledger
from cloud.results.results import load_results
from devices.generator import expected_totals
from protocol import Envelope, Registry
from tests.cloud.engine_support import (
    BATCHES,
    alerts,
    at,
    crafted,
    dead_letters,
    rows,
    rules,
    rules_engine,
)
from tests.cloud.support import SEED, Envelopes, ledger_rows

T0 = datetime(2026, 11, 3, 20, 0, tzinfo=UTC)


def _by_rule(engine: Engine) -> dict[str, list[dict[str, object]]]:
    found: dict[str, list[dict[str, object]]] = {}
    for alert in alerts(engine):
        found.setdefault(str(alert["rule"]), []).append(alert)
    return found


def test_default_rules_reproduce_an_honest_fleets_totals_and_raise_no_alert(
    ledger: Ledger, engine: Engine, registry: Registry, envelopes: Envelopes
) -> None:
    rules_run = rules_engine(ledger, registry, engine)
    devices = list(envelopes.election.devices)
    messages = envelopes.messages(devices, 4)

    for start in range(0, len(messages), 150):
        rules_run.record(messages[start : start + 150])
    for start in range(0, len(messages), 150):  # everything delivered a second time
        rules_run.record(messages[start : start + 150])

    expected = expected_totals(envelopes.election, SEED, 4, devices).to_mapping()
    got = load_results(engine).to_mapping()
    assert {k: got[k] for k in expected} == expected
    assert got["duplicates"] == len(messages)
    assert alerts(engine) == []
    assert dead_letters(engine) == []
    assert rules_run.stats.unmatched == 0
    assert rules_run.stats.ledgered == 2 * len(messages)


def test_ballots_above_registered_alert_once_on_the_batch_that_crosses(
    ledger: Ledger, engine: Engine, registry: Registry, envelopes: Envelopes
) -> None:
    device = "harbor-p01-a"  # the only device of harbor-p01
    registered = envelopes.election.units["harbor-p01"].registered
    first = crafted(envelopes, device, seq=1, ballots=registered)  # at the limit: no alert
    second = crafted(envelopes, device, seq=2, prev=first, ballots=1)  # crosses it
    third = crafted(envelopes, device, seq=3, prev=second, ballots=1)  # already above
    rules_run = rules_engine(ledger, registry, engine)

    rules_run.record([envelopes.inbound(first)])
    rules_run.record([envelopes.inbound(second), envelopes.inbound(third)])

    [alert] = alerts(engine)
    assert (alert["rule"], alert["severity"], alert["device"], alert["seq"]) == (
        "ballots-above-registered",
        "critical",
        device,
        2,
    )
    assert alert["row"] == {
        "device": device,
        "precinct": "harbor-p01",
        "seq": 2,
        "ballots": 1,
        "device_ballots": registered + 1,
        "registered": registered,
    }
    assert f"{registered + 1} ballots, above the {registered} registered" in str(alert["message"])
    assert load_results(engine).to_mapping()["ballots"] == registered + 2  # still counted


def test_contest_total_above_ballots_alerts_once_per_contest(
    ledger: Ledger, engine: Engine, registry: Registry, envelopes: Envelopes
) -> None:
    device = "harbor-p02-a"
    counts = {
        "governor": {"alvarez": 3},
        "senate": {"okafor": 2, "novak": 3},
        "measure-7": {"yes": 2},
    }
    batch = crafted(envelopes, device, ballots=2, counts=counts)
    rules_run = rules_engine(ledger, registry, engine)

    result = rules_run.record([envelopes.inbound(batch)])

    assert result.count(Verdict.ACCEPTED) == 1
    found = _by_rule(engine)
    assert list(found) == ["contest-above-ballots"]
    assert [(a["row"]["contest"], a["row"]["votes"]) for a in found["contest-above-ballots"]] == [  # type: ignore[index]
        ("governor", 3),
        ("senate", 5),
    ]
    assert {a["seq"] for a in found["contest-above-ballots"]} == {1}


def test_a_batch_after_the_final_one_alerts_once_even_when_delivered_again(
    ledger: Ledger, engine: Engine, registry: Registry, envelopes: Envelopes
) -> None:
    device = "harbor-p03-a"
    final = crafted(envelopes, device, seq=1, ballots=5, final=True)
    late = crafted(envelopes, device, seq=2, prev=final, ballots=1)
    rules_run = rules_engine(ledger, registry, engine)
    rules_run.record([envelopes.inbound(final)])

    for _ in range(3):
        [outcome] = rules_run.record([envelopes.inbound(late)]).ledger.outcomes  # type: ignore[union-attr]
        assert outcome.reason == "after_final"

    [alert] = alerts(engine)
    assert (alert["rule"], alert["device"], alert["seq"], alert["message"]) == (
        "after-final",
        device,
        2,
        f"device {device} sent seq 2 after its final batch",
    )
    assert len(rows(engine, models.rejections)) == 3  # the ledger keeps every rejection


def test_a_spike_in_one_devices_rate_alerts_once_when_it_crosses_the_threshold(
    ledger: Ledger, engine: Engine, registry: Registry, envelopes: Envelopes
) -> None:
    spiking, steady = "harbor-p04-a", "harbor-p05-a"
    burst = [at(envelopes.inbound(b), T0) for b in envelopes.bodies(spiking, 130)]
    # 130 batches too, but 5 a second: 50 in any 10 seconds
    paced = [
        at(envelopes.inbound(b), T0 + timedelta(seconds=i / 5))
        for i, b in enumerate(envelopes.bodies(steady, 130))
    ]
    rules_run = rules_engine(ledger, registry, engine)

    for start in range(0, 130, 40):  # across groups: the window remembers committed ones
        rules_run.record(burst[start : start + 40] + paced[start : start + 40])

    [alert] = alerts(engine)
    assert (alert["rule"], alert["device"], alert["seq"]) == ("rate-spike", spiking, 101)
    assert alert["row"]["batches_in_10s"] == 101  # type: ignore[index]


def test_the_engines_functions_see_the_ledgers_outcome_for_each_message(
    ledger: Ledger, engine: Engine, registry: Registry, envelopes: Envelopes
) -> None:
    config = rules(
        f"""
  - name: seen
    sql: >-
      SELECT seq, ledger_outcome() AS outcome, ledger_reason() AS reason,
             device_ballots() AS total, registered(precinct) AS registered,
             registered('no-such-precinct') AS nowhere, device_rate(60) AS rate
      FROM {BATCHES}
    actions: [{{store: {{table: seen}}}}]
"""
    )
    device = "harbor-p06-a"
    bodies = envelopes.bodies(device, 3)
    broken = dataclasses.replace(bodies[2], prev="f" * 64)
    rules_run = rules_engine(ledger, registry, engine, config)

    rules_run.record([envelopes.inbound(bodies[0]), envelopes.inbound(bodies[0])])
    rules_run.record([envelopes.inbound(bodies[1]), envelopes.inbound(broken)])

    registered = envelopes.election.units["harbor-p06"].registered
    first, second = bodies[0].ballots, bodies[0].ballots + bodies[1].ballots
    seen = [r["row"] for r in rows(engine, models.stored_rows, table_name="seen")]
    assert seen == [
        {"seq": 1, "outcome": "accepted", "reason": None, "total": first, "registered": registered, "nowhere": None, "rate": 1},
        {"seq": 1, "outcome": "duplicate", "reason": None, "total": first, "registered": registered, "nowhere": None, "rate": 2},
        {"seq": 2, "outcome": "accepted", "reason": None, "total": second, "registered": registered, "nowhere": None, "rate": 3},
        {"seq": 3, "outcome": "rejected", "reason": "broken_chain", "total": second, "registered": registered, "nowhere": None, "rate": 4},
    ]  # fmt: skip


def test_without_a_ledger_action_the_outcome_functions_are_null(
    ledger: Ledger, engine: Engine, registry: Registry, envelopes: Envelopes
) -> None:
    config = rules(
        f"""
  - name: watch
    sql: SELECT seq, ledger_outcome() AS outcome, device_ballots() AS total FROM {BATCHES}
    actions: [{{store: {{table: watch}}}}]
""",
        with_ledger=False,
    )
    rules_run = rules_engine(ledger, registry, engine, config)

    result = rules_run.record([envelopes.inbound(envelopes.bodies("harbor-p07-a", 1)[0])])

    assert result.ledger is None
    assert [r["row"] for r in rows(engine, models.stored_rows)] == [
        {"seq": 1, "outcome": None, "total": None}
    ]
    assert ledger_rows(engine) == 0


def test_a_message_no_rule_selects_is_counted_logged_at_debug_and_not_stored(
    ledger: Ledger,
    engine: Engine,
    registry: Registry,
    envelopes: Envelopes,
    caplog: pytest.LogCaptureFixture,
) -> None:
    config = rules(
        """
  - name: ledger-one-device
    sql: SELECT * FROM 'edgetally/v1/+/harbor-p01-a/batch' WHERE ballots > 0
    actions: [{ledger: {}}]
  - name: watch-finals
    sql: SELECT device FROM 'edgetally/v1/+/+/batch' WHERE final
    actions: [{store: {table: finals}}]
""",
        with_ledger=False,
    )
    kept = envelopes.bodies("harbor-p01-a", 3)
    other = envelopes.bodies("harbor-p02-a", 2)  # matched by watch-finals only; seq 1 not final
    empty = crafted(envelopes, "harbor-p01-a", seq=3, prev=kept[1], ballots=0, counts={})
    forged_body = envelopes.bodies("harbor-p03-a", 1)[0]
    key = envelopes.key("harbor-p03-a")
    forged = Envelope(body=forged_body.to_bytes(), sig=key.sign(b"other"), kid=key.kid)
    rules_run = rules_engine(ledger, registry, engine, config)

    with caplog.at_level(logging.DEBUG, logger="cloud.engine.engine"):
        rules_run.record(
            [
                envelopes.inbound(kept[0]),
                envelopes.inbound(kept[1]),
                envelopes.inbound(other[0]),  # no rule gives a row
                envelopes.inbound(empty),  # WHERE ballots > 0 is false: not ledgered
                envelopes.inbound(other[1]),  # final: stored by watch-finals, not ledgered
                dataclasses.replace(envelopes.inbound(forged_body), payload=forged.to_bytes()),
            ]
        )

    assert rules_run.stats.messages == 6
    assert rules_run.stats.unmatched == 3  # other[0], empty, and the forged one (no ledger rule)
    assert ledger_rows(engine) == 2
    assert rows(engine, models.rejections) == []
    assert [r["device"] for r in rows(engine, models.stored_rows)] == ["harbor-p02-a"]
    logged = [r.getMessage() for r in caplog.records if "no rule selects" in r.getMessage()]
    assert len(logged) == 3
    assert all(
        r.levelno == logging.DEBUG for r in caplog.records if "no rule selects" in r.getMessage()
    )
    assert any("device=harbor-p03-a seq=1, failed verification" in m for m in logged)


def test_a_message_that_fails_verification_is_seen_only_by_the_ledger(
    ledger: Ledger, engine: Engine, registry: Registry, envelopes: Envelopes
) -> None:
    config = rules(
        f"""
  - name: everything
    sql: SELECT * FROM {BATCHES}
    actions: [{{alert: {{message: "seen ${{device}}"}}}}]
"""
    )
    body = envelopes.bodies("harbor-p03-a", 1)[0]
    key = envelopes.key("harbor-p03-a")
    forged = Envelope(body=body.to_bytes(), sig=key.sign(b"other"), kid=key.kid).to_bytes()
    rules_run = rules_engine(ledger, registry, engine, config)

    [outcome] = rules_run.record(
        [dataclasses.replace(envelopes.inbound(body), payload=forged)]
    ).ledger.outcomes  # type: ignore[union-attr]

    assert (outcome.verdict, outcome.reason) == (Verdict.REJECTED, "bad_signature")
    assert [r["reason"] for r in rows(engine, models.rejections)] == ["bad_signature"]
    assert alerts(engine) == []


def test_rate_windows_count_the_last_n_seconds_and_forget_older_ones() -> None:
    windows = RateWindows(10)
    windows.add("d", [100, 100, 101, 105])
    assert windows.count("d", 105, 10) == 4
    assert windows.count("d", 105, 5) == 2  # 101 and 105: (100, 105]
    assert windows.count("d", 110, 10) == 2  # (100, 110]
    assert windows.count("other", 105, 10) == 0
    windows.add("d", [120])  # everything at or before 110 is forgotten
    assert windows.count("d", 120, 10) == 1
    assert windows.count("d", 120, 3600) == 1
