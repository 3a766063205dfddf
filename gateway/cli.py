"""`edgetally gateway ...` commands."""

from __future__ import annotations

import signal
import sys
from pathlib import Path
from types import FrameType

import orjson
import typer
from rich.console import Console

from gateway._exceptions import ConfigError, GatewayError
from gateway.buffer.schema import State
from gateway.config import (
    DEFAULT_BUNDLE_MAX,
    DEFAULT_KEEPALIVE_S,
    DEFAULT_MAX_QUARANTINE_BYTES,
    DEFAULT_MAX_QUARANTINE_BYTES_PER_DEVICE,
    DEFAULT_MAX_QUARANTINE_ROWS,
    DEFAULT_MAX_QUARANTINE_ROWS_PER_DEVICE,
    DEFAULT_RETENTION_S,
    DEFAULT_STATUS_INTERVAL_S,
    MAX_BUNDLE,
    MAX_WINDOW,
    SyncMode,
)
from gateway.inspect.snapshot import DEFAULT_WAIT_S, buffer_stats, parse_duration, render_stats
from protocol import DEFAULT_MAX_BYTES

# Each command imports what it runs (the gateway service, SQLAlchemy, the signature checks)
# in its own body: `edgetally gateway buffer stats` reads the buffer with sqlite3 alone and
# answers in a fraction of a second (scripts/bench cli).

app = typer.Typer(help="Run the edge gateway; inspect, check and repair its buffer file.", no_args_is_help=True)
buffer_app = typer.Typer(help="inspect, check and repair a gateway buffer file", no_args_is_help=True)
app.add_typer(buffer_app, name="buffer")


def _fail(err: Exception) -> typer.Exit:
    """One line on stderr, exit code 1."""
    message = " ".join(str(err).split())
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(1)


@app.command("run")
def run(
    edge: str = typer.Option(..., "--edge", help="edge broker URL, mqtts://host:port (TLS) or mqtt://host:port"),
    cloud: str = typer.Option(..., "--cloud", help="cloud broker URL, mqtts://host:port (TLS) or mqtt://host:port; a cluster's nodes comma-separated"),
    pki: Path | None = typer.Option(None, "--pki", help="PKI directory (`edgetally pki init`): ca.crt, this gateway's certificate"),
    buffer: Path = typer.Option(..., "--buffer", help="buffer file (SQLite); created if missing"),
    keys: list[Path] = typer.Option(..., "--keys", help="keys directory holding registry.json; repeatable: one per election carried"),
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
    ready_file: Path | None = typer.Option(None, "--ready-file", help="written once subscribed on the edge broker"),
    keep_delivered: float = typer.Option(
        DEFAULT_RETENTION_S, "--keep-delivered", min=0.0,
        help="seconds delivered batches stay in the buffer (for `buffer show` and audits), then purged",
    ),
    max_buffer_batches: int = typer.Option(
        0,
        "--max-buffer-batches",
        min=0,
        help="hold ingress (stop acking) while this many batches are pending or in flight; 0 = no limit",
    ),
    max_buffer_bytes: int = typer.Option(
        0,
        "--max-buffer-bytes",
        min=0,
        help="hold ingress while outbound payloads reach this many bytes; 0 = no limit",
    ),
    max_quarantine_rows_per_device: int = typer.Option(
        DEFAULT_MAX_QUARANTINE_ROWS_PER_DEVICE, "--max-quarantine-rows-per-device", min=0,
        help="rejects stored per device (the topic's); beyond, counted only; 0 = no per-device cap"),
    max_quarantine_bytes_per_device: int = typer.Option(
        DEFAULT_MAX_QUARANTINE_BYTES_PER_DEVICE, "--max-quarantine-bytes-per-device", min=0,
        help="payload bytes of rejects stored per device; 0 = no per-device cap"),
    max_quarantine_rows: int = typer.Option(
        DEFAULT_MAX_QUARANTINE_ROWS, "--max-quarantine-rows", min=1,
        help="rejects stored in total (always capped); beyond, counted per device and reason"),
    max_quarantine_bytes: int = typer.Option(
        DEFAULT_MAX_QUARANTINE_BYTES, "--max-quarantine-bytes", min=1,
        help="payload bytes of rejects stored in total (always capped)"),
    keepalive: int = typer.Option(
        DEFAULT_KEEPALIVE_S,
        "--keepalive",
        min=1,
        help="MQTT keepalive, seconds; a dead or blackholed link is noticed within about twice this",
    ),
    bundle_max: int = typer.Option(
        DEFAULT_BUNDLE_MAX,
        "--bundle-max",
        min=1,
        max=MAX_BUNDLE,
        help="envelopes per uplink message (bundles, unwrapped by the cloud); 1 = no bundling",
    ),
    compress: bool = typer.Option(False, "--compress/--no-compress", help="zlib-compress uplink bundles"),
    status_interval: float = typer.Option(
        DEFAULT_STATUS_INTERVAL_S,
        "--status-interval",
        min=0.1,
        help="seconds between retained gateway status messages on both brokers",
    ),
) -> None:
    """Verify batches from the edge broker, buffer them, forward them to the cloud broker."""
    from gateway.config import GatewayConfig
    from gateway.service import GatewayService

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
            delivered_retention_s=keep_delivered,
            max_buffer_batches=max_buffer_batches,
            max_buffer_bytes=max_buffer_bytes,
            max_quarantine_rows_per_device=max_quarantine_rows_per_device,
            max_quarantine_bytes_per_device=max_quarantine_bytes_per_device,
            max_quarantine_rows=max_quarantine_rows,
            max_quarantine_bytes=max_quarantine_bytes,
            keepalive_s=keepalive,
            bundle_max=bundle_max,
            compress=compress,
            status_interval_s=status_interval,
            pki=pki,
        )
        service = GatewayService(config)

        def on_signal(_signum: int, _frame: FrameType | None) -> None:
            service.request_stop()

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        service.run()
    except GatewayError as err:
        raise _fail(err) from err


# -- `edgetally gateway buffer ...`: thin wrappers; the logic lives in gateway/inspect*.py ----------
BUFFER_OPTION = typer.Option(..., "--buffer", help="buffer file of a gateway (may be running)")
JSON_OPTION = typer.Option(False, "--json", help="print JSON instead of tables")
WAIT_OPTION = typer.Option(
    DEFAULT_WAIT_S, "--wait", min=0.0, help="seconds to wait for SQLite locks before giving up"
)


def _emit_json(data: object) -> None:
    sys.stdout.write(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode() + "\n")


def _usage_error(message: str) -> typer.Exit:
    """One line on stderr, exit code 2 (the command was not run as asked)."""
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(2)


def _duration(text: str | None, option: str) -> float | None:
    if text is None:
        return None
    try:
        return parse_duration(text)
    except ValueError as err:
        raise _usage_error(f"{option}: {err}") from err


@buffer_app.command("stats")
def stats(
    buffer: Path = BUFFER_OPTION, as_json: bool = JSON_OPTION, wait: float = WAIT_OPTION
) -> None:
    """Counts by state, usage, oldest pending age, retention and file size; read-only."""
    try:
        result = buffer_stats(buffer, wait_s=wait)
    except GatewayError as err:
        raise _fail(err) from err
    if as_json:
        _emit_json(result.to_mapping())
    else:
        render_stats(result, Console())


@buffer_app.command("ls")
def ls(
    buffer: Path = BUFFER_OPTION,
    state: list[State] = typer.Option([], "--state", help="only this state (repeatable)"),
    device: str | None = typer.Option(None, "--device", help="only this device"),
    older_than: str | None = typer.Option(None, "--older-than", help="received at least this long ago (90s, 5m, 2h)"),
    newer_than: str | None = typer.Option(None, "--newer-than", help="received at most this long ago"),
    limit: int = typer.Option(50, "--limit", min=0, help="rows per page (0 = all)"),
    offset: int = typer.Option(0, "--offset", min=0, help="skip this many rows"),
    cursor: int | None = typer.Option(None, "--cursor", help="continue after this id (next_cursor of the previous page)"),
    oldest_first: bool = typer.Option(False, "--oldest-first", help="oldest first (default newest first)"),
    as_json: bool = JSON_OPTION,
    wait: float = WAIT_OPTION,
) -> None:
    """List rows, filtered by state, device and age, one page at a time; read-only."""
    from gateway.inspect.render import render_list
    from gateway.inspect.rows import ListQuery, list_rows

    query = ListQuery(
        states=state,
        device=device,
        older_than_s=_duration(older_than, "--older-than"),
        newer_than_s=_duration(newer_than, "--newer-than"),
        limit=limit if limit > 0 else -1,
        offset=offset,
        cursor=cursor,
        newest_first=not oldest_first,
    )
    try:
        listing = list_rows(buffer, query, wait_s=wait)
    except GatewayError as err:
        raise _fail(err) from err
    if as_json:
        _emit_json(listing)
    else:
        render_list(listing, Console())


@buffer_app.command("show")
def show(
    row_id: int = typer.Argument(..., metavar="ID", help="row id (from ls)"),
    buffer: Path = BUFFER_OPTION,
    keys: Path | None = typer.Option(None, "--keys", help="re-check the signature with this keys directory (default: the one the gateway recorded)"),
    as_json: bool = JSON_OPTION,
    wait: float = WAIT_OPTION,
) -> None:
    """One row: decoded body, counts, signature status checked now, history; read-only."""
    from gateway.inspect.render import render_show
    from gateway.inspect.rows import show_row

    try:
        data = show_row(buffer, row_id, keys_dir=keys, wait_s=wait)
    except GatewayError as err:
        raise _fail(err) from err
    if as_json:
        _emit_json(data)
    else:
        render_show(data, Console())


@buffer_app.command("quarantine")
def quarantine(
    buffer: Path = BUFFER_OPTION,
    limit: int = typer.Option(100, "--limit", min=0, help="rows to list, newest first (0 = all)"),
    as_json: bool = JSON_OPTION,
    wait: float = WAIT_OPTION,
) -> None:
    """Quarantined batches with their reasons, and counts by reason; read-only."""
    from gateway.inspect.render import render_quarantine
    from gateway.inspect.rows import quarantine_summary

    try:
        data = quarantine_summary(buffer, limit=limit, wait_s=wait)
    except GatewayError as err:
        raise _fail(err) from err
    if as_json:
        _emit_json(data)
    else:
        render_quarantine(data, Console())


@buffer_app.command("retry")
def retry_cmd(
    ids: list[int] = typer.Argument(None, metavar="[ID]...", help="quarantined row ids"),
    buffer: Path = BUFFER_OPTION,
    all_quarantined: bool = typer.Option(False, "--all-quarantined", help="every quarantined row"),
    keys: Path | None = typer.Option(None, "--keys", help="keys directory to verify with (default: the one the gateway recorded)"),
    as_json: bool = JSON_OPTION,
    wait: float = WAIT_OPTION,
) -> None:
    """Verify quarantined rows again: those that pass go back to pending, the others keep the new reason."""
    from gateway.inspect.actions import retry
    from gateway.inspect.render import render_retry

    try:
        report = retry(buffer, ids or [], all_quarantined=all_quarantined, keys_dir=keys, wait_s=wait)
    except ConfigError as err:
        raise _usage_error(" ".join(str(err).split())) from err
    except GatewayError as err:
        raise _fail(err) from err
    if as_json:
        _emit_json(report.to_mapping())
    else:
        render_retry(report.to_mapping(), Console())


@buffer_app.command("export")
def export(
    buffer: Path = BUFFER_OPTION,
    fmt: str = typer.Option("jsonl", "--format", help="jsonl: one JSON object per row"),
    out: Path | None = typer.Option(None, "--out", help="write here (atomically) instead of stdout"),
    state: list[State] = typer.Option([], "--state", help="only this state (repeatable)"),
    as_json: bool = JSON_OPTION,
    wait: float = WAIT_OPTION,
) -> None:
    """Every row with its state, times, reason and payload, streamed in id order (for audits)."""
    from gateway.inspect.rows import export_to

    if fmt != "jsonl":
        raise _usage_error(f"--format: {fmt!r} is not supported (jsonl)")
    try:
        written = export_to(buffer, out, states=state, wait_s=wait)
    except GatewayError as err:
        raise _fail(err) from err
    summary = {"rows": written, "out": None if out is None else str(out), "format": fmt}
    if out is None:
        return  # stdout holds the rows and nothing else
    if as_json:
        _emit_json(summary)
    else:
        Console().print(f"exported {written} rows to {out}")


@buffer_app.command("purge")
def purge_cmd(
    buffer: Path = BUFFER_OPTION,
    state: list[State] = typer.Option([State.DELIVERED], "--state", help="delivered (default); pending or quarantined need --include-undelivered and --yes"),
    older_than: str | None = typer.Option(None, "--older-than", help="only rows in that state for at least this long (90s, 5m, 2h)"),
    include_undelivered: bool = typer.Option(False, "--include-undelivered", help="allow pending and quarantined rows"),
    yes: bool = typer.Option(False, "--yes", help="confirm deleting batches that never reached the cloud"),
    dry_run: bool = typer.Option(False, "--dry-run", help="count only"),
    as_json: bool = JSON_OPTION,
    wait: float = WAIT_OPTION,
) -> None:
    """Delete rows (by default delivered ones), in short transactions."""
    from gateway.inspect.actions import purge, purge_refusal
    from gateway.inspect.render import render_purge

    states = list(dict.fromkeys(state))
    refusal = purge_refusal(states, include_undelivered=include_undelivered, yes=yes)
    if refusal is not None:
        raise _usage_error(refusal)
    try:
        data = purge(buffer, states, older_than_s=_duration(older_than, "--older-than"), dry_run=dry_run, wait_s=wait)
    except GatewayError as err:
        raise _fail(err) from err
    if as_json:
        _emit_json(data)
    else:
        render_purge(data, Console())


@buffer_app.command("check")
def check_cmd(
    buffer: Path = BUFFER_OPTION,
    keys: Path | None = typer.Option(None, "--keys", help="also verify every signature with this keys directory"),
    as_json: bool = JSON_OPTION,
) -> None:
    """Integrity, schema, application id, usage counters, every payload; exit 0 only if all good."""
    from gateway.inspect.check import check
    from gateway.inspect.render import render_check

    try:
        report = check(buffer, keys_dir=keys)
    except GatewayError as err:
        raise _fail(err) from err
    if as_json:
        _emit_json(report.to_mapping())
    else:
        render_check(report, Console())
    if not report.ok:
        raise typer.Exit(1)


@buffer_app.command("recover")
def recover_cmd(
    buffer: Path = BUFFER_OPTION,
    out: Path = typer.Option(..., "--out", help="the new buffer file (must not exist)"),
    keys: Path | None = typer.Option(None, "--keys", help="verify every undelivered batch again with this keys directory"),
    as_json: bool = JSON_OPTION,
) -> None:
    """Salvage every readable row into a new file with the current schema; the source is untouched."""
    from gateway.inspect.recover import recover
    from gateway.inspect.render import render_recover

    try:
        report = recover(buffer, out, keys_dir=keys)
    except GatewayError as err:
        raise _fail(err) from err
    if as_json:
        _emit_json(report.to_mapping())
    else:
        render_recover(report, Console())
