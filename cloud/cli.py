"""`edgetally cloud ...` commands: run, migrate, results, gateways.

Errors in what the user gave (missing keys, bad URL, a database that is not a cloud
database) end the command with exit code 1 and one line on stderr. An unreachable broker at
start is not an error: `run` keeps retrying with backoff.
"""

from __future__ import annotations

import json
import logging
import signal
import threading
from pathlib import Path
from types import FrameType
from typing import NoReturn

import typer
from rich.console import Console

from cloud._exceptions import CloudError, ConfigError
from cloud.config import DEFAULT_CLOUD_ID, DEFAULT_DB_URL, CloudConfig
from cloud.db import make_engine, upgrade
from cloud.ledger import Ledger
from cloud.results import load_results, render
from cloud.status import StatusStore, load_gateways, render_gateways
from cloud.worker import CloudWorker
from protocol import DEFAULT_MAX_BYTES, ProtocolError, Registry, parse_broker_url

log = logging.getLogger(__name__)

app = typer.Typer(help="cloud commands", no_args_is_help=True)

DB_OPTION = typer.Option(DEFAULT_DB_URL, "--db", help="sqlite:///FILE or postgresql+psycopg://...")


def _fail(command: str, err: Exception) -> NoReturn:
    typer.echo(f"edgetally cloud {command}: error: {err}", err=True)
    raise typer.Exit(1)


def build_config(
    broker: str,
    db: str,
    keys: Path,
    cloud_id: str,
    max_payload_bytes: int,
    ready_file: Path | None,
) -> CloudConfig:
    try:
        address = parse_broker_url(broker)
    except ProtocolError as err:
        raise ConfigError(f"--broker: {err}") from err
    return CloudConfig(
        broker=address,
        db_url=db,
        keys_dir=keys,
        cloud_id=cloud_id,
        max_payload_bytes=max_payload_bytes,
        ready_file=ready_file,
    )


def load_registry(keys: Path) -> Registry:
    if not keys.is_dir():
        raise ConfigError(f"--keys {keys}: no such directory")
    try:
        return Registry.load(keys)
    except ProtocolError as err:
        raise ConfigError(f"--keys {keys}: {err}") from err


@app.command("run")
def run(
    broker: str = typer.Option(..., "--broker", help="cloud broker, mqtt://host:port"),
    db: str = DB_OPTION,
    keys: Path = typer.Option(..., "--keys", help="keys directory holding registry.json"),
    cloud_id: str = typer.Option(
        DEFAULT_CLOUD_ID, "--id", help="worker name (MQTT client edgetally-cloud-NAME)"
    ),
    max_payload_bytes: int = typer.Option(DEFAULT_MAX_BYTES, "--max-payload-bytes"),
    ready_file: Path | None = typer.Option(
        None, "--ready-file", help="written once connected and subscribed"
    ),
) -> None:
    """Consume batches from the cloud broker into the ledger; publish receipts."""
    try:
        config = build_config(broker, db, keys, cloud_id, max_payload_bytes, ready_file)
        registry = load_registry(config.keys_dir)
        engine = make_engine(config.db_url)
        upgrade(engine)
        ledger = Ledger(engine, registry, max_payload_bytes=config.max_payload_bytes)
        ledger.prepare()
    except CloudError as err:
        _fail("run", err)
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        log.info("%s: stopping after the current commit", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    log.info(
        "cloud %s: election %s, %d devices, database %s",
        config.cloud_id,
        registry.election.id,
        len(registry.devices),
        engine.url.render_as_string(hide_password=True),
    )
    try:
        CloudWorker(config, ledger, StatusStore(engine)).run(stop)
    finally:
        engine.dispose()


@app.command("migrate")
def migrate(db: str = DB_OPTION) -> None:
    """Create or upgrade the cloud database schema (Alembic, to the newest revision)."""
    try:
        engine = make_engine(db)
        revision = upgrade(engine)
    except CloudError as err:
        _fail("migrate", err)
    engine.dispose()
    typer.echo(f"cloud database at revision {revision}")


@app.command("results")
def results(
    db: str = DB_OPTION,
    as_json: bool = typer.Option(False, "--json", help="print JSON instead of tables"),
    election: str | None = typer.Option(
        None, "--election", help="election id, if the database holds several"
    ),
) -> None:
    """Per-contest totals and shares, ballots, batches, duplicates and rejections."""
    try:
        engine = make_engine(db, create=False, writer=False)
        loaded = load_results(engine, election)
    except CloudError as err:
        _fail("results", err)
    engine.dispose()
    if as_json:
        typer.echo(json.dumps(loaded.to_mapping(), indent=2, sort_keys=True))
    else:
        render(loaded, Console())


@app.command("gateways")
def gateways(
    db: str = DB_OPTION,
    as_json: bool = typer.Option(False, "--json", help="print JSON instead of a table"),
) -> None:
    """The latest status each gateway reported: links, buffer depth, rates, age."""
    try:
        engine = make_engine(db, create=False, writer=False)
        rows = load_gateways(engine)
    except CloudError as err:
        _fail("gateways", err)
    engine.dispose()
    if as_json:
        typer.echo(json.dumps([row.to_mapping() for row in rows], indent=2, sort_keys=True))
    else:
        render_gateways(rows, Console())
