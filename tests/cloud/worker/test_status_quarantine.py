"""`cloud gateways` shows what each gateway's quarantine caps dropped (a device flooding rejects),
from the gateway's own status message (protocol/gateway_status.py ``quarantine``)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

from cloud.db import make_engine
from cloud.worker.status import StatusStore, StatusUpdate
from protocol.gateway_status import GatewayStatus, Quarantine
from tests.helpers import run_cli


def _status(gateway: str, quarantine: Quarantine | None) -> StatusUpdate:
    status = GatewayStatus(
        gateway=gateway, state="online", started_at="2026-11-03T19:00:00Z", pid=7, version="0.1.0",
        at="2026-11-03T20:00:00Z", uplink="up", edge="up",
        buffer={"pending": 0, "inflight": 0, "delivered": 9, "quarantined": 100},
        quarantine=quarantine,
    )  # fmt: skip
    return StatusUpdate(status, status.to_bytes(), datetime(2026, 11, 3, 20, 0, 1, tzinfo=UTC))


def test_cloud_gateways_shows_the_rejects_each_gateways_caps_dropped(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'c.db'}"
    run_cli("cloud", "migrate", "--db", url)
    engine = make_engine(url)
    flooded = Quarantine(rows=100, bytes=9_000, dropped=4_321, devices_at_cap=1, total_at_cap=False)
    calm = Quarantine(rows=2, bytes=300, dropped=0, devices_at_cap=0, total_at_cap=False)
    StatusStore(engine).record([_status("gw-a", flooded), _status("gw-b", calm), _status("gw-c", None)])
    engine.dispose()

    got = {g["gateway"]: g for g in json.loads(run_cli("cloud", "gateways", "--db", url, "--json").stdout)}
    assert got["gw-a"]["quarantine"] == {"rows": 100, "bytes": 9_000, "dropped": 4_321, "devices_at_cap": 1, "total_at_cap": False}
    assert got["gw-b"]["quarantine"]["dropped"] == 0
    assert got["gw-c"]["quarantine"] is None  # an older gateway: unknown, not zero
    table = run_cli("cloud", "gateways", "--db", url).stdout
    assert "rejects dropped" in table and "4,321 (1 device(s) at cap)" in table
