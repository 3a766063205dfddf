"""Backpressure instead of loss: a buffer quota (``--max-buffer-batches``/``--max-buffer-bytes``)
and a full disk both make the gateway stop committing and acknowledging; batches wait on the
edge broker and nothing is lost or counted twice once the buffer drains or the disk has room.

The quota logic runs on a real buffer file; the end-to-end tests run real brokers, the real
cloud worker and the gateway as a subprocess. The full disk is a real one: a small tmpfs
mounted for the test (needs root; the test is skipped where mounting is not allowed).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from edgetally.brokers import BrokerProcess, BrokerSettings, mosquitto_config
from gateway.buffer.backpressure import RESUME_RATIO, Quota, Room
from gateway.buffer.rows import NewMessage
from gateway.buffer.schema import State
from gateway.buffer.store import Buffer
from gateway.config import BROKER_MAX_INFLIGHT, GatewayConfig
from gateway.ingress import Ingress
from protocol import Election, Registry, parse_broker_url
from tests.gateway.crash_support import Rig, Workload
from tests.gateway.support import Sent, envelopes, publish_all
from tests.helpers import REPO, wait_until


# -- the quota on a real buffer file ------------------------------------------------------
def batch(seq: int, size: int = 100) -> NewMessage:
    return NewMessage(
        topic="edgetally/v1/el/dev-a/batch",
        payload=b"x" * size,
        state=State.PENDING,
        received_at=time.time(),
        election="el",
        device="dev-a",
        seq=seq,
        body_hash=f"{seq:064x}",
    )


@pytest.fixture
def buffer(tmp_path: Path) -> Iterator[Buffer]:
    with Buffer(tmp_path / "b.db") as opened:
        yield opened


def deliver(buffer: Buffer, n: int) -> None:
    buffer.confirm([row.id for row in buffer.fetch_pack(n)])


def test_quota_holds_at_the_limit_and_resumes_only_below_ninety_percent(
    buffer: Buffer, caplog: pytest.LogCaptureFixture
) -> None:
    quota = Quota(10, 0, buffer.outbound_usage)
    quota.refresh()
    assert quota.room() == Room(10, None)
    assert quota.room(reserved_batches=4) == Room(6, None)  # a group still being verified
    buffer.put_many([batch(seq) for seq in range(1, 11)])
    with caplog.at_level(logging.WARNING, logger="gateway.buffer.backpressure"):
        quota.refresh()
        assert quota.full and not quota.room().open
        deliver(buffer, 1)  # 9 live: at 90 %, not below it
        quota.refresh()
        assert quota.full
        deliver(buffer, 1)  # 8 live
        quota.refresh()
    assert not quota.full and quota.room() == Room(2, None)
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 2, messages
    assert messages[0].startswith("buffer full (outbound 10/10 batches")
    assert "holding ingress" in messages[0]
    assert messages[1].startswith(f"buffer below {round(RESUME_RATIO * 100)}% (outbound 8/10 batches")
    assert quota.episodes == 1


def test_byte_quota_counts_live_payload_bytes_and_not_delivered_ones(buffer: Buffer) -> None:
    quota = Quota(0, 1000, buffer.outbound_usage)
    buffer.put_many([batch(seq, 300) for seq in range(1, 4)])  # 900 bytes live
    quota.refresh()
    assert quota.room() == Room(None, 100) and not quota.full
    buffer.put_many([batch(4, 300)])  # 1,200 bytes: over
    quota.refresh()
    assert quota.full
    deliver(buffer, 2)  # 600 live bytes (delivered rows do not count)
    quota.refresh()
    assert not quota.full and quota.room() == Room(None, 400)


def test_quarantined_rows_do_not_count_toward_the_quota(buffer: Buffer) -> None:
    """Rejects are bounded by the quarantine caps, not the quota: they never hold back valid batches."""
    quota = Quota(2, 0, buffer.outbound_usage)
    buffer.put_many(
        [
            NewMessage("t", b"junk", State.QUARANTINED, time.time(), reason="malformed_json"),
            NewMessage("t", b"more junk", State.QUARANTINED, time.time(), reason="malformed_json"),
        ]
    )
    quota.refresh()
    assert not quota.full and quota.room().batches == 2


def test_no_limit_never_reads_the_usage() -> None:
    def usage() -> object:
        raise AssertionError("usage() called without a limit")

    quota = Quota(0, 0, usage)  # type: ignore[arg-type]
    quota.refresh()
    assert quota.room().open and quota.room().batches is None


def feed(ingress: Ingress, sent: list[Sent]) -> None:
    """Hand messages to the ingress the way paho does (no broker: nothing can be acked)."""
    for mid, item in enumerate(sent, start=1):
        message = mqtt.MQTTMessage(mid=mid, topic=item.topic.encode())
        message.payload = item.payload
        message.qos = 1
        ingress._on_message(None, None, message)  # type: ignore[arg-type]


@pytest.mark.parametrize("limit", ["batches", "bytes"])
def test_writer_takes_only_what_fits_and_holds_the_rest_unacknowledged(
    tmp_path: Path, keys_dir: Path, registry: Registry, sample_election: Election, limit: str
) -> None:
    sent = envelopes(sample_election, keys_dir, sample_election.devices[:4], 5)
    size = max(len(s.payload) for s in sent)
    address = parse_broker_url("mqtt://127.0.0.1:1")  # never connected
    config = GatewayConfig(
        gateway_id="bp",
        edge=address,
        cloud=address,
        buffer_path=tmp_path / "b.db",
        keys_dir=keys_dir,
        max_buffer_batches=7 if limit == "batches" else 0,
        max_buffer_bytes=7 * size + size // 2 if limit == "bytes" else 0,
    )
    with Buffer(config.buffer_path) as buffer:
        ingress = Ingress(config, registry, buffer)
        feed(ingress, sent)
        stop = threading.Event()
        stop.set()  # drain what is queued, or return as soon as the buffer is full
        ingress.run_writer(stop)
        usage = buffer.usage()
        assert ingress.holding == "buffer_full"
        stored = usage.live_batches
        if limit == "batches":
            assert stored == 7
        else:  # as many as fit; the next one would not have
            assert usage.live_bytes <= config.max_buffer_bytes
            assert stored >= 7 and usage.live_bytes + size > config.max_buffer_bytes - size
        assert ingress.stored == stored and ingress.acked == 0
        assert ingress.queued == len(sent) - stored  # held: neither committed nor acknowledged
        deliver(buffer, stored)
        ingress.run_writer(stop)  # room again: the next groups go in
        assert ingress.stored > stored
        assert buffer.usage().live_batches <= 7 if limit == "batches" else True
        assert buffer.usage().live_bytes <= config.max_buffer_bytes or limit == "batches"


def broker_settings(text: str) -> dict[str, str]:
    pairs = (line.split(None, 1) for line in text.splitlines() if line.strip() and not line.startswith("#"))
    return {key: value.strip() for key, value in pairs}


def test_edge_broker_config_keeps_everything_a_held_gateway_leaves_queued(tmp_path: Path) -> None:
    """Backpressure parks batches in the gateway's session on the edge broker: the broker must
    keep the session and never drop from its queue (local and container configs alike)."""
    for text in (
        mosquitto_config(1883, tmp_path, BrokerSettings()),
        (REPO / "deploy" / "mosquitto" / "mosquitto.conf").read_text(),
    ):
        conf = broker_settings(text)
        assert conf["persistence"] == "true"
        assert conf["max_queued_messages"] == "0" and conf["max_queued_bytes"] == "0"
        assert "persistent_client_expiration" not in conf
        # the ingress queue is sized from this: held, the network thread must never block
        assert int(conf["max_inflight_messages"]) == BROKER_MAX_INFLIGHT


# -- end to end -------------------------------------------------------------------------
class LiveSampler:
    """Reads the live row count of the gateway's buffer over and over from a thread (an
    observation, not a synchronisation): the largest value seen is the buffer's peak."""

    def __init__(self, rig: Rig) -> None:
        self.rig = rig
        self.peak = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> LiveSampler:
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(0.01):
            with contextlib.suppress(Exception):
                self.peak = max(self.peak, self.rig.live())
                self.samples += 1

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)


LIMIT = 40
OUTAGE_WHILE_FULL_S = 2.0  # the cloud stays away this long after the buffer filled up


@pytest.mark.integration
def test_a_full_buffer_during_a_long_outage_holds_ingress_and_loses_nothing(
    tmp_path: Path,
    edge: BrokerProcess,
    cloud: BrokerProcess,
    keys_dir: Path,
    sample_election: Election,
    processes: list[subprocess.Popen[bytes]],
) -> None:
    rig = Rig(tmp_path, edge, cloud, keys_dir, processes, extra=("--max-buffer-batches", str(LIMIT)))
    rig.start_cloud()
    cloud.stop()  # the outage (a clean stop: the cloud worker's session survives it)
    rig.start_gateway()
    work = Workload.make(sample_election, keys_dir, sample_election.devices[:10], 20)
    sampler = LiveSampler(rig).start()
    publish_all(edge.url, [(s.topic, s.payload) for s in work.body])  # 199: five times the quota
    wait_until(lambda: "buffer full" in rig.log_text(), 30, "the gateway to report a full buffer")
    threading.Event().wait(OUTAGE_WHILE_FULL_S)  # the outage goes on (a duration, not a sync)
    assert rig.live() == LIMIT  # groups are sized to the room left: it fills exactly, no more
    assert rig.log_text().count("buffer full") == 1  # held steadily: no flapping, no crash
    assert rig.gateway is not None and rig.gateway.alive()

    cloud.start()  # the uplink drains; ingress resumes below 90 % and takes the rest
    rig.finish(work)
    sampler.stop()
    log = rig.log_text()
    assert sampler.samples > 10 and sampler.peak <= LIMIT, (sampler.peak, sampler.samples)
    assert "resuming ingress" in log
    assert "Traceback" not in log


# -- a full disk ----------------------------------------------------------------------------
@pytest.fixture
def small_disk(tmp_path: Path, processes: list[subprocess.Popen[bytes]]) -> Iterator[Path]:
    """A 16 MiB tmpfs: a real file system that runs out of space."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mount)], capture_output=True, text=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mount
    finally:
        for proc in processes:  # nothing may hold a file on it when it goes
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(disk: Path) -> Path:
    """Write a file until the disk is full; return it."""
    filler = disk / "filler"
    chunk = b"\0" * (64 * 1024)
    with open(filler, "wb", buffering=0) as out:
        for _ in range(10_000):  # bounded: 625 MiB, far more than the disk holds
            try:
                out.write(chunk)
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                break
        else:
            raise AssertionError("the disk never filled up")
    for size in (4096, 512, 1):  # the last partial blocks
        with contextlib.suppress(OSError), open(filler, "ab", buffering=0) as out:
            while True:
                out.write(b"\0" * size)
    return filler


FULL_DISK_S = 2.0  # how long the disk stays full: long enough for several retries


@pytest.mark.integration
def test_a_full_disk_holds_ingress_without_a_crash_loop_and_recovers(
    tmp_path: Path,
    small_disk: Path,
    edge: BrokerProcess,
    cloud: BrokerProcess,
    keys_dir: Path,
    sample_election: Election,
    processes: list[subprocess.Popen[bytes]],
) -> None:
    rig = Rig(tmp_path, edge, cloud, keys_dir, processes, buffer=small_disk / "buffer.db")
    rig.start_cloud()
    cloud.stop()  # nothing gets delivered, so there are no delivered rows to purge for room
    rig.start_gateway()
    work = Workload.make(sample_election, keys_dir, sample_election.devices[:8], 10)
    first, rest = work.body[:30], work.body[30:]
    publish_all(edge.url, [(s.topic, s.payload) for s in first])
    wait_until(lambda: rig.outbound() == len(first), 30, "the first batches buffered")

    filler = fill(small_disk)
    publish_all(edge.url, [(s.topic, s.payload) for s in rest])
    wait_until(lambda: "no room on the disk" in rig.log_text(), 30, "the gateway to hit the full disk")
    threading.Event().wait(FULL_DISK_S)  # the fault lasts a while (a duration, not a sync)
    assert rig.gateway is not None and rig.gateway.alive(), rig.tail("gateway.log")
    assert rig.outbound() == len(first)  # nothing of the rest was stored (or acknowledged)

    filler.unlink()
    wait_until(lambda: "writable again" in rig.log_text(), 30, "the gateway to resume")
    cloud.start()
    rig.finish(work)
    log = rig.log_text()
    assert log.count("no room on the disk") == 1, "one log line per full-disk episode"
    assert "writer failed" not in log and "Traceback" not in log, "a crash, not backpressure"
    assert rig.gateway.alive()


@pytest.mark.integration
def test_a_full_disk_while_forwarding_pauses_the_uplink_without_a_crash_loop(
    tmp_path: Path,
    small_disk: Path,
    edge: BrokerProcess,
    cloud: BrokerProcess,
    keys_dir: Path,
    sample_election: Election,
    processes: list[subprocess.Popen[bytes]],
) -> None:
    rig = Rig(tmp_path, edge, cloud, keys_dir, processes, buffer=small_disk / "buffer.db")
    rig.start_cloud()
    cloud.stop()  # a backlog builds up first
    rig.start_gateway()
    work = Workload.make(sample_election, keys_dir, sample_election.devices[:8], 10)
    first, rest = work.body[:40], work.body[40:]
    publish_all(edge.url, [(s.topic, s.payload) for s in first])
    wait_until(lambda: rig.outbound() == len(first), 30, "the backlog buffered")

    filler = fill(small_disk)
    cloud.start()  # the uplink now has to mark rows in flight and delivered: no room for that
    wait_until(lambda: "no room on the disk for the uplink" in rig.log_text(), 30, "the uplink to hit the full disk")
    threading.Event().wait(FULL_DISK_S)  # the fault lasts a while (a duration, not a sync)
    assert rig.gateway is not None and rig.gateway.alive(), rig.tail("gateway.log")

    filler.unlink()
    wait_until(lambda: "uplink resumes forwarding" in rig.log_text(), 30, "the uplink to resume")
    publish_all(edge.url, [(s.topic, s.payload) for s in rest])
    rig.finish(work)
    log = rig.log_text()
    assert log.count("no room on the disk for the uplink") == 1, "one log line per full-disk episode"
    assert "uplink failed" not in log and "Traceback" not in log, "a crash, not backpressure"
    assert rig.gateway.alive()
