"""Each action on a real database (SQLite file and PostgreSQL) and a real broker; the error
action, the dead letters, and SAVEPOINT isolation: a failing action never loses its batch."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Iterator
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from sqlalchemy.engine import Engine

from cloud import models
from cloud._exceptions import DatabaseError
from cloud.engine.actions import Publish
from cloud.ledger.chain import Verdict
from cloud.ledger.ledger import Ledger
from cloud.results.results import load_results
from edgetally.brokers import BrokerProcess
from protocol import Registry
from tests.cloud.engine_support import (
    BATCHES,
    alerts,
    crafted,
    dead_letters,
    refusing,
    rows,
    rules,
    rules_engine,
)
from tests.cloud.support import Envelopes, ledger_rows
from tests.helpers import wait_until

DEVICE = "harbor-p02-b"


class Subscriber:
    """A real MQTT client collecting what arrives on a filter."""

    def __init__(self, port: int, topic_filter: str) -> None:
        self.got: list[tuple[str, bytes, int, bool]] = []
        self._lock = threading.Lock()
        subscribed = threading.Event()
        client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv311)
        client.on_connect = lambda c, *a: c.subscribe(topic_filter, qos=1)
        client.on_subscribe = lambda *a: subscribed.set()
        client.on_message = self._on_message
        client.connect("127.0.0.1", port)
        client.loop_start()
        self._client = client
        wait_until(subscribed.is_set, 10, f"the subscription to {topic_filter}")

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.got.append((message.topic, bytes(message.payload), message.qos, message.retain))

    def messages(self) -> list[tuple[str, bytes, int, bool]]:
        with self._lock:
            return list(self.got)

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()


@pytest.fixture
def broker(broker_factory: Callable[..., BrokerProcess]) -> BrokerProcess:
    """Plain: a republish rule writes to a topic of its own (results/...), and the locked cloud
    broker's ACL (edgetally/acl.py) grants the cloud no topic outside EdgeTally's receipts and
    commands; on a locked broker the action's output is dropped (an open product question)."""
    return broker_factory("cloud", plain=True)


@pytest.fixture
def publisher(broker: BrokerProcess) -> Iterator[Publish]:
    """What the worker hands the engine: publish on its connected paho client, return rc."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv311)
    client.connect("127.0.0.1", broker.port)
    client.loop_start()
    yield lambda topic, payload, qos: client.publish(topic, payload, qos=qos).rc
    client.disconnect()
    client.loop_stop()


def _not_connected() -> Publish:
    """A real paho client that never connected: every publish returns an error rc."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv311)
    return lambda topic, payload, qos: client.publish(topic, payload, qos=qos).rc


def _committed(engine: Engine, batches: int) -> None:
    """The batches and their tallies are in: the failing action did not take them along."""
    assert ledger_rows(engine) == batches
    assert load_results(engine).to_mapping()["batches"] == batches


def test_alert_stores_its_row_and_logs_the_device_and_seq(
    ledger: Ledger,
    engine: Engine,
    registry: Registry,
    envelopes: Envelopes,
    caplog: pytest.LogCaptureFixture,
) -> None:
    config = rules(
        f"""
  - name: big
    sql: SELECT device, seq, ballots FROM {BATCHES} WHERE ballots >= 2
    actions: [{{alert: {{severity: info, message: "${{device}}: ${{ballots}} ballots"}}}}]
"""
    )
    first = crafted(envelopes, DEVICE, ballots=2)
    second = crafted(envelopes, DEVICE, seq=2, prev=first, ballots=1)
    rules_run = rules_engine(ledger, registry, engine, config)

    with caplog.at_level(logging.WARNING, logger="cloud.engine.engine"):
        rules_run.record([envelopes.inbound(first), envelopes.inbound(second)])

    [alert] = alerts(engine)
    assert {k: alert[k] for k in ("rule", "severity", "message", "election", "device", "seq")} == {
        "rule": "big",
        "severity": "info",
        "message": f"{DEVICE}: 2 ballots",
        "election": envelopes.election.id,
        "device": DEVICE,
        "seq": 1,
    }
    assert alert["row"] == {"device": DEVICE, "seq": 1, "ballots": 2}
    assert alert["topic"] == f"edgetally/v1/{envelopes.election.id}/{DEVICE}/batch"
    assert alert["raised_at"].tzinfo is not None
    [logged] = [r for r in caplog.records if r.name == "cloud.engine.engine"]
    assert logged.levelno == logging.WARNING
    assert f"alert big (info) device={DEVICE} seq=1: {DEVICE}: 2 ballots" == logged.getMessage()
    assert rules_run.stats.alerts == 1


def test_store_keeps_each_row_in_its_named_table_once_per_outcome(
    ledger: Ledger, engine: Engine, registry: Registry, envelopes: Envelopes
) -> None:
    config = rules(
        f"""
  - name: per-contest
    sql: >-
      FOREACH counts AS c DO seq, c.key AS contest, sum_values(c.value) AS votes
      FROM {BATCHES} WHERE ledger_outcome() = 'accepted'
    actions: [{{store: {{table: contest_votes}}}}]
  - name: finals
    sql: SELECT device, totals.ballots AS ballots, ledger_outcome() AS outcome FROM {BATCHES}
      WHERE final
    actions: [{{store: {{table: finals}}}}]
"""
    )
    bodies = envelopes.bodies(DEVICE, 2)
    rules_run = rules_engine(ledger, registry, engine, config)

    for _ in range(3):  # accepted, then duplicate, then duplicate again (the same rows)
        rules_run.record([envelopes.inbound(b) for b in bodies])

    contest_rows = rows(engine, models.stored_rows, table_name="contest_votes")
    assert [(r["seq"], r["row"]["contest"]) for r in contest_rows] == [
        (seq, contest) for seq in (1, 2) for contest in ("governor", "measure-7", "senate")
    ]
    assert contest_rows[0]["row"]["votes"] == sum(bodies[0].counts["governor"].values())
    assert all(r["rule"] == "per-contest" and r["device"] == DEVICE for r in contest_rows)
    finals = rows(engine, models.stored_rows, table_name="finals")
    ballots = bodies[1].totals.ballots  # type: ignore[union-attr]
    assert [f["row"] for f in finals] == [
        {"device": DEVICE, "ballots": ballots, "outcome": "accepted"},
        {"device": DEVICE, "ballots": ballots, "outcome": "duplicate"},
    ]
    assert rules_run.stats.stored == 8


@pytest.mark.integration
def test_republish_publishes_the_row_as_json_after_the_commit(
    ledger: Ledger,
    engine: Engine,
    registry: Registry,
    envelopes: Envelopes,
    broker: BrokerProcess,
    publisher: Publish,
) -> None:
    config = rules(
        f"""
  - name: out
    sql: SELECT device, seq, ballots FROM {BATCHES}
    actions: [{{republish: {{topic: "results/${{device}}/seq-${{seq}}", qos: 1}}}}]
"""
    )
    subscriber = Subscriber(broker.port, "results/#")
    batch = crafted(envelopes, DEVICE, ballots=3)
    rules_run = rules_engine(ledger, registry, engine, config)

    result = rules_run.record([envelopes.inbound(batch)])
    assert subscriber.messages() == []  # nothing leaves before the commit: record() committed,
    rules_run.after_commit(result, publisher)  # the worker publishes right after

    [(topic, payload, qos, retain)] = wait_until(subscriber.messages, 10, "the republished row")
    subscriber.close()
    assert (topic, json.loads(payload), qos, retain) == (
        f"results/{DEVICE}/seq-1",
        {"device": DEVICE, "seq": 1, "ballots": 3},
        1,
        False,
    )
    assert rules_run.stats.republished == 1


def test_a_failing_republish_goes_to_the_error_action_with_the_error(
    ledger: Ledger, engine: Engine, registry: Registry, envelopes: Envelopes
) -> None:
    config = rules(
        f"""
  - name: out
    sql: SELECT device, seq FROM {BATCHES}
    actions: [{{republish: {{topic: "results/${{device}}"}}}}]
    error_action: {{store: {{table: unsent}}}}
"""
    )
    rules_run = rules_engine(ledger, registry, engine, config)
    result = rules_run.record([envelopes.inbound(crafted(envelopes, DEVICE))])

    rules_run.after_commit(result, _not_connected())

    [unsent] = rows(engine, models.stored_rows, table_name="unsent")
    assert unsent["row"] == {
        "device": DEVICE,
        "seq": 1,
        "error": "publish failed: The client is not currently connected.",
        "rule": "out",
        "action": "republish",
    }
    assert dead_letters(engine) == []
    _committed(engine, 1)


def test_a_republish_with_no_error_action_goes_to_the_dead_letters(
    ledger: Ledger, engine: Engine, registry: Registry, envelopes: Envelopes
) -> None:
    config = rules(
        f"""
  - name: out
    sql: SELECT device, seq, concat(device, '/#') AS where_to FROM {BATCHES}
    actions:
      - republish: {{topic: "results/${{where_to}}"}}
      - republish: {{topic: "results/${{device}}"}}
"""
    )
    rules_run = rules_engine(ledger, registry, engine, config)
    result = rules_run.record([envelopes.inbound(crafted(envelopes, DEVICE))])
    rules_run.after_commit(result, None)  # the worker is between connections

    letters = dead_letters(engine)
    assert [(d["rule"], d["action"], d["device"], d["seq"]) for d in letters] == [
        ("out", "republish (action 1)", DEVICE, 1),  # refused in the transaction
        ("out", "republish (action 2)", DEVICE, 1),  # failed after the commit
    ]
    assert letters[0]["error"] == (
        f"republish topic 'results/{DEVICE}/#': it contains a wildcard ('+' or '#')"
    )
    assert letters[1]["error"] == "not connected to the broker"
    assert letters[0]["row"]["where_to"] == f"{DEVICE}/#"
    assert rules_run.stats.dead_letters == 2
    _committed(engine, 1)


def test_a_store_the_database_refuses_rolls_back_alone_and_goes_to_the_error_action(
    ledger: Ledger, engine: Engine, registry: Registry, envelopes: Envelopes
) -> None:
    config = rules(
        f"""
  - name: keep
    sql: SELECT device, seq, ballots FROM {BATCHES}
    actions:
      - store: {{table: refused}}
      - store: {{table: accepted}}
    error_action: {{alert: {{severity: critical, message: "${{rule}} ${{action}}: ${{error}}"}}}}
"""
    )
    bodies = envelopes.bodies(DEVICE, 3)
    rules_run = rules_engine(ledger, registry, engine, config)

    with refusing(engine, "stored_rows", "table_name", "refused"):
        result = rules_run.record([envelopes.inbound(b) for b in bodies])

    assert result.count(Verdict.ACCEPTED) == 3
    _committed(engine, 3)
    assert [r["seq"] for r in rows(engine, models.stored_rows, table_name="accepted")] == [1, 2, 3]
    assert rows(engine, models.stored_rows, table_name="refused") == []
    found = alerts(engine)
    assert [a["seq"] for a in found] == [1, 2, 3]
    assert all(a["message"].startswith("keep store: stored_rows: ") for a in found)
    assert all("refused by the test" in a["message"] for a in found)
    assert rules_run.stats.failed_actions == 3


def test_a_failing_alert_template_goes_to_the_dead_letters_and_the_batch_commits(
    ledger: Ledger, engine: Engine, registry: Registry, envelopes: Envelopes
) -> None:
    config = rules(
        f"""
  - name: margin
    sql: >-
      SELECT device, seq, counts['measure-7'].yes - counts['measure-7'].no AS margin
      FROM {BATCHES}
    actions: [{{alert: {{message: "margin ${{margin}} on ${{device}}"}}}}]
"""
    )
    with_measure = crafted(envelopes, DEVICE, counts={"measure-7": {"yes": 1, "no": 0}})
    without = crafted(envelopes, DEVICE, seq=2, prev=with_measure, counts={"governor": {"chen": 1}})
    rules_run = rules_engine(ledger, registry, engine, config)

    rules_run.record([envelopes.inbound(with_measure), envelopes.inbound(without)])

    _committed(engine, 2)
    assert [a["message"] for a in alerts(engine)] == [f"margin 1 on {DEVICE}"]
    [letter] = dead_letters(engine)
    assert (letter["rule"], letter["action"], letter["seq"]) == ("margin", "alert (action 1)", 2)
    assert (
        letter["error"] == "template 'margin ${margin} on ${device}': the row has no field 'margin'"
    )
    assert letter["row"] == {"device": DEVICE, "seq": 2}


def test_when_the_error_action_is_refused_too_the_dead_letter_names_both_errors(
    ledger: Ledger, engine: Engine, registry: Registry, envelopes: Envelopes
) -> None:
    config = rules(
        f"""
  - name: keep
    sql: SELECT device, seq FROM {BATCHES}
    actions: [{{store: {{table: refused}}}}]
    error_action: {{store: {{table: refused}}}}
"""
    )
    rules_run = rules_engine(ledger, registry, engine, config)

    with refusing(engine, "stored_rows", "table_name", "refused"):
        rules_run.record([envelopes.inbound(crafted(envelopes, DEVICE))])

    _committed(engine, 1)
    [letter] = dead_letters(engine)
    assert letter["action"] == "store (action 1)"
    assert letter["error"].startswith("stored_rows: ")
    assert "; then error_action store: stored_rows: " in letter["error"]
    assert letter["row"] == {"device": DEVICE, "seq": 1}


def test_a_refused_dead_letter_is_logged_and_the_batch_still_commits(
    ledger: Ledger,
    engine: Engine,
    registry: Registry,
    envelopes: Envelopes,
    caplog: pytest.LogCaptureFixture,
) -> None:
    config = rules(
        f"""
  - name: keep
    sql: SELECT device, seq FROM {BATCHES}
    actions: [{{store: {{table: refused}}}}]
"""
    )
    rules_run = rules_engine(ledger, registry, engine, config)

    with (
        refusing(engine, "stored_rows", "table_name", "refused"),
        refusing(engine, "dead_letters", "rule", "keep"),
        caplog.at_level(logging.ERROR, logger="cloud.engine.engine"),
    ):
        rules_run.record([envelopes.inbound(crafted(envelopes, DEVICE))])

    _committed(engine, 1)
    assert dead_letters(engine) == []
    [logged] = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert f"rule keep store (action 1) device={DEVICE} seq=1 failed" in logged
    assert "its dead letter was refused" in logged
    assert rules_run.stats.lost == 1


def test_a_database_failure_of_the_ledger_fails_the_group_and_writes_no_alert(
    ledger: Ledger, engine: Engine, registry: Registry, envelopes: Envelopes
) -> None:
    config = rules(
        f"""
  - name: every
    sql: SELECT device, seq FROM {BATCHES}
    actions: [{{alert: {{message: "${{device}}"}}}}]
"""
    )
    rules_run = rules_engine(ledger, registry, engine, config)

    with refusing(engine, "ledger", "device", DEVICE), pytest.raises(DatabaseError):
        rules_run.record([envelopes.inbound(crafted(envelopes, DEVICE))])

    assert ledger_rows(engine) == 0
    assert alerts(engine) == []
    assert rules_run.stats.messages == 0  # only committed groups count

    rules_run.record([envelopes.inbound(crafted(envelopes, DEVICE))])  # the retry commits
    assert [a["seq"] for a in alerts(engine)] == [1]


def test_each_failing_action_of_a_row_reaches_the_error_action(
    ledger: Ledger, engine: Engine, registry: Registry, envelopes: Envelopes
) -> None:
    config = rules(
        f"""
  - name: measure
    sql: SELECT device, seq, counts['measure-7'].yes AS yes FROM {BATCHES}
    actions:
      - alert: {{message: "yes ${{yes}}"}}
      - republish: {{topic: "measure/${{yes}}"}}
    error_action: {{store: {{table: measure-failures}}}}
"""
    )
    rules_run = rules_engine(ledger, registry, engine, config)

    rules_run.record(
        [envelopes.inbound(crafted(envelopes, DEVICE, counts={"governor": {"chen": 1}}))]
    )

    failures = rows(engine, models.stored_rows, table_name="measure-failures")
    assert [(f["row"]["action"], f["row"]["error"]) for f in failures] == [
        ("alert", "template 'yes ${yes}': the row has no field 'yes'"),
        ("republish", "template 'measure/${yes}': the row has no field 'yes'"),
    ]
    assert dead_letters(engine) == [] and alerts(engine) == []
    _committed(engine, 1)
