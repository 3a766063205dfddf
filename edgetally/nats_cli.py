"""``edgetally broker --kind nats [--cluster N]``: a NATS JetStream cluster as the cloud broker,
until Ctrl-C or SIGTERM (both stop every node it started)."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from edgetally.brokers import BrokerError, serve_until_signalled
from edgetally.nats import NatsCluster, NatsTls


def run_nats(
    *, nodes: int, workdir: Path, pki: Path | None, keys: Path | None, gateways: list[str], clouds: list[str],
    plain: bool, ack_wait_s: float,
) -> None:
    tls: NatsTls | None = None
    probe = None
    if not plain:
        if pki is None or keys is None:
            typer.echo("error: a locked-down NATS cluster needs --pki DIR and --keys DIR (or --plain for local experiments)", err=True)
            raise typer.Exit(1)
        from edgetally.wire import Wire
        from protocol import ProtocolError, Registry
        from protocol.tls import Role

        wire = Wire(pki, keys, tuple(gateways), tuple(clouds))
        try:
            registry = Registry.load(keys)
            tls = wire.nats(registry)
            for path in (tls.ca, tls.cert, tls.key):
                if not path.is_file():
                    raise ProtocolError(f"{path} is missing (edgetally pki init --out {pki})")
            probe = wire.client(Role.CLOUD, clouds[0])
            if not probe.cert.is_file():
                raise ProtocolError(f"{probe.cert} is missing: the readiness probe connects as cloud-{clouds[0]}")
        except ProtocolError as err:
            typer.echo(f"error: {err}", err=True)
            raise typer.Exit(1) from err
    cluster = NatsCluster(workdir, nodes=nodes, tls=tls, probe=probe, ack_wait_s=ack_wait_s)

    def ready() -> None:
        info = {
            "nodes": [n.name for n in cluster.nodes],
            "mqtt": cluster.mqtt_urls,
            "jetstream": cluster.nats_urls,
            "monitoring": [f"http://127.0.0.1:{n.http_port}" for n in cluster.nodes],
            "pids": [cluster.pid(n.name) for n in cluster.nodes],
        }
        (workdir / "cluster.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
        mode = "PLAIN (anonymous, every subject)" if tls is None else "TLS, client certificates mapped to users, permissions from the cloud ACL"
        typer.echo(f"NATS JetStream cluster of {nodes} ready: {mode}; MQTT streams replicated {nodes} ways")
        typer.echo(f"  gateways (MQTT):      {' '.join(cluster.mqtt_urls)}")
        typer.echo(f"  workers (--jetstream): {' '.join(cluster.nats_urls)}")
        typer.echo(f"  logs and stores in {workdir}; addresses in {workdir / 'cluster.json'}; Ctrl-C to stop")

    try:
        serve_until_signalled(cluster.start, cluster.stop, ready)
    except BrokerError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(1) from err

