"""``edgetally cloud elections``: add an election to a running cloud, list what it serves."""

from __future__ import annotations

import json
from pathlib import Path
from typing import NoReturn

import typer
from rich.console import Console
from rich.table import Table

from cloud._exceptions import CloudError
from cloud.config import DEFAULT_DB_URL

app = typer.Typer(help="Elections this cloud serves: add one while it runs, list them.", no_args_is_help=True)
DB_OPTION = typer.Option(DEFAULT_DB_URL, "--db", help="sqlite:///FILE or postgresql+psycopg://...")


def _fail(command: str, err: Exception) -> NoReturn:
    typer.echo(f"edgetally cloud elections {command}: error: {err}", err=True)
    raise typer.Exit(1)


@app.command("add")
def add(
    db: str = DB_OPTION,
    keys: Path = typer.Option(..., "--keys", help="the election's keys directory (registry.json, cloud-signing.key)"),
) -> None:
    """Store an election (its definition, registry and devices) for every worker to serve.

    Running workers need no restart: they read the stored elections when the first batch of
    one they do not hold arrives. The keys directory must be readable by the workers at the
    same path (they sign the election's receipts with its cloud-signing.key)."""
    from cloud.db import make_engine, translate_errors, upgrade
    from cloud.elections import served_from, store

    try:
        served = served_from(keys)
        engine = make_engine(db)
        upgrade(engine)
        with translate_errors("storing the election"), engine.begin() as conn:
            store(conn, served)
    except CloudError as err:
        _fail("add", err)
    engine.dispose()
    election = served.registry.election
    typer.echo(
        f"election {election.id} ({election.name}): {len(served.registry.devices)} devices stored;"
        f" every worker on {db} serves it from its first batch (receipts signed with {served.keys_dir}/cloud-signing.key)"
    )


@app.command("list")
def list_(
    db: str = DB_OPTION,
    as_json: bool = typer.Option(False, "--json", help="print JSON instead of a table"),
) -> None:
    """The elections the database holds: devices, where their keys are, when stored."""
    from cloud.db import check_schema, make_engine
    from cloud.elections import stored

    try:
        engine = make_engine(db, create=False, writer=False)
        check_schema(engine)
        rows = stored(engine)
    except CloudError as err:
        _fail("list", err)
    engine.dispose()
    if as_json:
        typer.echo(json.dumps([
            {"election": r.election, "name": r.name, "devices": r.devices, "keys_dir": r.keys_dir,
             "stored_at": r.stored_at.isoformat(), "served": r.has_registry and r.keys_dir is not None}
            for r in rows
        ], indent=2))  # fmt: skip
        return
    table = Table(title=f"{len(rows)} election(s) in {db}")
    for column in ("election", "name", "devices", "keys directory", "stored at"):
        table.add_column(column, justify="right" if column == "devices" else "left")
    for r in rows:
        where = r.keys_dir or "[yellow]none: served only by a worker given its --keys[/]"
        table.add_row(r.election, r.name, str(r.devices), where, r.stored_at.strftime("%Y-%m-%d %H:%M:%SZ"))
    Console().print(table)
