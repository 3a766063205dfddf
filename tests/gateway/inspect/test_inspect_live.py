"""The `buffer` commands on the file of a RUNNING gateway, while it ingests and forwards: they
work, and the gateway still forwards everything, including what `retry` put back in line."""

from __future__ import annotations

import json
import subprocess
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

from edgetally.brokers import BrokerProcess
from protocol import BATCH_FILTER, Election
from tests.gateway.buffer_support import rotated_keys, signed_with
from tests.gateway.support import Collector, Sent, envelopes, publish_all, start_gateway
from tests.helpers import run_cli, wait_until

pytestmark = pytest.mark.integration

POOL_BATCHES = 100  # per device, 30 devices: far more than the commands take to run
ROUND = 30
PAUSE_S = 0.25  # pacing (load shape, not synchronisation): >= 25 s of stream, stopped once the commands ran


def buffer_cli(buffer: Path, *args: str) -> dict[str, object]:
    proc = run_cli("gateway", "buffer", *args, "--buffer", str(buffer), "--json")
    return json.loads(proc.stdout)  # type: ignore[no-any-return]


class PacedPublisher:
    """Publishes ``pool`` in rounds until told to stop (or the pool runs out); records what it sent."""

    def __init__(self, url: str, pool: Sequence[Sent]) -> None:
        self.url = url
        self.pool = pool
        self.sent: list[Sent] = []
        self.stop = threading.Event()
        self.exhausted = False
        self.thread = threading.Thread(target=self._run, name="paced-publisher", daemon=True)

    def _run(self) -> None:
        for start in range(0, len(self.pool), ROUND):
            if self.stop.is_set():
                return
            chunk = self.pool[start : start + ROUND]
            publish_all(self.url, [(s.topic, s.payload) for s in chunk])
            self.sent += chunk
            time.sleep(PAUSE_S)
        self.exhausted = True


def test_inspection_commands_work_on_a_live_gateway_which_still_forwards_everything(
    tmp_path: Path,
    edge: BrokerProcess,
    cloud: BrokerProcess,
    keys_dir: Path,
    sample_election: Election,
    processes: list[subprocess.Popen[bytes]],
) -> None:
    rekeyed = sample_election.devices[0]
    rotated, new_key = rotated_keys(keys_dir, rekeyed, tmp_path / "rotated")
    late_key = signed_with(sample_election, rekeyed, new_key, 5)  # the gateway knows the old key
    pool = envelopes(sample_election, keys_dir, sample_election.devices[1:31], POOL_BATCHES)
    collector = Collector(cloud.url, BATCH_FILTER).start()
    buffer = tmp_path / "b.db"
    gateway = start_gateway(
        processes, tmp_path, edge=edge.url, cloud=cloud.url, buffer=buffer, keys=keys_dir,
        extra=("--keep-delivered", "7200"),
    )  # fmt: skip
    publish_all(edge.url, [(s.topic, s.payload) for s in late_key])
    wait_until(
        lambda: buffer_cli(buffer, "stats")["states"]["quarantined"] == 5,  # type: ignore[index]
        30,
        "the batches signed with the new key quarantined",
    )
    publisher = PacedPublisher(edge.url, pool)
    publisher.thread.start()
    wait_until(lambda: len(collector.messages()) >= 100, 30, "the stream to be flowing")

    # While batches keep arriving and leaving:
    listing = buffer_cli(buffer, "ls", "--limit", "20")
    assert listing["count"] == 20 and listing["next_cursor"] is not None
    delivered = buffer_cli(buffer, "ls", "--state", "delivered", "--limit", "1", "--oldest-first")
    first = delivered["rows"][0]["id"]  # type: ignore[index]
    shown = buffer_cli(buffer, "show", str(first))
    assert shown["state"] == "delivered" and shown["signature"]["status"] == "valid"  # type: ignore[index]
    audit = tmp_path / "audit.jsonl"
    exported = buffer_cli(buffer, "export", "--out", str(audit))
    assert exported["rows"] == len(audit.read_text().splitlines()) >= 100  # type: ignore[operator]
    stats = buffer_cli(buffer, "stats")
    assert stats["usage"]["live_batches"] >= 5 and stats["retention_s"] == 7200.0  # type: ignore[index]
    retried = buffer_cli(buffer, "retry", "--all-quarantined", "--keys", str(rotated))
    assert len(retried["passed"]) == 5 and retried["still_quarantined"] == []  # type: ignore[arg-type]
    purged = buffer_cli(buffer, "purge", "--state", "delivered")
    assert purged["purged"]["delivered"] > 0  # type: ignore[index]
    assert not publisher.exhausted, "the stream ended before the commands ran: not a live test"
    publisher.stop.set()
    publisher.thread.join(60)
    assert not publisher.thread.is_alive()
    expected = {s.payload for s in publisher.sent} | {s.payload for s in late_key}
    wait_until(lambda: collector.payloads() >= expected, 60, "every batch, retried ones too, on the cloud")
    assert gateway.proc.poll() is None, gateway.log_text()
    wait_until(
        lambda: (s := buffer_cli(buffer, "stats")["states"])["pending"] + s["inflight"] == 0,  # type: ignore[index, operator]
        30,
        "nothing left to forward",
    )
    assert buffer_cli(buffer, "check")["ok"] is True
    assert "Traceback" not in gateway.log_text()
    collector.stop()
