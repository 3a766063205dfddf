"""Several `edgetally cloud run --share GROUP` processes on one Mosquitto and one database.

The first test pins down what Mosquitto 2.0 does with a shared-subscription member that dies,
the fact the worker's choice of a clean session rests on (docs/cloud-scaleout.md): a
persistent member that is gone keeps being handed its share, queued for it and for nobody
else; a clean member's session ends with its connection, and the group's others get it all.
"""

from __future__ import annotations

import signal
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from sqlalchemy import func, select
from sqlalchemy.engine import Engine

from cloud import models
from cloud.ledger.ledger import Inbound
from devices.generator import expected_totals
from edgetally.brokers import BrokerProcess
from protocol import RECEIPT_FILTER, Receipt
from protocol.tls import client_context
from tests.cloud.support import SEED, Envelopes, Publisher, hash_of, raw_inbound
from tests.cloud.worker_support import Cloud, writes_held
from tests.helpers import run_cli, wait_until
from tests.support import wire

pytestmark = pytest.mark.integration

GROUP = "workers"


@pytest.fixture
def workers(
    tmp_path: Path, keys_dir: Path, processes: list[subprocess.Popen[bytes]]
) -> Callable[..., list[Cloud]]:
    """``n`` workers of one share group (ids w1, w2, ...) on ``db_url``."""

    def make(broker: BrokerProcess, n: int, db_url: str, *, debug: bool = False) -> list[Cloud]:
        return [
            Cloud(tmp_path, broker, keys_dir, processes, db_url=db_url, name=f"w{i}",
                  args=["--id", f"w{i}", "--share", GROUP], debug=debug)
            for i in range(1, n + 1)
        ]  # fmt: skip

    return make


def _interleaved(envelopes: Envelopes, devices: list[str], batches: int) -> list[Inbound]:
    """As a fleet sends: batch 1 of every device, then batch 2, ..."""
    per_device = [[envelopes.inbound(b) for b in envelopes.bodies(d, batches)] for d in devices]
    return [stream[i] for i in range(batches) for stream in per_device]


def _url(engine: Engine) -> str:
    return engine.url.render_as_string(hide_password=False)


def _exact(cloud: Cloud, envelopes: Envelopes, devices: list[str], batches: int) -> None:
    results = cloud.results()
    expected = expected_totals(envelopes.election, SEED, batches, devices).to_mapping()
    assert {k: results[k] for k in expected} == expected
    assert (results["rejections"], results["devices_final"]) == (0, len(devices))


# -- what Mosquitto does -----------------------------------------------------------------


class _Member:
    """A paho client in the share group; ``ack=False`` receives and never acknowledges."""

    def __init__(self, port: int, client_id: str, *, clean: bool, ack: bool) -> None:
        self.got: list[str] = []
        self._lock = threading.Lock()
        subscribed = threading.Event()
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=clean,
            protocol=mqtt.MQTTv311, manual_ack=True,
        )  # fmt: skip

        def on_message(client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
            with self._lock:
                self.got.append(message.payload.decode())
            if ack:
                client.ack(message.mid, message.qos)

        self.client.on_message = on_message
        self.client.on_connect = lambda c, *_: c.subscribe(f"$share/{GROUP}/probe/#", qos=1)
        self.client.on_subscribe = lambda *_: subscribed.set()
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        wait_until(subscribed.is_set, 10, f"{client_id} subscribed")

    def received(self, prefix: str) -> int:
        with self._lock:
            return sum(1 for p in self.got if p.startswith(prefix))

    def vanish(self) -> None:
        """Drop the TCP connection without DISCONNECT, as a SIGKILLed process does."""
        self.client.loop_stop()
        sock = self.client.socket()
        assert sock is not None
        sock.close()


@pytest.mark.parametrize("clean", [False, True], ids=["persistent", "clean"])
def test_mosquitto_hands_a_dead_persistent_member_its_share_and_a_clean_one_nothing(
    broker_factory: Callable[..., BrokerProcess], clean: bool
) -> None:
    # Plain: this pins down Mosquitto's own shared-subscription behaviour on probe/# topics,
    # which no identity of the locked cloud broker's ACL may touch.
    broker = broker_factory("cloud", plain=True)
    live = _Member(broker.port, "live", clean=clean, ack=True)
    dead = _Member(broker.port, "dead", clean=clean, ack=False)
    publisher = Publisher(broker.port)

    publisher.publish_all([raw_inbound(f"a{i}".encode(), "probe/x") for i in range(40)])
    wait_until(lambda: live.received("a") + dead.received("a") == 40, 10, "the first 40 shared")
    held = dead.received("a")
    assert 0 < held < 40  # round robin: each member got some
    dead.vanish()
    publisher.publish_all([raw_inbound(f"b{i}".encode(), "probe/x") for i in range(40)])

    if clean:  # the dead member's session ended with it: the live one gets every new message
        wait_until(lambda: live.received("b") == 40, 10, "all 40 new messages at the live member")
    else:  # its persistent session still takes its share of the new messages, for nobody
        wait_until(lambda: live.received("b") >= 20, 10, "the live member's share")
        assert live.received("b") < 40
    # Neither way are the messages the dead member held unacknowledged handed to the live one.
    assert live.received("a") == 40 - held
    publisher.close()
    live.client.disconnect()
    live.client.loop_stop()


# -- workers -------------------------------------------------------------------------------


class _Receipts:
    """What devices see: every receipt published (live, not only the retained one), and per
    device the highest seq, which is what a device advances to (it ignores older ones)."""

    def __init__(self, port: int, envelopes: Envelopes) -> None:
        self.best: dict[str, Receipt] = {}
        self._lock = threading.Lock()
        subscribed = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv311)
        watcher = wire.current().watcher(port)  # a monitor: reads every receipt, writes nothing
        if watcher is not None:
            self.client.tls_set_context(client_context(watcher))

        def on_message(client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
            receipt = envelopes.receipt(message.payload)  # signed by the cloud, as devices check
            with self._lock:
                current = self.best.get(receipt.device)
                if current is None or receipt.seq > current.seq:
                    self.best[receipt.device] = receipt

        self.client.on_message = on_message
        self.client.on_connect = lambda c, *_: c.subscribe(RECEIPT_FILTER, qos=1)
        self.client.on_subscribe = lambda *_: subscribed.set()
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        wait_until(subscribed.is_set, 10, "the receipt subscription")

    def snapshot(self) -> dict[str, Receipt]:
        with self._lock:
            return dict(self.best)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def test_run_refuses_a_bad_share_group_or_session(keys_dir: Path, tmp_path: Path) -> None:
    common = ["cloud", "run", "--broker", "mqtt://127.0.0.1:1", "--keys", str(keys_dir),
              "--db", f"sqlite:///{tmp_path / 'c.db'}"]  # fmt: skip
    bad_group = run_cli(*common, "--share", "a/b", check=False)
    bad_session = run_cli(*common, "--session", "sometimes", check=False)
    assert bad_group.returncode == bad_session.returncode == 1
    assert "--share 'a/b' must be 1-64 characters" in bad_group.stderr
    assert "--session must be clean or persistent" in bad_session.stderr


def test_workers_sharing_a_group_split_the_batches_and_count_each_once(
    broker_factory: Callable[..., BrokerProcess],
    workers: Callable[..., list[Cloud]],
    envelopes: Envelopes,
    engine: Engine,
) -> None:
    broker = broker_factory("cloud")
    group = workers(broker, 2, _url(engine))
    for worker in group:
        worker.start()
    devices = envelopes.devices(20)
    batches = 6
    receipts = _Receipts(broker.port, envelopes)
    publisher = Publisher(broker.port)

    publisher.publish_all(_interleaved(envelopes, devices, batches))

    total = len(devices) * batches
    wait_until(lambda: group[0].ledger() == total, 30, f"{total} batches in the ledger")
    election = envelopes.election.id
    final = {
        d: Receipt(election, d, batches, hash_of(envelopes.bodies(d, batches)[-1]))
        for d in devices
    }
    # Receipts from two workers may reach the broker out of order (the retained one can be
    # older than the newest); a device only advances, so what counts is the best it was sent.
    wait_until(lambda: receipts.snapshot() == final, 20, "every device's final receipt")
    receipts.close()
    _exact(group[0], envelopes, devices, batches)
    publisher.close()
    assert [w.terminate() for w in group] == [0, 0]
    totals = [w.stopped_totals() for w in group]
    assert all(accepted > 0 for accepted, _, _ in totals), totals  # both took a share
    assert sum(accepted for accepted, _, _ in totals) == total
    assert sum(duplicates for _, duplicates, _ in totals) == 0
    assert "clean session, shared group workers" in group[0].text()


def test_a_worker_stopping_gracefully_commits_what_it_was_handed_before_it_leaves(
    broker_factory: Callable[..., BrokerProcess],
    workers: Callable[..., list[Cloud]],
    envelopes: Envelopes,
    tmp_path: Path,
) -> None:
    broker = broker_factory("cloud")
    group = workers(broker, 2, f"sqlite:///{tmp_path / 'cloud.db'}", debug=True)
    for worker in group:
        worker.start()
    devices = list(envelopes.election.devices)
    batches = 12
    messages = _interleaved(envelopes, devices, batches)
    publisher = Publisher(broker.port)
    with writes_held(group[0].db_url):  # both receive their share; neither can commit
        publisher.publish_all(messages)
        wait_until(
            lambda: sum(w.count(r"received mid=") for w in group) >= len(messages),
            30,
            "every batch received by one worker or the other",
        )
        assert group[0].proc is not None
        group[0].proc.send_signal(signal.SIGTERM)
        wait_until(lambda: group[0].count("SIGTERM: stopping") == 1, 10, "the stop request")
    # The database is back: the stopping worker commits and acks what it holds, then leaves.
    assert group[0].proc.wait(30) == 0

    # Nothing is published again: a clean session's unacknowledged messages would be gone.
    wait_until(
        lambda: group[1].ledger() == len(messages), 30, "every batch in the ledger, no resend"
    )
    _exact(group[1], envelopes, devices, batches)
    accepted, _, _ = group[0].stopped_totals()
    assert accepted >= 500, "the stopping worker held more than one group: the drain did it"
    assert "uncommitted" not in group[0].text()
    publisher.close()
    assert group[1].terminate() == 0


@pytest.mark.parametrize("backend", [pytest.param("postgres", marks=pytest.mark.postgres)])
def test_a_sigkilled_worker_gets_no_more_work_and_resends_recover_what_it_held(
    backend: str,
    broker_factory: Callable[..., BrokerProcess],
    workers: Callable[..., list[Cloud]],
    envelopes: Envelopes,
    engine: Engine,
    keys_dir: Path,
) -> None:
    broker = broker_factory("cloud")
    group = workers(broker, 3, _url(engine))
    for worker in group:
        worker.start()
    devices = list(envelopes.election.devices)
    first, later = devices[:60], devices[60:]
    batches = 10
    stream = _interleaved(envelopes, first, batches)
    publisher = Publisher(broker.port)
    sender = threading.Thread(target=publisher.publish_all, args=(stream, 60))
    sender.start()
    wait_until(lambda: group[0].ledger() >= len(stream) // 4, 30, "a quarter in the ledger")
    group[1].kill()  # and never restarted
    sender.join(60)

    # Batches published after the kill: all of them reach the two live workers.
    publisher.publish_all(_interleaved(envelopes, later, batches))
    def held_of_later() -> int:
        with engine.connect() as conn:
            return int(
                conn.execute(
                    select(func.count())
                    .select_from(models.ledger)
                    .where(models.ledger.c.device.in_(later))
                ).scalar_one()
            )

    wait_until(
        lambda: held_of_later() == len(later) * batches, 30, "every batch published after the kill"
    )
    # Devices resend what stays unreceipted: here, everything of the first devices again.
    publisher.publish_all(stream)
    total = len(devices) * batches
    wait_until(lambda: group[0].ledger() == total, 30, f"all {total} batches in the ledger")
    _exact(group[0], envelopes, devices, batches)
    publisher.close()
    assert [group[0].terminate(), group[2].terminate()] == [0, 0]
    # Signatures, chains, finals and every stored tally re-derived from the ledger: all hold.
    audit = run_cli("cloud", "audit", "--db", _url(engine), "--keys", str(keys_dir), check=False)
    assert audit.returncode == 0, audit.stdout + audit.stderr
