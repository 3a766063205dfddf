"""Quarantine flood control on real buffer files: rejects are stored up to the per-device and
total caps, the rest counted per (device, reason) in the same transaction; the counters
survive reopening and show in ``buffer stats --json``; retry and purge free room; quarantined
rows never hold back valid batches under ``--max-buffer-batches``."""

from __future__ import annotations

import dataclasses
import json
import logging
import sqlite3
import threading
import time
from pathlib import Path

import pytest

from gateway.buffer.backpressure import Quota
from gateway.buffer.quarantine import DropWarnings
from gateway.buffer.rows import Dropped, NewMessage, QuarantineCaps
from gateway.buffer.schema import State
from gateway.buffer.store import Buffer
from gateway.config import GatewayConfig
from gateway.ingress import Ingress
from gateway.inspect.check import check
from gateway.inspect.recover import recover
from gateway.verify import classify
from protocol import DEFAULT_MAX_BYTES, Election, Registry, batch_topic, parse_broker_url
from tests.gateway.buffer.test_backpressure import feed
from tests.gateway.buffer_support import arrived
from tests.gateway.support import Sent, envelopes
from tests.helpers import run_cli


def junk(
    election: Election, registry: Registry, device: str, n: int, *, size: int = 20, start: int = 0
) -> list[NewMessage]:
    """``n`` rejects on ``device``'s batch topic (malformed JSON), each ``size`` bytes, as the
    gateway classifies them."""
    topic = batch_topic(election.id, device)
    return [
        classify(topic, f"{{junk {start + i:06d}".encode().ljust(size, b"#"), time.time(), registry, DEFAULT_MAX_BYTES)
        for i in range(n)
    ]


def quarantined_by_device(buffer: Buffer) -> dict[str | None, int]:
    out: dict[str | None, int] = {}
    for row in buffer.quarantined():
        out[row.device] = out.get(row.device, 0) + 1
    return out


def dropped_rows(path: Path) -> dict[tuple[str, str], tuple[int, int]]:
    data = json.loads(run_cli("gateway", "buffer", "stats", "--buffer", str(path), "--json").stdout)
    return {
        (d["device"], d["reason"]): (d["count"], d["bytes"])
        for d in data["quarantine"]["dropped"]["by_device_reason"]
    }


def test_a_flood_from_one_device_stores_its_cap_counts_the_rest_and_valid_batches_still_pass(
    tmp_path: Path, registry: Registry, keys_dir: Path, sample_election: Election
) -> None:
    flooder, other = sample_election.devices[:2]
    caps = QuarantineCaps(rows_per_device=5, bytes_per_device=10_000, rows=1000, bytes=10**6)
    valid = arrived(envelopes(sample_election, keys_dir, [flooder, other], 2), registry)
    forged = [dataclasses.replace(m, state=State.QUARANTINED, reason="bad_signature") for m in junk(sample_election, registry, flooder, 3, start=100)]
    with Buffer(tmp_path / "b.db", quarantine_caps=caps) as buffer:
        results = [buffer.put_many(junk(sample_election, registry, flooder, 4, start=4 * g)) for g in range(3)]
        results.append(buffer.put_many([*forged, *valid]))
        assert [r.stored for r in results] == [4, 1, 0, len(valid)]
        assert sum(r.dropped_count for r in results) == 12 + 3 - 5
        assert results[1].dropped == (Dropped(flooder, "malformed_json", 3, 60, "device_rows"),)
        assert quarantined_by_device(buffer) == {flooder: 5}
        counts = buffer.counts()
        assert counts[State.PENDING] == len(valid) and counts[State.QUARANTINED] == 5
        assert {m.device for m in buffer.fetch_pack(10)} == {flooder, other}  # both forwarded
        usage = buffer.quarantine_usage()
        assert (usage.rows, usage.bytes, usage.dropped, usage.dropped_bytes) == (5, 100, 10, 200)
        assert usage.devices_at_cap == 1 and not usage.total_at_cap
    # The counters are in the file: they survive reopening, and `buffer stats` reads them.
    assert dropped_rows(tmp_path / "b.db") == {
        (flooder, "malformed_json"): (7, 140),
        (flooder, "bad_signature"): (3, 60),
    }
    with Buffer(tmp_path / "b.db", quarantine_caps=caps) as again:
        assert again.quarantine_usage() == usage
        assert again.put_many(junk(sample_election, registry, flooder, 1, start=999)).dropped_count == 1
        assert again.quarantine_usage().dropped == 11


def test_the_byte_cap_per_device_is_respected(
    tmp_path: Path, registry: Registry, sample_election: Election
) -> None:
    device = sample_election.devices[0]
    caps = QuarantineCaps(rows_per_device=0, bytes_per_device=100, rows=1000, bytes=10**6)
    with Buffer(tmp_path / "b.db", quarantine_caps=caps) as buffer:
        result = buffer.put_many(junk(sample_election, registry, device, 5, size=30))
        assert result.stored == 3 and result.dropped == (Dropped(device, "malformed_json", 2, 60, "device_bytes"),)
        assert buffer.quarantine_usage().bytes == 90 <= caps.bytes_per_device
        # A smaller reject still fits in what is left (10 bytes).
        small = classify(batch_topic(sample_election.id, device), b"{not json!", time.time(), registry, DEFAULT_MAX_BYTES)
        assert buffer.put_many([small]).stored == 1 and buffer.quarantine_usage().bytes == 100


def test_the_total_cap_holds_across_many_devices(
    tmp_path: Path, registry: Registry, sample_election: Election
) -> None:
    devices = sample_election.devices[:6]
    caps = QuarantineCaps(rows_per_device=4, bytes_per_device=10**6, rows=10, bytes=10**6)
    with Buffer(tmp_path / "b.db", quarantine_caps=caps) as buffer:
        for round_ in range(3):
            buffer.put_many([m for d in devices for m in junk(sample_election, registry, d, 1, start=round_)])
        held = quarantined_by_device(buffer)
        assert sum(held.values()) == 10 and max(held.values()) <= 4
        usage = buffer.quarantine_usage()
        assert usage.rows == 10 and usage.dropped == 8 and usage.total_at_cap
        # A reject on a topic that names no device counts under the '' key, also capped.
        bad_topic = classify("edgetally/v1/_nope/batch", b"x", time.time(), registry, DEFAULT_MAX_BYTES)
        assert bad_topic.device is None
        assert buffer.put_many([bad_topic]).dropped[0].device == ""
    assert dropped_rows(tmp_path / "b.db")[(None, "bad_topic")] == (1, 1)  # type: ignore[index]


def test_retry_and_purge_of_quarantined_rows_free_cap_room(
    tmp_path: Path, registry: Registry, keys_dir: Path, sample_election: Election
) -> None:
    device = sample_election.devices[0]
    path = tmp_path / "b.db"
    caps = QuarantineCaps(rows_per_device=3, bytes_per_device=10**6, rows=1000, bytes=10**6)
    # Valid batches of a device the gateway's registry did not know yet: quarantined, and
    # they pass `buffer retry` with the full keys directory.
    stale = dataclasses.replace(registry, devices={k: v for k, v in registry.devices.items() if k != device})
    sent: list[Sent] = envelopes(sample_election, keys_dir, [device], 3)
    unknown = arrived(sent, stale)
    assert {m.state for m in unknown} == {State.QUARANTINED}
    with Buffer(path, quarantine_caps=caps, keys_dir=keys_dir) as buffer:
        assert buffer.put_many(unknown).stored == 3
        assert buffer.put_many(junk(sample_election, registry, device, 1)).dropped_count == 1  # at the cap
        retried = json.loads(run_cli("gateway", "buffer", "retry", "--buffer", str(path), "--all-quarantined", "--json").stdout)
        assert len(retried["passed"]) == 3
        assert buffer.quarantine_usage().rows == 0
        assert buffer.put_many(junk(sample_election, registry, device, 4, start=10)).stored == 3  # room again
        run_cli("gateway", "buffer", "purge", "--buffer", str(path), "--state", "quarantined", "--include-undelivered", "--yes")
        assert buffer.quarantine_usage().rows == 0 and buffer.counts()[State.QUARANTINED] == 0
        assert buffer.put_many(junk(sample_election, registry, device, 2, start=20)).stored == 2
        assert buffer.counts()[State.PENDING] == 3


def test_quarantined_rows_do_not_count_toward_the_buffer_quota(
    tmp_path: Path, registry: Registry, sample_election: Election
) -> None:
    with Buffer(tmp_path / "b.db") as buffer:
        quota = Quota(2, 10, buffer.outbound_usage)
        buffer.put_many(junk(sample_election, registry, sample_election.devices[0], 5))
        quota.refresh()
        assert not quota.full and quota.live_batches == 0 and quota.live_bytes == 0


def test_valid_batches_are_admitted_when_the_quarantine_is_full_and_max_buffer_batches_is_set(
    tmp_path: Path, registry: Registry, keys_dir: Path, sample_election: Election, caplog: pytest.LogCaptureFixture
) -> None:
    flooder, other = sample_election.devices[:2]
    address = parse_broker_url("mqtt://127.0.0.1:1")  # never connected: nothing is acked
    config = GatewayConfig(
        gateway_id="qf", edge=address, cloud=address, buffer_path=tmp_path / "b.db", keys_dir=keys_dir,
        max_buffer_batches=8, max_quarantine_rows_per_device=3, max_quarantine_rows=4,
    )  # fmt: skip
    valid = envelopes(sample_election, keys_dir, [flooder, other], 3)
    topic = batch_topic(sample_election.id, flooder)
    flood = [Sent(topic, f"{{junk {i}".encode(), flooder, 0) for i in range(50)]
    with Buffer.from_config(config) as buffer:
        ingress = Ingress(config, registry, buffer)
        feed(ingress, flood[:25] + valid + flood[25:])
        stop = threading.Event()
        stop.set()  # drain what is queued
        with caplog.at_level(logging.WARNING, logger="gateway.ingress"):
            ingress.run_writer(stop)
        counts = buffer.counts()
        assert counts[State.PENDING] == len(valid) == 6 and counts[State.QUARANTINED] == 3
        assert ingress.holding is None and ingress.queued == 0
        assert ingress.quarantined == 3 and ingress.dropped == 47 and ingress.stored == 9
    warnings = [r.getMessage() for r in caplog.records if "quarantine cap" in r.getMessage()]
    assert len(warnings) == 1 and f"device={flooder} reason=malformed_json" in warnings[0]


def test_drop_warnings_name_a_device_once_then_at_most_every_interval() -> None:
    now = [0.0]
    records: list[str] = []

    class Sink(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record.getMessage())

    log = logging.getLogger("tests.quarantine.warnings")
    log.addHandler(Sink())
    warnings = DropWarnings(log, clock=lambda: now[0])
    caps = QuarantineCaps()
    drop = Dropped("dev-a", "bad_signature", 2, 10, "device_rows")
    warnings.dropped([drop], caps)
    now[0] = 10
    warnings.dropped([drop, Dropped("dev-b", "malformed_json", 1, 5, "total_rows")], caps)
    assert len(records) == 2 and "device=dev-a" in records[0] and "device=dev-b" in records[1]
    now[0] = 400
    warnings.dropped([drop], caps)
    assert len(records) == 3 and "4 more rejects" in records[2]
    warnings.stored("dev-a")  # room again: the next drop is a first one
    warnings.dropped([drop], caps)
    assert len(records) == 4 and "quarantine cap reached" in records[3]


def test_buffer_check_compares_the_quarantine_counters_with_the_rows(
    tmp_path: Path, registry: Registry, sample_election: Election
) -> None:
    path = tmp_path / "b.db"
    with Buffer(path, quarantine_caps=QuarantineCaps(rows_per_device=2)) as buffer:
        buffer.put_many([m for d in sample_election.devices[:3] for m in junk(sample_election, registry, d, 3)])
    assert check(path).ok
    raw = sqlite3.connect(path)
    raw.execute("UPDATE quarantine_usage SET rows = 7 WHERE device = ?", (sample_election.devices[1],))
    raw.commit()
    raw.close()
    problems = check(path).problems
    assert problems == [f"per-device quarantine counters differ from the rows for {sample_election.devices[1]!r}"]


def test_recover_carries_the_quarantine_and_its_dropped_counters_into_the_new_file(
    tmp_path: Path, registry: Registry, sample_election: Election
) -> None:
    path, out = tmp_path / "b.db", tmp_path / "b.recovered.db"
    device = sample_election.devices[0]
    with Buffer(path, quarantine_caps=QuarantineCaps(rows_per_device=2)) as buffer:
        buffer.put_many(junk(sample_election, registry, device, 5))
        before = buffer.quarantine_usage()
    recover(path, out)
    assert check(out).ok
    with Buffer(out, quarantine_caps=QuarantineCaps(rows_per_device=2)) as salvaged:
        assert salvaged.quarantine_usage() == before
    assert dropped_rows(out) == {(device, "malformed_json"): (3, 60)}
