"""The root ``edgetally`` command: composes each tier's commands and sets up logging."""

from __future__ import annotations

import json
import logging
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
    "entry": Lazy("edgetally.entry.cli", "app", "Key precinct tally sheets by hand, double-keyed, into the pipeline."),
    "gateway": Lazy("gateway.cli", "app", "Run the edge gateway; inspect, check and repair its buffer file."),
    "cloud": Lazy("cloud.cli", "app", "Run the cloud worker; migrate, read results and audit the cloud database."),
    "pki": Lazy("edgetally.pki", "app", "Create the deployment's certificate authority, TLS certificates and broker ACLs."),
    "rogue": Lazy("edgetally.rogue", "rogue_cmd", "Attack a broker as a rogue client holding a stolen device certificate; report what got through."),
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
    embedded_brokers: bool = typer.Option(False, "--embedded-brokers", help="Use the embedded amqtt broker even if Mosquitto is installed (needs --plain)"),
    plain: bool = typer.Option(False, "--plain", help="Anonymous MQTT over TCP without ACLs (local experiments; default: TLS, client certificates, ACLs)"),
    as_json: bool = typer.Option(False, "--json", help="Also print the verdict as JSON"),
    serve: bool = typer.Option(False, "--serve", help="Serve the live results page while it runs, and after the verdict until Ctrl-C"),
    serve_port: int = typer.Option(8080, "--serve-port", min=0, max=65535, help="The page's port with --serve (0 = a free one)"),
    cloud_broker: str = typer.Option("mosquitto", "--cloud-broker", help="mosquitto, or nats: a 3-node JetStream cluster (--outage then takes its stream leader)"),
) -> None:
    """Run brokers, cloud, gateway and a fleet; optionally cut the cloud link; compare totals."""
    from devices.election_file import sample_election_path
    from edgetally.demo import Demo, DemoConfig

    if outage_mode not in ("kill", "stop"):
        raise typer.BadParameter("must be kill or stop", param_hint="--outage-mode")
    if cloud_broker not in ("mosquitto", "nats"):
        raise typer.BadParameter("must be mosquitto or nats", param_hint="--cloud-broker")
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
        plain=plain,
        serve_port=serve_port if serve else None,
        cloud_broker=cloud_broker,
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
    kind: str = typer.Option("edge", "--kind", help="edge (devices and gateways) or cloud (gateways and workers): which ACL;"
                             " nats: the cloud tier on a NATS JetStream cluster"),
    cluster: int = typer.Option(1, "--cluster", min=1, help="with --kind nats: nodes (3 survives the loss of one)"),
    ack_wait: float = typer.Option(10.0, "--ack-wait", help="with --kind nats: seconds a worker may hold a batch unacknowledged"),
    pki: Path | None = typer.Option(None, "--pki", help="PKI directory (`edgetally pki init`): the broker's certificate brokers/KIND.crt"),
    keys: Path | None = typer.Option(None, "--keys", help="keys directory holding registry.json: the ACL is made from it"),
    gateways: list[str] = typer.Option(["gw1"], "--gateway", help="a gateway's id the ACL admits (repeatable)"),
    clouds: list[str] = typer.Option(["cloud1"], "--cloud", help="a cloud worker's id the ACL admits (repeatable)"),
    plain: bool = typer.Option(False, "--plain", help="Anonymous MQTT over TCP without ACLs (local experiments only)"),
    embedded: bool = typer.Option(False, "--embedded", help="Use the embedded amqtt broker (needs --plain)"),
) -> None:
    """Run one broker with EdgeTally's configuration until Ctrl-C or SIGTERM: TLS, client
    certificates and an ACL from the registry (or --plain); --kind nats: a NATS JetStream
    cluster of --cluster nodes as the cloud broker."""
    from edgetally.acl import BrokerKind
    from edgetally.brokers import BrokerError, BrokerProcess, BrokerTls, serve_until_signalled
    from protocol import ProtocolError, Registry
    from protocol.keys import write_secret
    from protocol.tls import Role, ca_cert_path, cert_paths

    tls: BrokerTls | None = None
    if kind == "nats":
        from edgetally.nats_cli import run_nats

        run_nats(nodes=cluster, workdir=workdir, pki=pki, keys=keys, gateways=gateways, clouds=clouds, plain=plain, ack_wait_s=ack_wait)
        return
    if cluster != 1:
        raise typer.BadParameter("only --kind nats runs a cluster", param_hint="--cluster")
    try:
        broker_kind = BrokerKind(kind)
    except ValueError:
        raise typer.BadParameter("must be edge, cloud or nats", param_hint="--kind") from None
    if not plain:
        if pki is None or keys is None:
            typer.echo("error: a locked-down broker needs --pki DIR and --keys DIR (or --plain for local experiments)", err=True)
            raise typer.Exit(1)
        from edgetally.acl import acl_text

        cert, key = cert_paths(pki, Role.BROKER, broker_kind.value)
        try:
            for path in (ca_cert_path(pki), cert, key):
                if not path.is_file():
                    raise ProtocolError(f"{path} is missing (edgetally pki init --out {pki} --broker {broker_kind.value})")
            text = acl_text(Registry.load(keys), broker_kind, gateways=gateways, clouds=clouds)
            workdir.mkdir(parents=True, exist_ok=True)
            acl = workdir / f"{broker_kind.value}.acl"
            write_secret(acl, text.encode(), "ACL file")
        except ProtocolError as err:
            typer.echo(f"error: {err}", err=True)
            raise typer.Exit(1) from err
        tls = BrokerTls(ca_cert_path(pki), cert, key, acl)
    broker = BrokerProcess(workdir, name="broker", port=port or None, embedded=True if embedded else None, tls=tls)
    mode = "PLAIN (anonymous, no ACL)" if tls is None else "TLS, client certificates, ACL"
    try:
        serve_until_signalled(
            broker.start, broker.stop,
            lambda: typer.echo(f"broker listening on {broker.url}: {mode} (log: {broker.log_path}); Ctrl-C to stop"),
        )  # fmt: skip
    except BrokerError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(1) from err


def main() -> None:
    app()
