"""`edgetally devices ...`: provision keys, print expected totals, run a fleet."""

from __future__ import annotations

import json
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.console import Console
from rich.table import Table

from devices._exceptions import DeviceError
from devices.election_file import load_election, sample_election_path
from protocol import ProtocolError

if TYPE_CHECKING:
    from devices.fleet.stats import FleetSummary
    from devices.state import StateStore

# Each command imports what it runs (the fleet, its MQTT client, the state store) in its own
# body, so `devices provision` or `devices expected` does not pay for the fleet.

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
    pki: Path | None = typer.Option(None, "--pki", help="also a TLS client certificate per device from this CA (`edgetally pki init`)"),
    operators: int = typer.Option(0, "--operators", min=0, help="N operator keys (operators/operator-1.pem ...), M supervisor keys, a manual-entry source per precinct (`edgetally entry`)"),
    supervisors: int = typer.Option(1, "--supervisors", min=0, help="M, with --operators"),
) -> None:
    """Create an Ed25519 key per device and the registry (device -> precinct, public key);
    with --pki, also each device's TLS client certificate beside its key; --operators: see it."""
    from protocol import provision
    from protocol.pki import load_authority, provision_devices

    try:
        election = load_election(_resolve_election(election_file))
        ca = load_authority(pki) if pki is not None else None  # a missing CA refused before any key is made
        registry = provision(election, out_dir, overwrite=overwrite, operators=operators, supervisors=supervisors)
        if ca is not None:
            certified = provision_devices(ca, sorted(registry.devices), out_dir, overwrite=overwrite)
            out.print(f"TLS client certificates: {len(certified)} in {out_dir / 'clients'}, CA {out_dir / 'ca.crt'}")
    except (DeviceError, ProtocolError) as exc:
        raise _fail(str(exc)) from exc
    table = Table("precinct", "devices", "key ids", title=f"Provisioned {len(registry.devices)} devices for {election.id}")
    for precinct in election.precincts:
        entries = [registry.devices[d] for d in precinct.devices]
        table.add_row(precinct.id, ", ".join(e.device for e in entries), ", ".join(e.kid for e in entries))
    out.print(table)
    if manual := sorted(d for d, e in registry.devices.items() if e.source == "manual"):
        out.print(f"manual-entry sources: {len(manual)} ({manual[0]} ...); operators: {', '.join(sorted(registry.operators))}")
    out.print(f"registry: {out_dir / 'registry.json'}")


@app.command("expected")
def expected_cmd(
    election_file: Path | None = ELECTION_OPTION,
    seed: int = typer.Option(..., "--seed", help="Ballot generator seed"),
    batches: int = typer.Option(5, "--batches-per-device", min=1, help="Batches each device sends"),
    as_json: bool = typer.Option(False, "--json", help="Print JSON"),
) -> None:
    """Print the totals the cloud must end with (no broker needed)."""
    from devices.generator import expected_totals

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


@app.command("synth")
def synth_cmd(
    devices: int = typer.Option(..., "--devices", min=1, help="Devices in the election"),
    precincts: int = typer.Option(0, "--precincts", min=0, help="Precincts (default: devices / 3)"),
    seed: int = typer.Option(1, "--seed", help="Seed for the registered-voter counts"),
    out_file: Path = typer.Option(..., "--out", help="Election YAML file to write"),
) -> None:
    """Write a synthetic election of any size (for load tests and the fleet benchmark)."""
    import yaml

    from devices.synth import synth_mapping

    try:
        mapping = synth_mapping(devices, precincts or max(1, devices // 3), seed)
        out_file.write_text(yaml.safe_dump(mapping, sort_keys=False))
    except (ValueError, OSError) as exc:
        raise _fail(str(exc)) from exc
    out.print(f"wrote {out_file}: {devices:,} devices in {precincts or max(1, devices // 3):,} precincts")


def _summary_table(summary: FleetSummary) -> Table:
    table = Table(title="Fleet summary")
    table.add_column("metric")
    table.add_column("value", justify="right")
    per_device = summary.connection_kib_per_device
    rows = [
        ("devices", summary.devices),
        ("batches", summary.batches),
        ("acked by broker", summary.acked),
        ("receipted by cloud", summary.receipted if summary.confirm else "-"),
        ("devices confirmed", f"{summary.confirmed_devices}/{summary.devices}" if summary.confirm else "-"),
        ("publishes (incl. resends)", summary.publishes),
        ("resends", summary.resends),
        ("most devices connected at once", summary.max_connected),
        ("time until all connected", f"{summary.all_connected_s:.1f}s" if summary.all_connected_s is not None else "-"),
        ("connect failures", summary.connect_failures_text()),
        ("connections lost", summary.connections_lost),
        ("reconnects", summary.reconnects),
        ("last full reconnection", f"{summary.full_reconnect_s:.1f}s" if summary.full_reconnect_s is not None else "-"),
        ("RSS per connection", f"{per_device:.1f} KiB" if per_device is not None else "-"),
        ("elapsed", f"{summary.elapsed_s:.1f}s"),
        ("acked/s", f"{summary.acked / summary.elapsed_s:.0f}" if summary.elapsed_s else "-"),
        ("steady acked/s", f"{summary.steady_acked_per_s:.0f}" if summary.steady_acked_per_s else "-"),
        *[(f"{word}s ignored ({reason})", count) for word, reasons in summary.ignored.items() for reason, count in reasons.items()],
    ]
    for name, value in rows:
        table.add_row(name, str(value))
    return table


def _run_sharded(
    child_args: Callable[[int, Path], list[str]],
    processes: int,
    timeout: float,
    confirm: bool,
    summary_file: Path | None,
    as_json: bool,
    truth_file: Path | None = None,
    show_live: bool = False,
) -> None:
    from rich.live import Live

    from devices.shards import run_shards
    from devices.truth import load_truth, merge_truths, write_truth

    last_write = [0.0]
    board: Live | None = None

    def tick(summary: FleetSummary) -> None:
        if board is not None:  # the shards' summaries, added up, as they come
            table = _summary_table(summary)
            table.title = f"Fleet: {processes} processes, running"
            board.update(table)
        if summary_file is not None and time.monotonic() - last_write[0] >= 0.5:
            last_write[0] = time.monotonic()
            _write_summary(summary_file, summary, running=True)

    display = Live(console=out, refresh_per_second=4, transient=True) if show_live else err.status(f"{processes} fleet shards running")
    with tempfile.TemporaryDirectory(prefix="edgetally-shards-") as tmp, display as shown:
        board = shown if isinstance(shown, Live) else None
        try:
            summary = run_shards(child_args, processes, Path(tmp), timeout, confirm, on_tick=tick)
            if truth_file is not None:  # each shard wrote its devices' truth: one file of them all
                parts = [load_truth(_shard_truth(Path(tmp) / "x", k)) for k in range(processes)]
                write_truth(truth_file, merge_truths(parts))
        except (DeviceError, OSError, ValueError) as exc:
            raise _fail(str(exc)) from exc
        except KeyboardInterrupt as stop:  # Ctrl-C or SIGTERM: run_shards stopped every shard
            err.print(f"interrupted ({stop or 'Ctrl-C'}): every shard was stopped too")
            raise typer.Exit(130) from None
    if summary_file is not None:
        _write_summary(summary_file, summary, running=False)
    if as_json:
        typer.echo(json.dumps({**summary.to_mapping(), "processes": processes}, indent=2))
    else:
        out.print(_summary_table(summary))
    raise typer.Exit(0 if summary.ok else 1)


def _shard_truth(beside: Path, k: int) -> Path:
    """Where shard ``k`` of a ``--processes`` run writes its truth (beside its summary)."""
    return beside.with_name(f"truth-{k}.json")


def _write_summary(path: Path, summary: FleetSummary, *, running: bool) -> None:
    """Atomically (re)write the JSON summary; ``running`` marks a progress snapshot."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({**summary.to_mapping(), "running": running}, indent=2))
    tmp.replace(path)


@app.command("run")
def run_cmd(
    broker: str = typer.Option(..., "--broker", help="Edge broker, mqtts://host:port (TLS: each device's certificate from --keys) or mqtt://host:port"),
    keys: Path = typer.Option(..., "--keys", help="Directory written by `devices provision`"),
    election_file: Path | None = typer.Option(None, "--election", help="Election file; must match the registry's"),
    seed: int = typer.Option(..., "--seed"),
    batches: int = typer.Option(5, "--batches-per-device", min=1),
    rate: float = typer.Option(0.0, "--rate", min=0.0, help="Fleet-wide batches per second (0 = unpaced)"),
    devices: int = typer.Option(0, "--devices", min=0, help="Run only the first N devices (0 = all)"),
    confirm: bool = typer.Option(True, "--confirm/--no-confirm", help="Keep batches until the cloud receipts them"),
    resend_after: float = typer.Option(5.0, "--resend-after", min=0.1, help="Seconds without receipt progress before resending"),
    resend_cap: float = typer.Option(60.0, "--resend-cap", min=0.1, help="Resend interval cap, seconds (it doubles per resend without progress)"),
    timeout: float = typer.Option(600.0, "--timeout", min=1.0, help="Give up after this many seconds"),
    connect_rate: float = typer.Option(200.0, "--connect-rate", min=0.0, help="New connections per second, fleet-wide (0 = unpaced)"),
    connect_concurrency: int = typer.Option(256, "--connect-concurrency", min=0, help="Connects in progress at once (TCP + TLS + CONNACK), fleet-wide; a device waits for a slot before its connect timeout starts (0 = no cap)"),
    keepalive: int = typer.Option(30, "--keepalive", min=1, max=65535, help="MQTT keepalive of every device, seconds"),
    reconnect_min: float = typer.Option(0.5, "--reconnect-min", min=0.01, help="First reconnect backoff ceiling, seconds (full jitter)"),
    reconnect_max: float = typer.Option(30.0, "--reconnect-max", min=0.01, help="Reconnect backoff cap, seconds"),
    sources: str | None = typer.Option(None, "--source-addresses", help="Connect from these local addresses, spread over the devices: a count N (127.0.0.2 on) or A,B,... in 127.0.0.0/8 (one address has ~28k ports)"),
    hold: bool = typer.Option(False, "--hold", help="Publish only once every device is connected; stay connected until all are done"),
    processes: int = typer.Option(1, "--processes", min=1, help="Shard the devices across N child processes"),
    shard: str | None = typer.Option(None, "--shard", hidden=True, help="K/N: run only shard K of N (set by --processes)"),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON"),
    summary_file: Path | None = typer.Option(None, "--summary", help="Also write the JSON summary to this file"),
    live: bool | None = typer.Option(None, "--live/--no-live", help="Live table of the fleet (default: on when stdout is a terminal; never with --json; with --processes the shards' summaries added up)"),
    metrics_port: int | None = typer.Option(None, "--metrics-port", min=0, max=65535, help="Prometheus metrics on http://127.0.0.1:P/metrics (0 = a free port, printed on stderr); with --processes N, shard k serves P+k"),
    metrics_linger: float = typer.Option(0.0, "--metrics-linger", min=0.0, help="After the run, keep serving the final metrics this many seconds (SIGTERM/SIGINT ends it)"),
    state_dir: Path | None = typer.Option(None, "--state-dir", help="Keep each device's chain and unreceipted batches here (resume after a crash)"),
    behaviour_specs: list[str] = typer.Option([], "--behaviour", help="NAME=SHARE (5% or a count), repeatable: flap, reboot, power_loss, duplicate, replay, tampered, wrong_key, clock_skew, slow, silent, after_final, burst, lossy (first publish of 1-2 mid-chain seqs lost; the cloud repairs the gap)"),
    behaviours_file: Path | None = typer.Option(None, "--behaviours", help="YAML behaviour profile (per device and/or shares)"),
    truth_file: Path | None = typer.Option(None, "--truth", help="Write the ground truth (what the cloud must accept and reject, gaps it must repair) to this JSON file"),
) -> None:
    """Run every device of the election: sign, publish QoS 1, keep until acknowledged/receipted."""
    import asyncio

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from devices.behaviours import EMPTY, assign, load_profile, profile_from_specs
    from devices.fleet.config import FleetConfig
    from devices.fleet.fleet import Fleet
    from devices.limits import raise_nofile, source_addresses
    from devices.live import LiveView
    from devices.metrics import MetricsServer, linger
    from devices.preflight import check_fleet_inputs, check_tls_files, load_registry
    from devices.shards import parse_shard, pick, sigterm_as_ctrl_c
    from devices.snapshot import FleetMonitor
    from devices.state import StateStore
    from devices.truth import build_truth, write_truth
    from protocol import parse_broker_url

    store: StateStore | None = None
    sigterm_as_ctrl_c()  # a supervisor's stop saves the state as Ctrl-C does; a shard's too
    try:
        address = parse_broker_url(broker)
        files_only = check_fleet_inputs(election_file, keys, [])  # election file and registry; no key read yet
        everyone = files_only.devices[:devices] if devices else files_only.devices
        chosen = pick(everyone, parse_shard(shard)) if shard is not None else (everyone if devices else None)
        check_fleet_inputs(election_file, keys, chosen)  # every key that will sign
        check_tls_files(keys, chosen or files_only.devices) if address.tls else None  # every device's certificate
        registry = load_registry(keys, chosen)  # only the entries of the devices this process runs
        profile = EMPTY.merged(profile_from_specs(behaviour_specs))
        if behaviours_file is not None:
            profile = profile.merged(load_profile(behaviours_file))
        assigned = assign(everyone, profile, seed)  # over the whole fleet: the same whatever the sharding
        if chosen is not None:
            mine = set(chosen)
            assigned = {d: b for d, b in assigned.items() if d in mine}
        if processes > 1:
            if shard is not None:
                raise _fail("--processes and --shard do not mix")
            if metrics_port == 0:
                raise _fail("--metrics-port 0 (any free port) does not mix with --processes: give a port P (shard k serves P+k)")

            def child_args(k: int, file: Path) -> list[str]:
                return [
                    "devices", "run", "--broker", broker, "--keys", str(keys), "--seed", str(seed),
                    "--batches-per-device", str(batches), "--rate", str(rate / processes),
                    "--devices", str(devices), "--confirm" if confirm else "--no-confirm",
                    "--resend-after", str(resend_after), "--resend-cap", str(resend_cap), "--timeout", str(timeout),
                    "--connect-rate", str(connect_rate / processes), "--keepalive", str(keepalive), "--connect-concurrency", str(max(1, connect_concurrency // processes) if connect_concurrency else 0),
                    "--reconnect-min", str(reconnect_min), "--reconnect-max", str(reconnect_max),
                    *(["--source-addresses", sources] if sources else []),
                    *(["--hold"] if hold else []), "--shard", f"{k}/{processes}", "--summary", str(file), "--json",
                    *(["--state-dir", str(state_dir)] if state_dir is not None else []),
                    *[a for spec in behaviour_specs for a in ("--behaviour", spec)],
                    *(["--behaviours", str(behaviours_file)] if behaviours_file is not None else []),
                    *(["--metrics-port", str(metrics_port + k), "--metrics-linger", str(metrics_linger)] if metrics_port is not None else []),
                    *(["--truth", str(_shard_truth(file, k))] if truth_file is not None else []),
                ]  # fmt: skip

            show = (live if live is not None else out.is_terminal) and not as_json
            _run_sharded(child_args, processes, timeout, confirm, summary_file, as_json, truth_file, show)
            return
        config = FleetConfig(
            broker=address,
            keys=keys,
            seed=seed,
            batches_per_device=batches,
            rate=rate,
            confirm=confirm,
            resend_after=resend_after, resend_cap=max(resend_cap, resend_after),
            timeout=timeout, devices=chosen,
            connect_rate=connect_rate, connect_concurrency=connect_concurrency, keepalive=keepalive,
            reconnect_min=reconnect_min, reconnect_max=max(reconnect_max, reconnect_min),
            hold=hold,
            behaviours=assigned,
            source_addresses=source_addresses(sources) if sources else (),
        )
        raise_nofile(len(chosen or files_only.devices) + 1024)  # a socket per device
        if state_dir is not None:
            store = StateStore(state_dir).open()
        fleet = Fleet(config, registry, store)
        fleet.prepare()  # with a store: every tabulator opened and written ahead in one group (one fsync)
        if truth_file is not None:
            write_truth(truth_file, build_truth(fleet))  # before the first publish
    except (DeviceError, ProtocolError) as exc:
        if store is not None:
            store.close()
        raise _fail(str(exc)) from exc

    columns = (TextColumn("{task.description:<22}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    progress = Progress(*columns, console=err, transient=False)
    total = fleet.stats.batches
    connected_task = progress.add_task("connected", total=fleet.stats.devices)
    acked_task = progress.add_task("acked by broker", total=total)
    receipt_task = progress.add_task("receipted by cloud", total=total, visible=confirm)

    last_write = [0.0]
    monitor = FleetMonitor()
    show_live = (live if live is not None else out.is_terminal) and not as_json
    metrics = MetricsServer(metrics_port, lambda: monitor.latest) if metrics_port is not None else None
    if metrics is not None:
        try:
            metrics.start()
        except DeviceError as exc:
            raise _fail(str(exc)) from exc
        err.print(f"metrics: {metrics.url}", highlight=False, soft_wrap=True)

    def tick(f: Fleet) -> None:
        monitor.observe(f)
        progress.update(connected_task, completed=f.stats.connected)
        progress.update(acked_task, completed=f.acked)
        progress.update(receipt_task, completed=f.receipted)
        if summary_file is not None and time.monotonic() - last_write[0] >= 0.5:
            last_write[0] = time.monotonic()
            _write_summary(summary_file, f.summary(), running=True)

    try:
        with LiveView(monitor, out) if show_live else progress:
            try:
                summary = asyncio.run(fleet.run(on_tick=tick))
            except DeviceError as exc:  # e.g. the state store failed mid-run: one line, no traceback
                raise _fail(f"the fleet stopped: {exc}") from exc
        if truth_file is not None:
            write_truth(truth_file, build_truth(fleet))  # again, with what each device published
        if summary_file is not None:
            _write_summary(summary_file, summary, running=False)
        if as_json:
            typer.echo(json.dumps(summary.to_mapping(), indent=2))
        else:
            out.print(_summary_table(summary))
            if summary.unconfirmed_devices:
                out.print(f"[red]unconfirmed:[/] {', '.join(summary.unconfirmed_devices)}")
        if metrics is not None:
            sys.stdout.flush()
            linger(metrics_linger)
    except KeyboardInterrupt as stop:  # Ctrl-C or SIGTERM: the state store is closed below
        err.print(f"interrupted ({stop or 'Ctrl-C'}): the fleet stopped" + ("; its state is saved" if store else ""))
        raise typer.Exit(130) from None
    finally:
        if metrics is not None:
            metrics.close()
        if store is not None:
            try:
                store.close()  # writes the acks and receipts it kept for later
            except DeviceError as exc:  # what was sent is recorded; only these are lost
                raise _fail(f"the fleet stopped: its state store could not be saved: {exc}") from exc
    raise typer.Exit(0 if summary.ok else 1)
