"""`edgetally cloud run` as a real process against a real Mosquitto broker; the tests whose
subject is the database (commit, crash, ack after commit) run on SQLite and on PostgreSQL."""

from __future__ import annotations

import json
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine

from devices.generator import expected_totals
from edgetally.brokers import BrokerProcess
from protocol import RECEIPT_FILTER, Receipt, receipt_topic
from tests.cloud.support import (
    SEED,
    Envelopes,
    Publisher,
    hash_of,
    retained,
    take_over_session,
)
from tests.cloud.worker_support import Cloud, writes_held
from tests.helpers import run_cli, wait_until

pytestmark = pytest.mark.integration


@pytest.fixture
def cloud_factory(
    tmp_path: Path, keys_dir: Path, processes: list[subprocess.Popen[bytes]]
) -> Callable[..., Cloud]:
    """Workers on a SQLite file in tmp_path, or on ``db_url`` (e.g. the ``engine`` fixture's)."""

    def make(broker: BrokerProcess, *, debug: bool = False, db_url: str | None = None) -> Cloud:
        return Cloud(tmp_path, broker, keys_dir, processes, debug=debug, db_url=db_url)

    return make


def _url(engine: Engine) -> str:
    return engine.url.render_as_string(hide_password=False)


def _receipts_are(port: int, expected: dict[str, Receipt], envelopes: Envelopes) -> bool:
    got = retained(port, RECEIPT_FILTER, len(expected))
    return {topic: envelopes.receipt(payload) for topic, payload in got.items()} == {
        receipt_topic(r.election, r.device): r for r in expected.values()
    }


def _final_receipts(envelopes: Envelopes, devices: list[str], batches: int) -> dict[str, Receipt]:
    election = envelopes.election.id
    return {
        d: Receipt(election, d, batches, hash_of(envelopes.bodies(d, batches)[-1])) for d in devices
    }


def test_cloud_commits_batches_publishes_retained_receipts_and_stops_cleanly(
    broker_factory: Callable[..., BrokerProcess],
    cloud_factory: Callable[..., Cloud],
    envelopes: Envelopes,
    engine: Engine,
) -> None:
    broker = broker_factory("cloud")
    cloud = cloud_factory(broker, db_url=_url(engine))
    cloud.start()
    devices = envelopes.devices(8)
    publisher = Publisher(broker.port)

    publisher.publish_all(envelopes.messages(devices, 4))

    wait_until(lambda: cloud.ledger() == 32, 20, "32 batches in the ledger")
    wait_until(
        lambda: _receipts_are(broker.port, _final_receipts(envelopes, devices, 4), envelopes),
        20,
        "final receipts",
    )
    got = json.loads(
        run_cli("--log-level", "WARNING", "cloud", "results", "--db", cloud.db_url, "--json").stdout
    )
    expected = expected_totals(envelopes.election, SEED, 4, devices).to_mapping()
    assert {k: got[k] for k in expected} == expected
    publisher.close()
    assert cloud.terminate() == 0
    assert "cloud worker stopped: 32 accepted, 0 duplicates, 0 rejected" in cloud.text()


def test_cloud_sigkilled_mid_stream_loses_nothing_and_counts_nothing_twice(
    broker_factory: Callable[..., BrokerProcess],
    cloud_factory: Callable[..., Cloud],
    envelopes: Envelopes,
    engine: Engine,
) -> None:
    broker = broker_factory("cloud")
    cloud = cloud_factory(broker, db_url=_url(engine))
    cloud.start()
    devices = list(envelopes.election.devices)
    batches = 30
    messages = envelopes.messages(devices, batches)
    total = len(messages)
    publisher = Publisher(broker.port)
    sender = threading.Thread(target=publisher.publish_all, args=(messages, 60))
    sender.start()

    wait_until(lambda: cloud.ledger() >= total // 4, 30, "a quarter of the batches in the ledger")
    cloud.kill()
    at_kill = cloud.ledger()
    sender.join(60)
    assert not sender.is_alive()
    assert at_kill < total, "the worker finished before it was killed: the test proved nothing"

    cloud.start()
    wait_until(
        lambda: cloud.ledger() == total, 60, f"all {total} batches in the ledger after the restart"
    )
    duplicates_before = cloud.results()["duplicates"]
    assert isinstance(duplicates_before, int)
    publisher.publish_all(messages)  # everything again, as devices resending would
    wait_until(
        lambda: cloud.results()["duplicates"] == duplicates_before + total,
        60,
        "every resend a duplicate",
    )

    results = cloud.results()
    expected = expected_totals(envelopes.election, SEED, batches, devices).to_mapping()
    assert {k: results[k] for k in expected} == expected
    assert (results["batches"], results["rejections"], results["devices_final"]) == (
        total,
        0,
        len(devices),
    )
    wait_until(
        lambda: _receipts_are(broker.port, _final_receipts(envelopes, devices, batches), envelopes),
        20,
        "final receipts",
    )
    publisher.close()
    assert cloud.terminate() == 0


def test_cloud_acks_only_after_commit(
    broker_factory: Callable[..., BrokerProcess],
    cloud_factory: Callable[..., Cloud],
    envelopes: Envelopes,
    engine: Engine,
) -> None:
    broker = broker_factory("cloud")
    cloud = cloud_factory(broker, debug=True, db_url=_url(engine))
    cloud.start()
    messages = envelopes.messages(envelopes.devices(10), 4)
    with writes_held(cloud.db_url):  # the worker can receive but not commit
        publisher = Publisher(broker.port)
        publisher.publish_all(messages)
        wait_until(
            lambda: cloud.count(r"received mid=") >= len(messages),
            20,
            "the worker to receive every message",
        )
        cloud.kill()
    assert cloud.ledger() == 0

    cloud.start()  # nothing is published again: only the broker still has them, unacked

    wait_until(
        lambda: cloud.ledger() == len(messages),
        30,
        "every received-but-uncommitted message redelivered",
    )
    publisher.close()
    assert cloud.terminate() == 0


def test_cloud_never_acks_a_message_of_a_previous_connection(
    broker_factory: Callable[..., BrokerProcess],
    cloud_factory: Callable[..., Cloud],
    envelopes: Envelopes,
) -> None:
    broker = broker_factory("cloud")
    cloud = cloud_factory(broker, debug=True)
    cloud.start()
    devices = envelopes.devices(5)
    messages = envelopes.messages(devices, 4)
    n = len(messages)
    publisher = Publisher(broker.port)
    with writes_held(cloud.db_url):
        publisher.publish_all(messages)
        wait_until(
            lambda: cloud.count(r"received mid=") >= n, 20, "the worker to receive every message"
        )
        publisher.close()
        # Another client takes the worker's client id: the worker's connection drops, the
        # broker keeps the session and its unacked messages, the worker reconnects.
        take_over_session(broker.port, "edgetally-cloud-cloud1")
        redelivered = r"received mid=\d+ on \S+ \(connection [2-9]\)"
        wait_until(
            lambda: cloud.count(redelivered) >= n, 30, "the redelivery on a later connection"
        )

    wait_until(
        lambda: cloud.results()["duplicates"] == n,
        30,
        "the redelivered copies counted as duplicates",
    )
    assert cloud.ledger() == n
    assert cloud.terminate() == 0
    assert f"{n} accepted, {n} duplicates, 0 rejected, {n} stale acks dropped" in cloud.text()

    # The acks made on connection 2 stuck: after a restart nothing old comes back, only the new.
    cloud.start()
    sentinel = envelopes.messages(["river-p12-a"], 1)
    publisher = Publisher(broker.port)
    publisher.publish_all(sentinel)
    wait_until(lambda: cloud.ledger() == n + 1, 20, "the sentinel batch")
    assert cloud.results()["duplicates"] == n
    publisher.close()
    assert cloud.terminate() == 0


def test_cloud_keeps_retrying_an_unreachable_broker_then_gets_ready(
    broker_factory: Callable[..., BrokerProcess],
    cloud_factory: Callable[..., Cloud],
    envelopes: Envelopes,
) -> None:
    broker = broker_factory("cloud")
    broker.stop()
    cloud = cloud_factory(broker)
    cloud.start(wait=False)

    wait_until(
        lambda: cloud.count("cannot reach broker") >= 2, 20, "two failed connection attempts"
    )
    assert cloud.proc is not None and cloud.proc.poll() is None
    assert not cloud.ready.exists()

    broker.start()
    wait_until(cloud.ready.exists, 20, "the ready file once the broker is up")
    publisher = Publisher(broker.port)
    publisher.publish_all(envelopes.messages(["mesa-p09-a"], 2))
    wait_until(lambda: cloud.ledger() == 2, 20, "both batches in the ledger")
    publisher.close()
    assert cloud.terminate() == 0
