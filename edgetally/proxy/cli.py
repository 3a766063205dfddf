"""`edgetally proxy` (a fault proxy as a process) and `edgetally proxy-ctl` (command it)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import typer

from edgetally.proxy.control import CommandInvalid, ProxyControl, command_from_words, serve
from edgetally.proxy.proxy import FaultProxy, ProxyError


def parse_host_port(value: str, *, default_host: str | None, option: str) -> tuple[str, int]:
    """``[HOST:]PORT`` (``[v6addr]:PORT`` too); the host is required without ``default_host``."""
    host, sep, port_text = value.rpartition(":")
    if not sep:
        host = ""
    host = host.strip("[]")
    if not host:
        if default_host is None:
            raise typer.BadParameter(f"expected HOST:PORT, got {value!r}", param_hint=option)
        host = default_host
    try:
        port = int(port_text)
    except ValueError:
        raise typer.BadParameter(
            f"port must be a number, got {value!r}", param_hint=option
        ) from None
    if not 0 <= port <= 65535:
        raise typer.BadParameter(f"port must be 0-65535, got {port}", param_hint=option)
    return host, port


def proxy_cmd(
    listen: str = typer.Option(
        ...,
        "--listen",
        help="[HOST:]PORT to accept on (host default 127.0.0.1; port 0 = a free one)",
    ),
    target: str = typer.Option(..., "--target", help="HOST:PORT every connection is forwarded to"),
    control: int | None = typer.Option(
        None,
        "--control",
        min=0,
        max=65535,
        help="port on 127.0.0.1 of the JSON control channel (0 = a free one); none without it",
    ),
    name: str = typer.Option("proxy", "--name", help="name in log lines and stats"),
    seed: int | None = typer.Option(None, "--seed", help="seed of the jitter"),
    ready_file: Path | None = typer.Option(
        None,
        "--ready-file",
        help="written once listening: JSON with pid, listen_port and control_port",
    ),
) -> None:
    """Forward TCP to a target, with faults on command, until Ctrl-C or SIGTERM.

    Starts passing everything. Steer it with `edgetally proxy-ctl --control PORT CMD` (pass, cut, blackhole, latency, bandwidth, drop, stats) or any client of the line-oriented JSON control channel (edgetally/proxy/control.py).
    """
    listen_host, listen_port = parse_host_port(listen, default_host="127.0.0.1", option="--listen")
    target_host, target_port = parse_host_port(target, default_host=None, option="--target")
    proxy = FaultProxy(listen_host, listen_port, target_host, target_port, name=name, seed=seed)
    try:
        asyncio.run(serve(proxy, control_port=control, ready_file=ready_file))
    except OSError as exc:
        typer.echo(f"error: proxy {name}: {exc}", err=True)
        raise typer.Exit(1) from None


def proxy_ctl_cmd(
    words: list[str] = typer.Argument(
        ...,
        metavar="CMD ARGS",
        help="pass | cut | blackhole | latency MS [JITTER_MS] | bandwidth BPS (0 = unlimited)"
        ' | drop SECONDS | stats | a JSON request such as \'{"cmd": "set", "mode": "pass"}\'',
    ),
    control: int = typer.Option(
        ..., "--control", min=1, max=65535, help="the proxy's control port"
    ),
    host: str = typer.Option("127.0.0.1", "--host", help="the proxy's control host"),
    timeout: float = typer.Option(5.0, "--timeout", min=0.1, help="seconds to wait for the answer"),
) -> None:
    """Send one command to a running `edgetally proxy`; print its JSON reply (stats).

    Examples: `proxy-ctl --control 9001 cut`, `proxy-ctl --control 9001 latency 200 50`, `proxy-ctl --control 9001 drop 5`. Exit 0 when the proxy applied it, 1 otherwise.
    """
    try:
        request = command_from_words(words)
    except CommandInvalid as exc:
        raise typer.BadParameter(str(exc), param_hint="CMD") from None
    try:
        reply = ProxyControl(control, host, timeout=timeout).send(request)
    except ProxyError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo(json.dumps(reply, indent=2))
    if not reply["ok"]:
        typer.echo(f"error: {reply.get('error')}", err=True)
        raise typer.Exit(1)
