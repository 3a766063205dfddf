"""``edgetally scenario list|run``: the scenario library and the runner, with a live view."""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from edgetally.processes import sigterm_as_ctrl_c
from edgetally.scenarios.model import ScenarioError, load_scenario, shipped, shipped_dir

if TYPE_CHECKING:
    from edgetally.brokers import BrokerProcess
    from edgetally.processes import Component
    from edgetally.scenarios.cluster import ClusterNode
    from edgetally.scenarios.runner import Event, Report, Sample
    from edgetally.scenarios.world import World

app = typer.Typer(help="Scenarios: a topology and a timeline of faults, then a verdict", no_args_is_help=True)

DEFAULT_PG_ADMIN = os.environ.get("EDGETALLY_PG_ADMIN_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")


@app.command("list")
def list_cmd(json_out: bool = typer.Option(False, "--json", help="Print JSON")) -> None:
    """The shipped scenarios (scenarios/*.yaml)."""
    try:
        scenarios = shipped()
    except ScenarioError as exc:
        typer.echo(f"Error: {exc}", err=True)
        raise typer.Exit(2) from exc
    if json_out:
        rows = [
            {
                "name": s.name,
                "file": str(s.path),
                "tags": list(s.tags),
                "devices": s.topology.devices,
                "sites": s.topology.sites,
                "cloud_workers": s.topology.cloud_workers,
                "database": s.topology.database,
                "faults": [a.describe() for a in s.timeline],
                "description": s.description.strip(),
            }
            for s in scenarios
        ]
        typer.echo(json.dumps(rows, indent=2))
        return
    table = Table(title=f"Scenarios in {shipped_dir()}", title_justify="left")
    table.add_column("name", no_wrap=True)
    table.add_column("topology", overflow="fold", max_width=22)
    table.add_column("faults", overflow="fold", max_width=14)
    table.add_column("description", overflow="fold", ratio=1)
    for s in scenarios:
        t = s.topology
        topology = f"{t.devices} devices, {t.sites} site(s), {t.cloud_workers} worker(s), {t.database}"
        faults = f"{len(s.timeline)} step(s), last at {s.last_fault_at or 0:g}s"
        table.add_row(s.name + (" (long)" if "long" in s.tags else ""), topology, faults, s.description.strip())
    Console().print(table)


def _find(name_or_file: str) -> Path:
    path = Path(name_or_file)
    if path.exists():
        return path
    candidate = shipped_dir() / f"{name_or_file}.yaml"
    if candidate.exists():
        return candidate
    raise ScenarioError(f"{name_or_file}: no such file, and no shipped scenario of that name (see `edgetally scenario list`)")


class _LiveView:
    """Component states, links, buffer depth and batches per stage, refreshed as the runner samples."""

    def __init__(self, console: Console, name: str) -> None:
        self.console = console
        self.name = name
        self.live: Live | None = None

    def __call__(self, sample: Sample, events: list[Event], world: World) -> None:
        if self.live is not None:
            self.live.update(self.render(sample, events, world))

    def render(self, sample: Sample, events: list[Event], world: World) -> Group:
        parts = Table.grid(padding=(0, 2))
        parts.add_column()
        parts.add_column()
        components = Table(title="components", title_justify="left", show_edge=False)
        components.add_column("name")
        components.add_column("state")
        pieces: list[BrokerProcess | Component | ClusterNode] = [*world.cloud_broker_processes(), *world.clouds]
        for site in world.sites:
            pieces += [site.edge, site.gateway, *(f.component for f in site.fleets)]
        for extra in (world.rogue, world.serve):
            if extra.starts:
                pieces.append(extra)
        for piece in pieces:
            running = piece.running
            state = "[green]running[/]" if running else "[red]down[/]"
            if not running and getattr(piece, "returncode", None) == 0:
                state = "[blue]finished[/]"
            components.add_row(piece.name, state)
        stages = Table(title="batches", title_justify="left", show_edge=False)
        stages.add_column("stage")
        stages.add_column("count", justify="right")
        fleet = sample.fleet
        for label, key in (
            ("sent by devices", 'edgetally_fleet_batches_total{stage="sent"}'),
            ("acked by edge broker", 'edgetally_fleet_batches_total{stage="acked"}'),
            ("receipted", 'edgetally_fleet_batches_total{stage="receipted"}'),
        ):
            stages.add_row(label, f"{int(fleet[key]):,}" if key in fleet else "-")
        stages.add_row("gateway backlog", f"{sample.backlog:,} (peak {sample.peak_backlog:,})")
        stages.add_row("in the ledger", f"{sample.ledger:,}" + (f" / {sample.expected:,}" if sample.expected else ""))
        parts.add_row(components, stages)
        recent = Table(title="timeline", title_justify="left", show_edge=False)
        recent.add_column("at", justify="right")
        recent.add_column("event")
        for event in events[-8:]:
            mark = "" if event.ok else " [red]✗[/]"
            recent.add_row(f"{event.at:.1f}s", f"{event.what}{mark} {event.detail}".strip())
        header = Text(f"scenario {self.name} · {sample.phase} · {sample.elapsed:.1f}s", style="bold")
        return Group(header, parts, recent)


@app.command("run")
def run_cmd(
    scenario: str = typer.Argument(..., help="A scenario file, or the name of a shipped one"),
    seed: int | None = typer.Option(None, "--seed", help="Override the scenario's seed"),
    speed: float = typer.Option(1.0, "--speed", min=0.01, help="Play the timeline X times as fast"),
    devices: int | None = typer.Option(None, "--devices", min=1, help="Override the topology's device count"),
    batches: int | None = typer.Option(None, "--batches", min=1, help="Override the batches per device"),
    report: Path | None = typer.Option(None, "--report", help="Write the report (events, verdict) to this JSON file"),
    workdir: Path | None = typer.Option(None, "--workdir", help="Where the brokers, buffers and logs go (default: a temporary directory)"),
    keep: bool = typer.Option(False, "--keep", help="Keep the working directory (logs, buffers, database)"),
    postgres: str = typer.Option(DEFAULT_PG_ADMIN, "--postgres", help="PostgreSQL URL allowed to CREATE DATABASE (scenarios with database: postgresql)"),
    fleet_timeout: float = typer.Option(300.0, "--fleet-timeout", min=5.0, help="Give the fleets this long to finish after the timeline"),
    live: bool | None = typer.Option(None, "--live/--no-live", help="Live view (default: on a terminal)"),
    json_out: bool = typer.Option(False, "--json", help="Print the report as JSON instead of tables"),
    plain: bool = typer.Option(False, "--plain", help="Anonymous MQTT over TCP without ACLs (default: TLS, client certificates, ACLs)"),
) -> None:
    """Run a scenario: start its world, play its faults, wait for drain, print the verdict (exit 0 only if it holds)."""
    from edgetally.scenarios.runner import (  # the world's processes: only to run
        RunOptions,
        ScenarioRunner,
    )

    console = Console(stderr=json_out)
    try:
        loaded = load_scenario(_find(scenario))
        overrides = {k: v for k, v in (("devices", devices), ("batches", batches)) if v is not None}
        if overrides:
            loaded = loaded.with_topology(**overrides)
            if loaded.topology.devices < loaded.topology.sites:
                raise ScenarioError(f"--devices {loaded.topology.devices} cannot fill {loaded.topology.sites} sites")
    except ScenarioError as exc:
        typer.echo(f"Error: {exc}", err=True)
        raise typer.Exit(2) from exc
    temporary = workdir is None
    work = workdir or Path(tempfile.mkdtemp(prefix=f"edgetally-scenario-{loaded.name}-"))
    options = RunOptions(workdir=work, speed=speed, seed=seed, postgres_admin_url=postgres, fleet_timeout=fleet_timeout, plain=plain)
    show_live = (sys.stdout.isatty() and not json_out) if live is None else live
    view = _LiveView(console, loaded.name)
    runner = ScenarioRunner(loaded, options, observer=view if show_live else None)
    result: Report | None = None
    try:
        with sigterm_as_ctrl_c():  # a supervisor's stop takes the Ctrl-C path: the world stopped
            if show_live:
                with Live(console=console, refresh_per_second=4, transient=True) as live_view:
                    view.live = live_view
                    result = runner.run()
            else:
                result = runner.run()
    except KeyboardInterrupt as exc:  # Ctrl-C or SIGTERM; the runner stopped its world on the way
        runner.world.kill_all()
        typer.echo(f"interrupted ({exc or 'Ctrl-C'}): every process stopped; {work}", err=True)
        raise typer.Exit(130) from None
    if report is not None:
        result.write(report)
    if json_out:
        typer.echo(json.dumps(result.to_mapping(), indent=2))
    else:
        _print(console, result)
    if temporary and not keep and result.ok:
        shutil.rmtree(work, ignore_errors=True)
    else:
        console.print(f"working directory kept: {work}")
    raise typer.Exit(0 if result.ok else 1)


def _print(console: Console, result: Report) -> None:
    events = Table(title=f"Scenario {result.scenario.name}: timeline", title_justify="left")
    events.add_column("at", justify="right")
    events.add_column("event")
    events.add_column("", justify="center")
    events.add_column("detail", overflow="fold")
    for event in result.events:
        events.add_row(f"{event.at:.1f}s", event.what, "[green]✓[/]" if event.ok else "[bold red]✗[/]", event.detail)
    console.print(events)
    if result.error:
        console.print(f"[bold red]ERROR[/]: {result.error}")
    if result.verdict is not None:
        result.verdict.render(console)
