"""`edgetally devices ...`: provision keys, print expected totals, run a fleet."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from devices._exceptions import DeviceError
from devices.election_file import load_election, sample_election_path
from devices.fleet import Fleet, FleetConfig, FleetSummary
from devices.generator import expected_totals
from protocol import ProtocolError, Registry, parse_broker_url, provision

app = typer.Typer(help="Provision tabulators, compute expected totals, run a device fleet.", no_args_is_help=True)
out = Console()
err = Console(stderr=True)


def _fail(message: str) -> typer.Exit:
    err.print(f"[bold red]error:[/] {message}")
    return typer.Exit(2)


ELECTION_OPTION = typer.Option(None, "--election", help="Election YAML file (default: the shipped sample)")


def _resolve_election(path: Path | None) -> Path:
    return path if path is not None else sample_election_path()


@app.command("provision")
def provision_cmd(
    election_file: Path | None = ELECTION_OPTION,
    out_dir: Path = typer.Option(..., "--out", help="Directory for private keys and registry.json"),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace existing private keys"),
) -> None:
    """Create an Ed25519 key per device and the registry (device -> precinct, public key)."""
    try:
        election = load_election(_resolve_election(election_file))
        registry = provision(election, out_dir, overwrite=overwrite)
    except (DeviceError, ProtocolError) as exc:
        raise _fail(str(exc)) from exc
    table = Table(title=f"Provisioned {len(registry.devices)} devices for {election.id}")
    table.add_column("precinct")
    table.add_column("devices")
    table.add_column("key ids")
    for precinct in election.precincts:
        entries = [registry.devices[d] for d in precinct.devices]
        table.add_row(precinct.id, ", ".join(e.device for e in entries), ", ".join(e.kid for e in entries))
    out.print(table)
    out.print(f"registry: {out_dir / 'registry.json'}")


@app.command("expected")
def expected_cmd(
    election_file: Path | None = ELECTION_OPTION,
    seed: int = typer.Option(..., "--seed", help="Ballot generator seed"),
    batches: int = typer.Option(5, "--batches-per-device", min=1, help="Batches each device sends"),
    as_json: bool = typer.Option(False, "--json", help="Print JSON"),
) -> None:
    """Print the totals the cloud must end with (no broker needed)."""
    try:
        election = load_election(_resolve_election(election_file))
    except DeviceError as exc:
        raise _fail(str(exc)) from exc
    expected = expected_totals(election, seed, batches)
    if as_json:
        typer.echo(json.dumps(expected.to_mapping(), indent=2))
        return
    out.print(
        f"[bold]{election.name}[/] — seed {seed}, {len(election.devices)} devices x {batches} batches,"
        f" {expected.ballots:,} ballots"
    )
    for contest in election.contests:
        votes = expected.contests[contest.id]
        total = sum(votes.values()) or 1
        table = Table(title=contest.name)
        table.add_column("choice")
        table.add_column("votes", justify="right")
        table.add_column("share", justify="right")
        for choice in contest.choices:
            table.add_row(choice.name, f"{votes[choice.id]:,}", f"{100 * votes[choice.id] / total:.1f}%")
        out.print(table)


def _summary_table(summary: FleetSummary) -> Table:
    table = Table(title="Fleet summary")
    table.add_column("metric")
    table.add_column("value", justify="right")
    rows = [
        ("devices", summary.devices),
        ("batches", summary.batches),
        ("acked by broker", summary.acked),
        ("receipted by cloud", summary.receipted if summary.confirm else "-"),
        ("devices confirmed", f"{summary.confirmed_devices}/{summary.devices}" if summary.confirm else "-"),
        ("publishes (incl. resends)", summary.publishes),
        ("resends", summary.resends),
        ("reconnects", summary.reconnects),
        ("elapsed", f"{summary.elapsed_s:.1f}s"),
        ("acked/s", f"{summary.acked / summary.elapsed_s:.0f}" if summary.elapsed_s else "-"),
    ]
    for name, value in rows:
        table.add_row(name, str(value))
    return table


def _write_summary(path: Path, summary: FleetSummary, *, running: bool) -> None:
    """Atomically (re)write the JSON summary; ``running`` marks a progress snapshot."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({**summary.to_mapping(), "running": running}, indent=2))
    tmp.replace(path)


@app.command("run")
def run_cmd(
    broker: str = typer.Option(..., "--broker", help="Edge broker, mqtt://host:port"),
    keys: Path = typer.Option(..., "--keys", help="Directory written by `devices provision`"),
    election_file: Path | None = typer.Option(None, "--election", help="Election file; must match the registry's"),
    seed: int = typer.Option(..., "--seed"),
    batches: int = typer.Option(5, "--batches-per-device", min=1),
    rate: float = typer.Option(0.0, "--rate", min=0.0, help="Fleet-wide batches per second (0 = unpaced)"),
    devices: int = typer.Option(0, "--devices", min=0, help="Run only the first N devices (0 = all)"),
    confirm: bool = typer.Option(True, "--confirm/--no-confirm", help="Keep batches until the cloud receipts them"),
    resend_after: float = typer.Option(5.0, "--resend-after", min=0.1, help="Seconds without receipt progress before resending"),
    timeout: float = typer.Option(600.0, "--timeout", min=1.0, help="Give up after this many seconds"),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON"),
    summary_file: Path | None = typer.Option(None, "--summary", help="Also write the JSON summary to this file"),
) -> None:
    """Run every device of the election: sign, publish QoS 1, keep until acknowledged/receipted."""
    try:
        address = parse_broker_url(broker)
        registry = Registry.load(keys)
        if election_file is not None:
            election = load_election(election_file)
            if election.to_mapping() != registry.election.to_mapping():
                raise _fail(f"{election_file} is not the election the keys in {keys} were provisioned for")
        chosen = registry.election.devices[:devices] if devices else None
        config = FleetConfig(
            broker=address,
            keys=keys,
            seed=seed,
            batches_per_device=batches,
            rate=rate,
            confirm=confirm,
            resend_after=resend_after,
            timeout=timeout,
            devices=chosen,
        )
        fleet = Fleet(config, registry)
        fleet.prepare()
    except (DeviceError, ProtocolError) as exc:
        raise _fail(str(exc)) from exc

    progress = Progress(
        TextColumn("{task.description:<22}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err,
        transient=False,
    )
    total = fleet.stats.batches
    acked_task = progress.add_task("acked by broker", total=total)
    receipt_task = progress.add_task("receipted by cloud", total=total, visible=confirm)

    last_write = [0.0]

    def tick(f: Fleet) -> None:
        progress.update(acked_task, completed=f.acked)
        progress.update(receipt_task, completed=f.receipted)
        if summary_file is not None and time.monotonic() - last_write[0] >= 0.5:
            last_write[0] = time.monotonic()
            _write_summary(summary_file, f.summary(), running=True)

    with progress:
        summary = asyncio.run(fleet.run(on_tick=tick))
    if summary_file is not None:
        _write_summary(summary_file, summary, running=False)
    if as_json:
        typer.echo(json.dumps(summary.to_mapping(), indent=2))
    else:
        out.print(_summary_table(summary))
        if summary.unconfirmed_devices:
            out.print(f"[red]unconfirmed:[/] {', '.join(summary.unconfirmed_devices)}")
    raise typer.Exit(0 if summary.ok else 1)
