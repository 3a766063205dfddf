"""Receipt coalescing: at most one receipt per device per interval, always the latest.

The rules are checked on :class:`cloud.worker.receipts.ReceiptCoalescer` and
:class:`cloud.worker.receipts.ReceiptSender` with explicit clock values (no sleeping), and end to end
with a real Mosquitto and a real `cloud run`: a device's batches committed one by one produce
fewer receipts than batches, the last naming the final seq and its hash.
"""

from __future__ import annotations

import logging
import re
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import paho.mqtt.client as mqtt
import pytest

from cloud.worker.receipts import ReceiptCoalescer, ReceiptSender
from edgetally.brokers import BrokerProcess
from protocol import RECEIPT_FILTER, Receipt, SigningKey, parse_envelope, receipt_topic
from protocol.signed import open_receipt
from tests.cloud.support import Envelopes, Publisher, hash_of
from tests.cloud.worker_support import Cloud
from tests.gateway.support import Collector
from tests.helpers import run_cli, wait_until

E = "sample-2026"
KEY = SigningKey.from_seed(bytes(range(32)))  # the cloud's, for these unit tests


def _open(payload: bytes) -> Receipt:
    """A receipt the sender published: signed with ``KEY`` (raises ProtocolError otherwise)."""
    named = Receipt.parse(parse_envelope(payload).body)
    return open_receipt(payload, KEY.public, election=named.election, device=named.device)


def _r(device: str, seq: int) -> Receipt:
    return Receipt(E, device, seq, f"{seq:064x}")


def _seqs(receipts: list[Receipt]) -> list[tuple[str, int]]:
    return [(r.device, r.seq) for r in receipts]


# -- the coalescing rules ----------------------------------------------------------------------


def test_first_receipt_goes_out_at_once_then_at_most_one_per_device_per_interval() -> None:
    c = ReceiptCoalescer(interval_s=0.25)
    c.offer([_r("a", 1)])
    assert _seqs(c.due(10.0)) == [("a", 1)]  # nothing published for "a" yet: at once
    c.offer([_r("a", 2)])
    assert c.due(10.0) == []  # "a" just had one
    assert c.due(10.24) == []  # still within the interval
    assert _seqs(c.due(10.25)) == [("a", 2)]  # due: exactly one interval after the last
    c.offer([_r("a", 3)])
    assert c.due(10.3) == []
    assert _seqs(c.due(10.5)) == [("a", 3)]
    assert c.due(99.0) == []  # nothing held: nothing to publish


def test_the_latest_held_receipt_wins_and_an_older_seq_never_follows_a_newer() -> None:
    c = ReceiptCoalescer(interval_s=1.0)
    c.offer([_r("a", 1)])
    assert _seqs(c.due(0.0)) == [("a", 1)]
    for seq in (2, 3, 4):  # three commits within the interval
        c.offer([_r("a", seq)])
    c.offer([_r("a", 3)])  # an older one after the newer: the newer stays held
    assert c.held == 1
    assert _seqs(c.due(1.0)) == [("a", 4)]
    assert c.superseded == 3  # 2, 3 replaced; the late 3 dropped
    c.offer([_r("a", 2)])  # older than what already went out: never published
    assert c.held == 0 and c.due(5.0) == []
    assert c.superseded == 4
    c.offer([_r("a", 4)])  # the same seq again (a duplicate commit): published again, in turn
    assert _seqs(c.due(5.0)) == [("a", 4)]


def test_a_held_receipt_goes_out_when_due_and_devices_do_not_wait_for_each_other() -> None:
    c = ReceiptCoalescer(interval_s=0.5)
    c.offer([_r("a", 1), _r("b", 1)])
    assert _seqs(c.due(0.0)) == [("a", 1), ("b", 1)]
    c.offer([_r("a", 2)])
    assert c.due(0.2) == []
    c.offer([_r("b", 2), _r("c", 1)])  # "c" is new: at once; "b" waits for its own interval
    assert _seqs(c.due(0.3)) == [("c", 1)]
    assert _seqs(c.due(0.5)) == [("a", 2), ("b", 2)]
    c.offer([_r("c", 2)])
    assert c.due(0.7) == []
    assert _seqs(c.due(0.8)) == [("c", 2)]  # 0.5 after c's own last publish at 0.3


def test_everything_at_stop_publishes_every_held_receipt_once() -> None:
    c = ReceiptCoalescer(interval_s=10.0)
    c.offer([_r("a", 1), _r("b", 1)])
    assert len(c.due(0.0)) == 2
    c.offer([_r("a", 5), _r("b", 2), _r("c", 9)])
    assert _seqs(c.due(1.0)) == [("c", 9)]  # the only one due
    c.offer([_r("b", 3)])
    assert sorted(_seqs(c.due(2.0, everything=True))) == [("a", 5), ("b", 3)]
    assert c.held == 0 and c.due(2.0, everything=True) == []


def test_zero_interval_publishes_every_receipt_at_once() -> None:
    c = ReceiptCoalescer(interval_s=0.0)
    for seq in (1, 2, 3):
        c.offer([_r("a", seq), _r("b", seq)])
        assert _seqs(c.due(1.0)) == [("a", seq), ("b", seq)]  # the same instant, every time
    assert c.superseded == 0
    c.due(1.0)
    assert c.tracked == 0  # nothing remembered once published


def test_memory_is_bounded_by_devices_held_or_published_within_the_interval() -> None:
    c = ReceiptCoalescer(interval_s=1.0)
    c.offer(_r(f"d{i}", 1) for i in range(1000))
    assert len(c.due(0.0)) == 1000 and c.tracked == 1000
    c.offer([_r("d7", 2)])
    assert c.due(0.9) == [] and c.tracked == 1000
    assert _seqs(c.due(1.0)) == [("d7", 2)]
    assert c.tracked == 1  # the others were published over an interval ago, nothing held
    assert c.due(2.0) == [] and c.tracked == 0


def test_a_limit_leaves_the_rest_held_and_due() -> None:
    c = ReceiptCoalescer(interval_s=1.0)
    c.offer([_r("a", 1), _r("b", 1), _r("c", 1)])
    assert _seqs(c.due(0.0, limit=2)) == [("a", 1), ("b", 1)]
    assert _seqs(c.due(0.0, limit=2)) == [("c", 1)]  # still due at once
    c.offer([_r("a", 2), _r("b", 2)])
    assert _seqs(c.due(1.0, limit=1)) == [("a", 2)]
    assert _seqs(c.due(1.0)) == [("b", 2)]


def test_a_negative_interval_is_refused() -> None:
    with pytest.raises(ValueError, match="receipt interval"):
        ReceiptCoalescer(interval_s=-0.1)


# -- the sender: paho's rc, reconnects --------------------------------------------------------


@dataclass
class _Info:
    rc: int = mqtt.MQTT_ERR_SUCCESS
    acked: bool = False

    def is_published(self) -> bool:
        return self.acked

    def wait_for_publish(self, timeout: float | None = None) -> None:
        return None


@dataclass
class _FakeClient:
    """Records publishes; ``refuse`` makes paho's rc a failure (e.g. no connection)."""

    refuse: bool = False
    ack_at_once: bool = False
    sent: list[tuple[str, bytes, int, bool]] = field(default_factory=list)
    infos: list[_Info] = field(default_factory=list)

    def publish(self, topic: str, payload: bytes, qos: int, retain: bool) -> _Info:
        if self.refuse:
            return _Info(rc=mqtt.MQTT_ERR_NO_CONN)
        self.sent.append((topic, payload, qos, retain))
        info = _Info(acked=self.ack_at_once)
        self.infos.append(info)
        return info

    def seqs(self) -> list[int]:
        return [_open(payload).seq for _t, payload, _q, _r in self.sent]


def _client(fake: _FakeClient) -> mqtt.Client:
    return cast(mqtt.Client, fake)


def test_sender_publishes_retained_qos1_on_the_receipt_topic_coalesced() -> None:
    fake = _FakeClient()
    sender = ReceiptSender(KEY, interval_s=0.25)
    for seq in range(1, 11):  # ten commits 10 ms apart
        sender.offer([_r("a", seq)])
        sender.flush(_client(fake), 100.0 + seq / 100)
    sender.flush(_client(fake), 100.4)
    assert fake.seqs() == [1, 10]
    assert {(t, q, r) for t, _p, q, r in fake.sent} == {(receipt_topic(E, "a"), 1, True)}
    assert (sender.published, sender.superseded, sender.held) == (2, 8, 0)
    assert "2 receipts published, 8 superseded" in sender.summary()


def test_a_refused_publish_is_logged_and_held_again_for_the_next_connection(
    caplog: pytest.LogCaptureFixture,
) -> None:
    down = _FakeClient(refuse=True)
    sender = ReceiptSender(KEY, interval_s=0.25)
    sender.offer([_r("a", 3)])
    with caplog.at_level(logging.WARNING, logger="cloud.worker.receipts"):
        assert sender.flush(_client(down), 1.0) == 0
    assert "receipt device=a seq=3 not published now" in caplog.text
    assert sender.held == 1 and sender.published == 0
    up = _FakeClient()
    assert sender.flush(_client(up), 1.1) == 0  # retried once the interval has passed
    assert sender.flush(_client(up), 1.25) == 1
    assert up.seqs() == [3]


def test_receipts_unacknowledged_on_a_lost_connection_go_out_on_the_next() -> None:
    first = _FakeClient()
    sender = ReceiptSender(KEY, interval_s=0.25)
    sender.offer([_r("a", 1), _r("b", 1)])
    sender.flush(_client(first), 1.0)
    first.infos[0].acked = True  # "a"'s PUBACK came; "b"'s never did
    sender.offer([_r("a", 2)])  # held while disconnected
    second = _FakeClient()
    sender.flush(_client(second), 1.3)
    assert sorted(_seqs([_open(p) for _t, p, _q, _r in second.sent])) == [
        ("a", 2),
        ("b", 1),
    ]
    assert sender.wait(0.0) == 2  # the fake never acknowledges: both still pending


def test_past_max_in_flight_receipts_stay_held_and_keep_coalescing() -> None:
    fake = _FakeClient()
    sender = ReceiptSender(KEY, interval_s=0.0, max_in_flight=2)
    sender.offer([_r("a", 1), _r("b", 1), _r("c", 1)])
    assert sender.flush(_client(fake), 1.0) == 2  # two unacknowledged at most
    sender.offer([_r("c", 2)])  # c's held receipt is replaced while it waits
    assert sender.flush(_client(fake), 1.1) == 0 and sender.held == 1
    fake.infos[0].acked = True  # the broker acknowledged "a"
    assert sender.flush(_client(fake), 1.2) == 1
    assert _seqs([_open(p) for _t, p, _q, _r in fake.sent]) == [
        ("a", 1),
        ("b", 1),
        ("c", 2),
    ]
    assert sender.superseded == 1


def test_drain_at_stop_publishes_every_held_receipt_in_rounds() -> None:
    fake = _FakeClient(ack_at_once=True)
    sender = ReceiptSender(KEY, interval_s=60.0, max_in_flight=2)
    sender.offer(_r(d, 1) for d in "abcde")
    assert [sender.flush(_client(fake), 1.0) for _ in range(4)] == [2, 2, 1, 0]
    sender.offer(_r(d, 2) for d in "abcde")  # all held: within the interval
    assert sender.flush(_client(fake), 2.0) == 0
    assert sender.drain(_client(fake), timeout=5.0) == 0
    assert sorted(_seqs([_open(p) for _t, p, _q, _r in fake.sent][5:])) == [
        (d, 2) for d in "abcde"
    ]
    assert sender.held == 0


def test_drain_gives_up_when_paho_refuses() -> None:
    sender = ReceiptSender(KEY, interval_s=0.25)
    sender.offer([_r("a", 1), _r("b", 1)])
    assert sender.drain(_client(_FakeClient(refuse=True)), timeout=5.0) == 2  # no busy loop


# -- end to end ---------------------------------------------------------------------------------


@pytest.mark.integration
@pytest.mark.parametrize("interval", [0.5, 0.0])
def test_a_device_committed_batch_by_batch_gets_fewer_receipts_the_last_naming_its_final_seq(
    interval: float,
    tmp_path: Path,
    broker_factory: Callable[..., BrokerProcess],
    keys_dir: Path,
    envelopes: Envelopes,
    processes: list[subprocess.Popen[bytes]],
) -> None:
    """Every batch is its own commit (the next is published once the previous is in the
    ledger), so without coalescing each would produce a receipt: interval 0 shows it."""
    broker = broker_factory("cloud")
    cloud = Cloud(tmp_path, broker, keys_dir, processes, args=("--receipt-interval", str(interval)))
    cloud.start()
    device = envelopes.devices(1)[0]
    total = 24
    bodies = envelopes.bodies(device, total)
    final = Receipt(envelopes.election.id, device, total, hash_of(bodies[-1]))
    receipts = Collector(broker.url, RECEIPT_FILTER).start()  # the test is the device
    publisher = Publisher(broker.port)

    started = time.monotonic()
    for seq, body in enumerate(bodies, start=1):
        publisher.publish_all([envelopes.inbound(body)])
        wait_until(lambda seq=seq: cloud.ledger() == seq, 20, f"batch {seq} in the ledger")

    def got() -> list[Receipt]:
        return [envelopes.receipt(m.payload) for m in receipts.messages()]

    wait_until(lambda: got() and got()[-1] == final, 20, "the final receipt")
    elapsed = time.monotonic() - started
    seen = got()
    assert [r.seq for r in seen] == sorted(r.seq for r in seen)  # never an older one after
    assert all(r.device == device for r in seen)
    if interval:
        # one at once, then at most one per interval: bounded by the time it all took
        assert len(seen) < total
        assert len(seen) <= elapsed / interval + 1, (len(seen), elapsed)
    else:
        assert len(seen) == total  # proves the batches were committed one by one
    publisher.close()
    receipts.stop()
    assert cloud.terminate() == 0
    published, superseded = map(
        int,
        re.findall(r"receipts: (\d+) receipts published, (\d+) superseded", cloud.text())[-1],
    )
    assert published == len(seen) and published + superseded == total


@pytest.mark.integration
def test_a_graceful_stop_publishes_the_held_receipt(
    tmp_path: Path,
    broker_factory: Callable[..., BrokerProcess],
    keys_dir: Path,
    envelopes: Envelopes,
    processes: list[subprocess.Popen[bytes]],
) -> None:
    broker = broker_factory("cloud")
    cloud = Cloud(tmp_path, broker, keys_dir, processes, args=("--receipt-interval", "600"))
    cloud.start()
    device = envelopes.devices(1)[0]
    bodies = envelopes.bodies(device, 2)
    receipts = Collector(broker.url, RECEIPT_FILTER).start()
    publisher = Publisher(broker.port)
    publisher.publish_all([envelopes.inbound(bodies[0])])
    wait_until(receipts.messages, 20, "the first receipt, at once")
    publisher.publish_all([envelopes.inbound(bodies[1])])
    wait_until(lambda: cloud.ledger() == 2, 20, "batch 2 in the ledger")
    assert [envelopes.receipt(m.payload).seq for m in receipts.messages()] == [1]  # 2 is held

    assert cloud.terminate() == 0

    second = Receipt(envelopes.election.id, device, 2, hash_of(bodies[1]))
    wait_until(
        lambda: [envelopes.receipt(m.payload) for m in receipts.messages()][-1] == second,
        10,
        "the held receipt, published at stop",
    )
    assert "receipts: 2 receipts published, 0 superseded" in cloud.text()
    publisher.close()
    receipts.stop()


def test_run_refuses_a_negative_receipt_interval(keys_dir: Path, tmp_path: Path) -> None:
    out = run_cli(
        "cloud", "run", "--broker", "mqtt://127.0.0.1:1", "--keys", str(keys_dir),
        "--db", f"sqlite:///{tmp_path / 'c.db'}", "--receipt-interval", "-1", check=False,
    )  # fmt: skip
    assert out.returncode == 1
    assert "--receipt-interval must be a number of seconds >= 0" in out.stderr
