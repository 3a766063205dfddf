"""`edgetally gateway ...` commands."""

from __future__ import annotations

import signal
import sys
from pathlib import Path
from types import FrameType

import orjson
import typer
from rich.console import Console

from gateway._exceptions import GatewayError
from gateway.config import MAX_WINDOW, GatewayConfig, SyncMode
from gateway.inspect import buffer_stats, render_stats
from gateway.service import GatewayService
from protocol import DEFAULT_MAX_BYTES

app = typer.Typer(help="gateway commands", no_args_is_help=True)
buffer_app = typer.Typer(help="inspect a gateway buffer file", no_args_is_help=True)
app.add_typer(buffer_app, name="buffer")


def _fail(err: Exception) -> typer.Exit:
    """One line on stderr, exit code 1."""
    message = " ".join(str(err).split())
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(1)


@app.command("run")
def run(
    edge: str = typer.Option(..., "--edge", help="edge broker URL, mqtt://host:port"),
    cloud: str = typer.Option(..., "--cloud", help="cloud broker URL, mqtt://host:port"),
    buffer: Path = typer.Option(..., "--buffer", help="buffer file (SQLite); created if missing"),
    keys: Path = typer.Option(..., "--keys", help="keys directory holding registry.json"),
    gateway_id: str = typer.Option("gw1", "--id", help="gateway name (client ids, status topic)"),
    window: int = typer.Option(
        256, "--window", min=1, max=MAX_WINDOW, help="uplink QoS 1 publishes in flight"
    ),
    max_payload_bytes: int = typer.Option(
        DEFAULT_MAX_BYTES, "--max-payload-bytes", min=1, help="larger payloads are quarantined"
    ),
    sync: SyncMode = typer.Option(
        SyncMode.FULL, "--sync", case_sensitive=False, help="SQLite synchronous for the buffer"
    ),
    ready_file: Path | None = typer.Option(
        None, "--ready-file", help="written once subscribed on the edge broker"
    ),
) -> None:
    """Verify batches from the edge broker, buffer them, forward them to the cloud broker."""
    try:
        config = GatewayConfig.from_options(
            edge=edge,
            cloud=cloud,
            buffer=buffer,
            keys=keys,
            gateway_id=gateway_id,
            window=window,
            max_payload_bytes=max_payload_bytes,
            sync=sync,
            ready_file=ready_file,
        )
        service = GatewayService(config)

        def on_signal(_signum: int, _frame: FrameType | None) -> None:
            service.request_stop()

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        service.run()
    except GatewayError as err:
        raise _fail(err) from err


@buffer_app.command("stats")
def stats(
    buffer: Path = typer.Option(..., "--buffer", help="buffer file of a gateway (may be running)"),
    as_json: bool = typer.Option(False, "--json", help="print JSON instead of a table"),
) -> None:
    """Counts by state, oldest pending age and file size; read-only."""
    try:
        result = buffer_stats(buffer)
    except GatewayError as err:
        raise _fail(err) from err
    if as_json:
        sys.stdout.write(
            orjson.dumps(result.to_mapping(), option=orjson.OPT_INDENT_2).decode() + "\n"
        )
    else:
        render_stats(result, Console())
