"""The root ``edgetally`` command: composes each tier's commands and sets up logging."""

from __future__ import annotations

import json
import logging
import signal
import sys
from pathlib import Path

import typer
from rich.console import Console

from edgetally._lazy import Lazy, lazy_group

# Each tier's commands are imported only when one of them runs (``edgetally --help`` imports
# none): the help strings here are the tiers' own, checked by tests/edgetally/test_cli.py.
SUBCOMMANDS = {
    "proxy": Lazy("edgetally.proxy.cli", "proxy_cmd", "Forward TCP to a target, with faults on command, until Ctrl-C or SIGTERM."),
    "proxy-ctl": Lazy("edgetally.proxy.cli", "proxy_ctl_cmd", "Send one command to a running `edgetally proxy`; print its JSON reply (stats)."),
    "devices": Lazy("devices.cli", "app", "Provision tabulators, compute expected totals, run a device fleet."),
    "gateway": Lazy("gateway.cli", "app", "Run the edge gateway; inspect, check and repair its buffer file."),
    "cloud": Lazy("cloud.cli", "app", "Run the cloud worker; migrate, read results and audit the cloud database."),
    "pki": Lazy("edgetally.pki", "app", "Create the deployment's certificate authority, TLS certificates and broker ACLs."),
    "scenario": Lazy("edgetally.scenarios.cli", "app", "Scenarios: a topology and a timeline of faults, then a verdict"),
}

app = typer.Typer(
    name="edgetally",
    help="Edge-to-cloud election results over MQTT, and the bench that proves it correct.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    cls=lazy_group(SUBCOMMANDS),
)


# Commands whose screen is a live display: their default log level keeps log lines out of it.
QUIET_BY_DEFAULT = {"demo", "scenario"}


@app.callback()
def root(
    ctx: typer.Context,
    log_level: str | None = typer.Option(
        None,
        "--log-level",
        envvar="EDGETALLY_LOG_LEVEL",
        help="DEBUG, INFO, WARNING, ERROR (default INFO; WARNING for the demo)",
    ),
) -> None:
    """Logging goes to stderr, one line per event; only this CLI installs handlers."""
    if log_level is None:
        log_level = "WARNING" if ctx.invoked_subcommand in QUIET_BY_DEFAULT else "INFO"
    level = getattr(logging, log_level.upper(), None)
    if not isinstance(level, int):
        raise typer.BadParameter(f"unknown log level {log_level!r}", param_hint="--log-level")
    logging.basicConfig(
        level=level,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    # Tiers are imported after this point (lazily): Alembic logs one INFO line per plugin
    # when it is imported, which says nothing to an operator.
    logging.getLogger("alembic.runtime.plugins").setLevel(max(level, logging.WARNING))


@app.command("demo")
def demo_cmd(
    devices: int = typer.Option(0, "--devices", min=0, help="Devices to run (0 = every device of the election)"),
    batches: int = typer.Option(5, "--batches", min=1, help="Batches per device"),
    seed: int = typer.Option(2026, "--seed", help="Ballot generator seed"),
    outage: float = typer.Option(0.0, "--outage", min=0.0, help="Take the cloud broker down for this many seconds mid-run"),
    outage_mode: str = typer.Option("kill", "--outage-mode", help="kill (SIGKILL: queued messages lost) or stop (clean)"),
    rate: float = typer.Option(60.0, "--rate", min=0.0, help="Fleet-wide batches per second (0 = unpaced)"),
    election: Path | None = typer.Option(None, "--election", help="Election file (default: the shipped sample)"),
    workdir: Path | None = typer.Option(None, "--workdir", help="Keep keys, databases and logs here"),
    keep: bool = typer.Option(False, "--keep", help="Keep the work directory after a successful run"),
    timeout: float = typer.Option(240.0, "--timeout", min=10.0, help="Give up after this many seconds"),
    embedded_brokers: bool = typer.Option(False, "--embedded-brokers", help="Use the embedded amqtt broker even if Mosquitto is installed"),
    as_json: bool = typer.Option(False, "--json", help="Also print the verdict as JSON"),
) -> None:
    """Run brokers, cloud, gateway and a fleet; optionally cut the cloud link; compare totals."""
    from devices.election_file import sample_election_path
    from edgetally.demo import Demo, DemoConfig

    if outage_mode not in ("kill", "stop"):
        raise typer.BadParameter("must be kill or stop", param_hint="--outage-mode")
    config = DemoConfig(
        election_file=election or sample_election_path(),
        devices=devices,
        batches=batches,
        seed=seed,
        rate=rate,
        outage=outage,
        outage_mode=outage_mode,
        workdir=workdir,
        keep=keep,
        timeout=timeout,
        embedded_brokers=True if embedded_brokers else None,
    )
    console = Console()
    verdict = Demo(config, console).run()
    if as_json:
        typer.echo(json.dumps(verdict.to_mapping(), indent=2))
    raise typer.Exit(0 if verdict.ok else 1)


@app.command("broker")
def broker_cmd(
    port: int = typer.Option(0, "--port", min=0, help="Port on 127.0.0.1 (0 = a free one)"),
    workdir: Path = typer.Option(Path(".edgetally/broker"), "--dir", help="Config, persistence and log directory"),
    embedded: bool = typer.Option(False, "--embedded", help="Use the embedded amqtt broker"),
) -> None:
    """Run one broker with EdgeTally's configuration until Ctrl-C."""
    from edgetally.brokers import BrokerProcess

    broker = BrokerProcess(workdir, name="broker", port=port or None, embedded=True if embedded else None)
    broker.start()
    typer.echo(f"broker listening on {broker.url} (log: {broker.log_path}); Ctrl-C to stop")
    try:
        signal.sigwait({signal.SIGINT, signal.SIGTERM})
    finally:
        broker.stop()


def main() -> None:
    app()
