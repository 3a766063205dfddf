"""A compromised device floods the gateway with rejects: `edgetally gateway run` as a real
subprocess between two real Mosquitto brokers stores rejects only up to its quarantine caps,
counts the rest per (device, reason), acknowledges them all, forwards every valid batch of
every device meanwhile, and reports the counters in `buffer stats --json` and its health
status, also after a restart on the same buffer."""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest

from edgetally.brokers import BrokerProcess
from protocol import BATCH_FILTER, Election, batch_topic, gateway_status_topic
from protocol.gateway_status import GatewayStatus, Quarantine
from tests.gateway.support import Collector, envelopes, publish_all, start_gateway
from tests.helpers import run_cli, wait_until

pytestmark = pytest.mark.integration

CAPS = (
    "--max-quarantine-rows-per-device", "5",
    "--max-quarantine-rows", "8",
    "--max-buffer-batches", "20",
    "--status-interval", "0.2",
    "--id", "gw-flood",
)  # fmt: skip


def stats(buffer: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(
        run_cli("gateway", "buffer", "stats", "--buffer", str(buffer), "--json").stdout
    )
    return data


def dropped(data: dict[str, Any]) -> dict[tuple[str, str], int]:
    return {
        (d["device"], d["reason"]): d["count"] for d in data["quarantine"]["dropped"]["by_device_reason"]
    }


def latest_status(collector: Collector, pid: int) -> GatewayStatus | None:
    full = [
        s
        for s in (GatewayStatus.parse(g.payload) for g in collector.messages())
        if s.buffer is not None and s.pid == pid
    ]
    return full[-1] if full else None


def test_a_reject_flood_is_capped_counted_acknowledged_and_valid_batches_still_flow(
    tmp_path: Path,
    edge: BrokerProcess,
    cloud: BrokerProcess,
    keys_dir: Path,
    sample_election: Election,
    processes: list[subprocess.Popen[bytes]],
) -> None:
    flooder, other = sample_election.devices[:2]
    valid = envelopes(sample_election, keys_dir, [flooder, other], 4)
    first, later = valid[:4], valid[4:]
    junk_of = {
        device: [(batch_topic(sample_election.id, device), f"{{junk {device} {i}".encode()) for i in range(n)]
        for device, n in ((flooder, 40), (other, 6))
    }
    buffer = tmp_path / "b.db"
    forwarded = Collector(cloud.url, BATCH_FILTER).start()
    status = Collector(cloud.url, gateway_status_topic("gw-flood")).start()
    run = start_gateway(
        processes, tmp_path, edge=edge.url, cloud=cloud.url, buffer=buffer, keys=keys_dir, extra=CAPS
    )
    # More rejects than --max-buffer-batches, interleaved with valid batches of both devices.
    flood = junk_of[flooder][:20] + [(s.topic, s.payload) for s in first] + junk_of[flooder][20:] + junk_of[other]
    publish_all(edge.url, flood)
    wait_until(
        lambda: {s.payload for s in first} <= forwarded.payloads(), 30, "the valid batches on the cloud"
    )
    data = wait_until(
        lambda: (d := stats(buffer))["quarantine"]["dropped"]["count"] == 46 - 8 and d, 30, "every reject counted"
    )
    assert data["states"]["quarantined"] == 8 and data["states"]["pending"] + data["states"]["inflight"] == 0
    held = {d["device"]: d["rows"] for d in data["quarantine"]["devices"]}
    assert held == {flooder: 5, other: 3}  # 5 per device, 8 in all
    assert dropped(data) == {(flooder, "malformed_json"): 35, (other, "malformed_json"): 3}
    assert data["quarantine"]["caps"] == {
        "rows_per_device": 5, "bytes_per_device": 8 * 1024 * 1024, "rows": 8, "bytes": 128 * 1024 * 1024,
    }  # fmt: skip
    assert data["quarantine"]["cap_reached"] == {"devices": [flooder], "total": True}
    last = wait_until(
        lambda: (s := latest_status(status, run.proc.pid)) and s.quarantine and s.quarantine.dropped == 38 and s,
        20,
        "a health status counting the dropped rejects",
    )
    assert last.quarantine == Quarantine(
        rows=8, bytes=data["quarantine"]["bytes"], dropped=38, devices_at_cap=1, total_at_cap=True
    )
    cap_lines = [line for line in run.log_text().splitlines() if "quarantine cap reached" in line]
    assert len(cap_lines) == 2, cap_lines  # one per device, not one per dropped reject
    assert any(f"device={flooder} reason=malformed_json" in line for line in cap_lines)

    run.proc.send_signal(signal.SIGTERM)
    assert run.proc.wait(30) == 0, run.log_text()
    again = start_gateway(
        processes, tmp_path, edge=edge.url, cloud=cloud.url, buffer=buffer, keys=keys_dir, extra=CAPS,
        name="gw-again",
    )  # fmt: skip
    publish_all(edge.url, junk_of[flooder][:2] + [(s.topic, s.payload) for s in later])
    wait_until(
        lambda: {s.payload for s in later} <= forwarded.payloads(), 30, "valid batches after the restart"
    )
    # Everything of the first run was acknowledged (nothing redelivered and counted twice):
    # only the two new rejects were added to the counters that survived the restart.
    data = wait_until(
        lambda: (d := stats(buffer))["quarantine"]["dropped"]["count"] == 40
        and d["states"]["delivered"] == len(valid)
        and d,
        30,
        "the new rejects counted and every valid batch delivered",
    )
    assert dropped(data) == {(flooder, "malformed_json"): 37, (other, "malformed_json"): 3}
    assert data["states"]["quarantined"] == 8
    wait_until(
        lambda: (s := latest_status(status, again.proc.pid)) and s.quarantine and s.quarantine.dropped == 40,
        20,
        "the restarted gateway's status with the counters of both runs",
    )
    forwarded.stop()
    status.stop()
