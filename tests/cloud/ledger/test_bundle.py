"""Gateway bundles in the cloud: every entry is verified, recorded and rejected exactly as if it
had arrived alone (ledger tests on SQLite and PostgreSQL); a bundle with corrupt framing is one
rejection with its reason; the worker acknowledges a bundle only after all of it committed."""

from __future__ import annotations

import sqlite3
import subprocess
import zlib
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.engine import Engine

from cloud import models
from cloud.ledger.chain import Verdict
from cloud.ledger.ledger import Inbound, Ledger, unwrap
from cloud.results.results import load_results
from devices.generator import expected_totals
from edgetally.brokers import BrokerProcess
from protocol import Envelope, RejectReason, batch_topic, gateway_bundle_topic
from protocol import bundle as bundles
from tests.cloud.support import SEED, Envelopes, Publisher, raw_inbound
from tests.helpers import wait_until
from tests.support.cloud import CloudProcess

TOPIC = gateway_bundle_topic("gw1")


def bundled(messages: list[Inbound], *, compress: bool = False) -> list[Inbound]:
    """``messages`` as the cloud gets them from a gateway: one bundle, unwrapped."""
    payload = bundles.encode([(m.topic, m.payload) for m in messages], compress=compress)
    return list(unwrap(TOPIC, payload, messages[0].received_at))


def _rejections(engine: Engine) -> list[dict[str, object]]:
    with engine.connect() as conn:
        query = select(models.rejections).order_by(models.rejections.c.id)
        return [dict(r._mapping) for r in conn.execute(query)]


@pytest.mark.parametrize("compress", [False, True])
def test_bundled_batches_count_exactly_as_if_they_had_come_alone(
    ledger: Ledger, engine: Engine, envelopes: Envelopes, compress: bool
) -> None:
    devices = envelopes.devices(5)
    messages = envelopes.messages(devices, 4)
    entries = bundled(messages, compress=compress)
    assert [(m.topic, m.payload) for m in entries] == [(m.topic, m.payload) for m in messages]

    result = ledger.record(entries)

    assert result.count(Verdict.ACCEPTED) == len(messages)
    expected = expected_totals(envelopes.election, SEED, 4, devices).to_mapping()
    got = load_results(engine).to_mapping()
    assert {k: got[k] for k in expected} == expected
    assert ledger.record(bundled(messages[:3])).count(Verdict.DUPLICATE) == 3


def test_a_bad_entry_is_rejected_alone_on_its_own_topic_and_the_rest_counts(
    ledger: Ledger, engine: Engine, envelopes: Envelopes
) -> None:
    device = envelopes.devices(1)[0]
    bodies = envelopes.bodies(device, 3)
    key = envelopes.key(device)
    forged = Envelope(body=bodies[1].to_bytes(), sig=key.sign(b"other"), kid=key.kid).to_bytes()
    topic = batch_topic(envelopes.election.id, device)
    entries = bundled(
        [envelopes.inbound(bodies[0]), raw_inbound(forged, topic), envelopes.inbound(bodies[1])]
    )

    result = ledger.record(entries)

    assert [o.verdict for o in result.outcomes] == [
        Verdict.ACCEPTED,
        Verdict.REJECTED,
        Verdict.ACCEPTED,
    ]
    [row] = _rejections(engine)
    assert (row["topic"], row["reason"], row["payload"], row["seq"]) == (
        topic,
        "bad_signature",
        forged,
        2,
    )


@pytest.mark.parametrize(
    ("corrupt", "reason", "words"),
    [
        (lambda b: b[:-5], RejectReason.BAD_BUNDLE, "ends inside"),
        (lambda b: b"ETBN\x07" + b[5:], RejectReason.BAD_BUNDLE, "version 7"),
        (
            lambda b: b[:5] + b"\x01" + b[6:8] + zlib.compress(b[8:])[:-4],
            RejectReason.BAD_BUNDLE,
            "zlib",
        ),
        (lambda b: b + b"\x00" * bundles.MAX_BUNDLE_BYTES, RejectReason.OVERSIZE, "limit"),
    ],
    ids=["truncated", "version", "zlib", "oversize"],
)
def test_a_bundle_with_corrupt_framing_is_rejected_whole_and_stored_with_its_reason(
    ledger: Ledger,
    engine: Engine,
    envelopes: Envelopes,
    corrupt: Callable[[bytes], bytes],
    reason: RejectReason,
    words: str,
) -> None:
    messages = envelopes.messages(envelopes.devices(2), 2)
    good = bundles.encode([(m.topic, m.payload) for m in messages])
    bad = corrupt(good)
    [refused] = unwrap(TOPIC, bad, messages[0].received_at)

    [outcome] = ledger.record([refused]).outcomes

    assert (outcome.verdict, outcome.reason) == (Verdict.REJECTED, reason)
    [row] = _rejections(engine)
    assert (row["topic"], row["reason"], row["payload"]) == (TOPIC, reason.value, bad)
    assert words in str(row["detail"])
    assert load_results(engine).batches == 0


@pytest.mark.integration
def test_the_worker_acks_a_bundle_only_after_all_its_entries_committed(
    tmp_path: Path,
    broker_factory: Callable[..., BrokerProcess],
    keys_dir: Path,
    envelopes: Envelopes,
    processes: list[subprocess.Popen[bytes]],
) -> None:
    broker = broker_factory("cloud")
    cloud = CloudProcess(tmp_path, broker.url, keys_dir, processes).start(debug=True)
    messages = envelopes.messages(envelopes.election.devices, 20)
    while bundles.HEADER_BYTES + sum(bundles.entry_bytes(m.topic, m.payload) for m in messages) > (
        bundles.MAX_BUNDLE_BYTES
    ):
        messages = messages[:-10]  # as many as one bundle holds
    payload = bundles.encode([(m.topic, m.payload) for m in messages])
    small = envelopes.messages(["river-p12-a"], 1)
    lock = sqlite3.connect(cloud.db_path, isolation_level=None)
    lock.execute("BEGIN IMMEDIATE")  # the worker can receive but not commit
    try:
        publisher = Publisher(broker.port)
        publisher.publish_all([raw_inbound(payload, TOPIC)])
        wait_until(lambda: "received mid=" in cloud.text(), 20, "the worker to receive the bundle")
        cloud.kill()
    finally:
        lock.execute("ROLLBACK")
        lock.close()
    assert cloud.ledger_count() == 0

    cloud.start(debug=True)  # the bundle was not acked: the broker delivers it again
    wait_until(lambda: cloud.ledger_count() == len(messages), 30, "every entry in the ledger")
    assert len(messages) > 500  # more than the worker's group_max, still one transaction:
    one_group = f"committed {len(messages)}: {len(messages)} accepted"
    wait_until(lambda: one_group in cloud.text(), 10, "the bundle committed as one group")
    publisher.publish_all(small)
    wait_until(lambda: cloud.ledger_count() == len(messages) + 1, 20, "a later batch")
    assert cloud.rejections() == []
    publisher.close()
