"""`devices run --live`: the rich table of a fleet snapshot, and the snapshot's own figures."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from rich.console import Console

from devices.fleet.config import FleetConfig
from devices.fleet.fleet import Fleet
from devices.live import LiveView, render
from devices.snapshot import FleetMonitor, FleetSnapshot
from edgetally.brokers import BrokerProcess
from protocol import Receipt, Registry, parse_broker_url
from tests.helpers import run_cli


def snapshot(**overrides: object) -> FleetSnapshot:
    values: dict[str, object] = dict(
        elapsed_s=12.5, running=True, confirm=True, devices=20, connected=11, connecting=4, offline=3,
        finished=2, batches=6000, sent=5000, acked=4500, receipted=3000, pending=2000, publishes=4700,
        resends=2, reconnects=5, connect_failures=7, connections_lost=6, sent_per_s=1234.4,
        acked_per_s=999.6, receipted_per_s=0.0, behaviours={"flap": 3, "replay": 1},
    )  # fmt: skip
    values.update(overrides)
    return FleetSnapshot(**values)  # type: ignore[arg-type]


def rows(text: str) -> list[list[str]]:
    """The table's body rows as cells (rich draws cells between '│')."""
    return [[c.strip() for c in line.split("│")[1:-1]] for line in text.splitlines() if line.startswith("│")]


def pairs(text: str) -> dict[str, str]:
    """label -> value for both halves of each row (devices | batches)."""
    found: dict[str, str] = {}
    for cells in rows(text):
        if cells[0]:
            found[cells[0]] = cells[1]
        if cells[2]:
            found[cells[2]] = " ".join(c for c in cells[3:] if c)
    return found


def recorded(snap: FleetSnapshot) -> str:
    console = Console(record=True, width=120, file=io.StringIO(), color_system=None)
    console.print(render(snap))
    return console.export_text()


def test_live_table_shows_devices_by_state_batches_by_stage_and_rates() -> None:
    text = recorded(snapshot())
    assert "EdgeTally fleet — running, 12.5s" in text
    cells = pairs(text)
    assert cells["connected"] == "11"
    assert cells["connecting"] == "4"
    assert cells["offline"] == "3"
    assert cells["finished"] == "2"
    assert cells["total"] == "20"
    assert cells["sent"] == "5,000 1,234/s"
    assert cells["acked by broker"] == "4,500 1,000/s"
    assert cells["receipted by cloud"] == "3,000 0/s"
    assert cells["pending in spools"] == "2,000"
    assert cells["to send in all"] == "6,000 83%"
    assert cells["reconnects"] == "5" and cells["connect failures"] == "7" and cells["connections lost"] == "6"
    assert cells["publishes"] == "4,700" and cells["resends"] == "2"


def test_live_table_lists_each_injected_misbehaviour_with_its_count() -> None:
    misbehaving = [c for c in rows(recorded(snapshot())) if c[0] == "misbehaviour"]
    assert misbehaving == [["misbehaviour", "flap", "injected", "3", ""], ["misbehaviour", "replay", "injected", "1", ""]]
    quiet = [c for c in rows(recorded(snapshot(behaviours={}))) if c[0] == "misbehaviours"]
    assert quiet == [["misbehaviours", "none", "", "", ""]]


def test_live_table_marks_receipts_not_awaited_without_confirm() -> None:
    cells = pairs(recorded(snapshot(confirm=False, running=False)))
    assert cells["receipted by cloud"].startswith("3,000 (not awaited)")


def test_live_view_draws_the_latest_snapshot_when_it_closes() -> None:
    monitor = FleetMonitor()
    console = Console(record=True, width=120, file=io.StringIO(), color_system=None)
    with LiveView(monitor, console):
        monitor.latest = snapshot(connected=19, running=False)
    text = console.export_text()
    assert "EdgeTally fleet — finished" in text
    assert pairs(text)["connected"] == "19"


def test_monitor_counts_pending_as_sent_but_not_receipted_and_rates_over_its_window(
    keys_dir: Path, registry: Registry
) -> None:
    config = FleetConfig(broker=parse_broker_url("mqtt://127.0.0.1:1"), keys=keys_dir, seed=3, batches_per_device=4,
                         devices=registry.election.devices[:3])  # fmt: skip
    fleet = Fleet(config, registry)
    fleet.prepare()
    monitor = FleetMonitor(window_s=60)
    first = monitor.observe(fleet)
    assert (first.sent, first.acked, first.receipted, first.pending) == (0, 0, 0, 0)
    assert first.connecting == 3 and first.batches == 12
    a, b, _ = fleet.tabulators
    for seq in (1, 2, 3):
        a.record_sent(seq)
        a.mark_acked(seq)
    b.record_sent(1)  # on the wire, no PUBACK yet
    last = a.batches[1]
    assert a.apply_receipt(Receipt(a.election.id, a.device, last.seq, last.body_hash))
    fleet.stats.connected, fleet.stats.down, fleet.stats.exited = 1, 1, 0
    fleet.stats.behaviours["flap"] = 2
    snap = monitor.observe(fleet)
    assert (snap.sent, snap.acked, snap.receipted, snap.pending) == (4, 3, 2, 2)
    assert (snap.connected, snap.offline, snap.connecting, snap.finished) == (1, 1, 1, 0)
    assert dict(snap.behaviours) == {"flap": 2}
    assert snap.sent_per_s > 0 and snap.acked_per_s > 0 and snap.receipted_per_s > 0
    assert monitor.latest is snap


@pytest.mark.integration
def test_devices_run_live_prints_the_final_table(broker: BrokerProcess, keys_dir: Path) -> None:
    result = run_cli(
        "devices", "run", "--broker", broker.url, "--keys", str(keys_dir), "--seed", "4",
        "--devices", "3", "--batches-per-device", "2", "--no-confirm", "--connect-rate", "0", "--live",
    )  # fmt: skip
    assert "EdgeTally fleet — finished" in result.stdout
    cells = pairs(result.stdout.split("Fleet summary")[0])
    assert cells["acked by broker"].startswith("6 ") and cells["finished"] == "3"
