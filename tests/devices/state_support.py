"""A child process for the device-state crash tests: devices that sign, record and "send".

Run as ``python -m tests.devices.state_support --keys DIR --state-dir DIR --wire FILE ...``.
The "network" is the wire file: one JSON line per send (device, seq, payload, resend),
appended unbuffered, so what a SIGKILL leaves in it is exactly what was sent. The driver
works in rounds, the way a fleet group-commits: record every device's next batch in one
transaction (write-ahead), send them, then record their acknowledgements in one transaction.

``--kill-at DEVICE:SEQ:POINT`` makes the process SIGKILL itself at that point, with POINT one
of ``before-record`` (inside the round's open transaction), ``after-record`` (committed, not
sent), ``after-send`` (sent, not acked) and ``after-ack`` (ack committed). On start, every
recorded-but-unacknowledged batch is resent first. A JSON report goes to ``--report``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from pathlib import Path

from devices._exceptions import DeviceError
from devices.state import StateStore
from devices.tabulator import Tabulator
from protocol import Registry, load_signing_key

POINTS = ("before-record", "after-record", "after-send", "after-ack")


def read_wire(path: Path) -> list[dict[str, object]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.endswith("}")]


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--keys", type=Path, required=True)
    parser.add_argument("--state-dir", type=Path, required=True)
    parser.add_argument("--wire", type=Path, required=True)
    parser.add_argument("--report", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--batches", type=int, default=5)
    parser.add_argument("--devices", type=int, default=3)
    parser.add_argument("--kill-at", default="")
    args = parser.parse_args(argv)
    kill = tuple(args.kill_at.split(":")) if args.kill_at else None

    def checkpoint(device: str, seq: int, point: str) -> None:
        if kill is not None and kill == (device, str(seq), point):
            os.kill(os.getpid(), signal.SIGKILL)

    registry = Registry.load(args.keys)
    election = registry.election
    store = StateStore(args.state_dir)
    try:
        store.open()
        tabs = [
            Tabulator.open(
                election, device, load_signing_key(args.keys, device), args.seed, args.batches, store
            )
            for device in election.devices[: args.devices]
        ]
    except DeviceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    wire_fd = os.open(args.wire, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def send(tab: Tabulator, seq: int, *, resend: bool) -> None:
        payload = tab.batches[seq - 1].payload.decode()
        line = {"device": tab.device, "seq": seq, "payload": payload, "resend": resend}
        os.write(wire_fd, (json.dumps(line) + "\n").encode())

    resumed = {t.device: t.sent_seq for t in tabs}
    resent: dict[str, list[int]] = {t.device: [] for t in tabs}
    for tab in tabs:  # what the broker never acknowledged goes out again first
        for batch in tab.unacked():
            if batch.seq <= tab.sent_seq:
                send(tab, batch.seq, resend=True)
                tab.mark_acked(batch.seq)
                resent[tab.device].append(batch.seq)
    while True:
        round_ = [(t, t.sent_seq + 1) for t in tabs if t.sent_seq < len(t.batches)]
        if not round_:
            break
        with store.group():
            for tab, seq in round_:
                checkpoint(tab.device, seq, "before-record")
                tab.record_sent(seq)
        for tab, seq in round_:
            checkpoint(tab.device, seq, "after-record")
        for tab, seq in round_:
            send(tab, seq, resend=False)
            checkpoint(tab.device, seq, "after-send")
        with store.group():
            for tab, seq in round_:
                tab.mark_acked(seq)
        for tab, seq in round_:
            checkpoint(tab.device, seq, "after-ack")
    os.close(wire_fd)
    store.close()
    report = {"resumed": resumed, "resent": resent}
    tmp = args.report.with_suffix(".tmp")
    tmp.write_text(json.dumps(report))
    os.replace(tmp, args.report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
