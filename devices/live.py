"""`devices run --live`: a rich table of the fleet, redrawn about four times a second.

:func:`render` turns a :class:`~devices.snapshot.FleetSnapshot` into a table (pure; the tests
render it to a recording console). :class:`LiveView` wraps :class:`rich.live.Live`: rich's
refresh thread pulls the monitor's latest snapshot and renders it, so the fleet's loop only
publishes snapshots and never draws.
"""

from __future__ import annotations

import logging
import sys
from types import TracebackType

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from devices.snapshot import FleetMonitor, FleetSnapshot

REFRESH_PER_SECOND = 4


def _share(part: int, whole: int) -> str:
    return f"{100 * part / whole:.0f}%" if whole else "-"


def render(snap: FleetSnapshot) -> Table:
    """The fleet at one moment: devices by state, batches by stage, rates, misbehaviours."""
    state = "running" if snap.running else "finished"
    table = Table(title=f"EdgeTally fleet — {state}, {snap.elapsed_s:.1f}s", title_justify="left")
    table.add_column("devices", no_wrap=True)
    table.add_column("", justify="right")
    table.add_column("batches", no_wrap=True)
    table.add_column("", justify="right")
    table.add_column("", justify="right")
    receipted = f"{snap.receipted:,}" if snap.confirm else f"{snap.receipted:,} (not awaited)"
    devices = [
        ("connected", f"{snap.connected:,}"),
        ("connecting", f"{snap.connecting:,}"),
        ("offline", f"{snap.offline:,}"),
        ("finished", f"{snap.finished:,}"),
        ("total", f"{snap.devices:,}"),
    ]
    batches = [
        ("sent", f"{snap.sent:,}", f"{snap.sent_per_s:,.0f}/s"),
        ("acked by broker", f"{snap.acked:,}", f"{snap.acked_per_s:,.0f}/s"),
        ("receipted by cloud", receipted, f"{snap.receipted_per_s:,.0f}/s"),
        ("pending in spools", f"{snap.pending:,}", ""),
        ("to send in all", f"{snap.batches:,}", _share(snap.sent, snap.batches)),
    ]
    for (dev_name, dev_value), (stage, count, rate) in zip(devices, batches, strict=True):
        table.add_row(dev_name, dev_value, stage, count, rate)
    table.add_section()
    table.add_row("reconnects", f"{snap.reconnects:,}", "publishes", f"{snap.publishes:,}", "")
    table.add_row("connect failures", f"{snap.connect_failures:,}", "resends", f"{snap.resends:,}", "")
    table.add_row("connections lost", f"{snap.connections_lost:,}", "", "", "")
    table.add_section()
    if snap.behaviours:
        for name, injected in snap.behaviours.items():
            table.add_row("misbehaviour", name, "injected", f"{injected:,}", "")
    else:
        table.add_row("misbehaviours", "none", "", "", "")
    for (word, reason), ignored in snap.ignored.items():
        table.add_row(f"{word}s ignored", reason, "", f"{ignored:,}", "")
    return table


class LiveView:
    """Shows ``monitor.latest`` on ``console`` until closed (a context manager)."""

    def __init__(self, monitor: FleetMonitor, console: Console) -> None:
        self._monitor = monitor
        self._stderr = sys.stderr
        self._moved: list[logging.StreamHandler] = []  # type: ignore[type-arg]
        self._live = Live(
            get_renderable=self._renderable,
            console=console,
            refresh_per_second=REFRESH_PER_SECOND,
            transient=False,
            redirect_stderr=True,
            redirect_stdout=False,
        )

    def _renderable(self) -> RenderableType:
        snap = self._monitor.latest
        if snap is None:
            return Group(Text("fleet starting…"))
        return render(snap)

    def __enter__(self) -> LiveView:
        self._stderr = sys.stderr  # before rich redirects it
        self._live.start(refresh=True)
        # Log lines (the root handler edgetally/cli.py installed on stderr) would tear the
        # table: point that handler at rich's stderr proxy, which prints above the display.
        self._moved = []
        for handler in logging.getLogger().handlers:
            if isinstance(handler, logging.StreamHandler) and handler.stream is self._stderr:
                handler.setStream(sys.stderr)
                self._moved.append(handler)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for handler in self._moved:
            handler.setStream(self._stderr)
        self._live.refresh()  # draw the final snapshot before stopping
        self._live.stop()
