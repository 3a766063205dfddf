"""`edgetally pki init|issue|acl`: the CA, the TLS certificates and the broker ACLs of a deployment.

The certificates themselves are made by :mod:`protocol.pki` (devices get theirs from the same
code); this module is the operator's side: which brokers, gateways and cloud workers a
deployment has, and a table of what was written.
"""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from edgetally.acl import BrokerKind, acl_text
from protocol import KeyFileError
from protocol.keys import write_secret
from protocol.pki import DEFAULT_DAYS, Issued, create_authority, issue, load_authority
from protocol.tls import Role

app = typer.Typer(help="Create the deployment's certificate authority, TLS certificates and broker ACLs.", no_args_is_help=True)

HOST_OPTION = typer.Option([], "--host", help="another name or address the brokers answer on (repeatable)")
DAYS_OPTION = typer.Option(DEFAULT_DAYS, "--days", min=1, help="days each certificate is valid")
MONITOR_OPTION = typer.Option([], "--monitor", help="a read-only client's id: reads every topic, writes none (repeatable)")
FORCE_OPTION = typer.Option(False, "--force", help="replace what exists (a new CA invalidates every certificate)")


def _fail(err: Exception) -> typer.Exit:
    typer.echo(f"error: {err}", err=True)
    return typer.Exit(1)


def _show(title: str, issued: list[tuple[Role, Issued]]) -> None:
    table = Table(title=title)
    for column in ("role", "identity", "certificate", "key (0600)"):
        table.add_column(column)
    for role, item in issued:
        table.add_row(role.value, item.name, str(item.cert), str(item.key))
    Console().print(table)


@app.command("init")
def init_cmd(
    out: Path = typer.Option(..., "--out", help="directory for the CA and the certificates"),
    brokers: list[str] = typer.Option(["edge", "cloud"], "--broker", help="a broker's name (repeatable)"),
    gateways: list[str] = typer.Option(["gw1"], "--gateway", help="a gateway's id (repeatable)"),
    clouds: list[str] = typer.Option(["cloud1"], "--cloud", help="a cloud worker's id (repeatable)"),
    monitors: list[str] = MONITOR_OPTION,
    hosts: list[str] = HOST_OPTION,
    days: int = DAYS_OPTION,
    force: bool = FORCE_OPTION,
) -> None:
    """A new CA, a server certificate per broker and a client certificate per gateway and cloud
    worker (devices get theirs from `devices provision`)."""
    try:
        ca = create_authority(out, force=force)
        issued: list[tuple[Role, Issued]] = []
        for role, names in ((Role.BROKER, brokers), (Role.GATEWAY, gateways), (Role.CLOUD, clouds), (Role.MONITOR, monitors)):
            for name in names:
                issued.append((role, issue(ca, role, name, hosts=tuple(hosts), days=days, force=force)))
    except KeyFileError as err:
        raise _fail(err) from err
    _show(f"CA {ca.cert_path}", issued)


@app.command("issue")
def issue_cmd(
    directory: Path = typer.Option(..., "--dir", help="a directory made by `pki init`"),
    role: Role = typer.Option(..., "--role", help="broker, gateway, cloud, device or monitor"),
    ident: str = typer.Option(..., "--id", help="the broker's name or the client's id"),
    hosts: list[str] = HOST_OPTION,
    days: int = DAYS_OPTION,
    force: bool = FORCE_OPTION,
) -> None:
    """One more certificate from an existing CA (a new broker, gateway or worker)."""
    try:
        item = issue(load_authority(directory), role, ident, hosts=tuple(hosts), days=days, force=force)
    except KeyFileError as err:
        raise _fail(err) from err
    _show(f"CA {directory / 'ca.crt'}", [(role, item)])


@app.command("acl")
def acl_cmd(
    keys: list[Path] = typer.Option(..., "--keys", help="keys directory holding registry.json; repeatable: the gateways carry every election given"),
    broker: BrokerKind = typer.Option(..., "--broker", help="edge (devices, gateways) or cloud (gateways, workers)"),
    gateways: list[str] = typer.Option(["gw1"], "--gateway", help="a gateway's id (repeatable)"),
    clouds: list[str] = typer.Option(["cloud1"], "--cloud", help="a cloud worker's id (repeatable)"),
    monitors: list[str] = MONITOR_OPTION,
    out: Path = typer.Option(..., "--out", help="the ACL file to write (Mosquitto acl_file)"),
) -> None:
    """The broker's ACL from the registry: each device, gateway and worker only its own topics."""
    from protocol import ProtocolError, Registry

    try:
        text = acl_text([Registry.load(k) for k in keys], broker, gateways=gateways, clouds=clouds, monitors=monitors)
        write_secret(out, text.encode(), "ACL file", mode=0o644)
    except (KeyFileError, ProtocolError) as err:
        raise _fail(err) from err
    users = sum(line.startswith("user ") for line in text.splitlines())
    typer.echo(f"wrote {out} ({users} users)")
