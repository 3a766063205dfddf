"""`edgetally cloud ...` commands: run, migrate, results, export, audit, settings, gateways,
serve, publish, and what the rules wrote: alerts, stored, dead-letters.

Errors in what the user gave (missing keys, bad URL, a database that is not a cloud
database) end the command with exit code 1 and one line on stderr. An unreachable broker at
start is not an error: `run` keeps retrying with backoff.

Past 400 lines and kept whole: it is one concept, the cloud's command surface, each command a
thin wrapper (options, one call, output) over the module that does the work; cut by command
it would scatter the shared options and the one way a command fails.
"""

from __future__ import annotations

import gc
import json
import logging
import signal
import threading
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, NoReturn

import typer
from rich.console import Console

from cloud import faults
from cloud._exceptions import CloudError, ConfigError
from cloud.audit.report import DEFAULT_LIMIT
from cloud.config import (
    DEFAULT_CLOUD_ID,
    DEFAULT_DB_URL,
    DEFAULT_OUTPUT_LIMIT,
    DEFAULT_RECEIPT_INTERVAL_S,
    CloudConfig,
)
from cloud.elections_cli import app as elections_app
from protocol import DEFAULT_MAX_BYTES, ProtocolError, parse_broker_urls

if TYPE_CHECKING:
    from cloud.engine.rulefile import RulesConfig
    from protocol import Registry

# Each command imports what it runs (SQLAlchemy, the rules engine, the MQTT worker) in its
# own body: `edgetally cloud results` on a SQLite file imports neither SQLAlchemy nor
# Alembic and answers in a fraction of a second (scripts/bench cli).

log = logging.getLogger(__name__)

app = typer.Typer(help="Run the cloud worker; migrate, read results and audit the cloud database.", no_args_is_help=True)
app.add_typer(elections_app, name="elections")  # add an election to a running cloud, list them

DB_OPTION = typer.Option(DEFAULT_DB_URL, "--db", help="sqlite:///FILE or postgresql+psycopg://...")


def _fail(command: str, err: Exception) -> NoReturn:
    typer.echo(f"edgetally cloud {command}: error: {err}", err=True)
    raise typer.Exit(1)


def build_config(
    broker: str,
    db: str,
    keys: Sequence[Path],
    cloud_id: str,
    max_payload_bytes: int,
    ready_file: Path | None,
    share: str | None = None,
    session: str | None = None,
    verify_threads: int = 2,
    repair_interval_s: float = 2.0,
    repair_grace_s: float = 0.5,
    receipt_interval_s: float = DEFAULT_RECEIPT_INTERVAL_S,
    pki: Path | None = None,
    jetstream: Sequence[str] = (),
    ack_wait_s: float | None = None,
) -> CloudConfig:
    from protocol.tls import Role, client_tls

    try:
        address, *alternates = parse_broker_urls(broker)
    except ProtocolError as err:
        raise ConfigError(f"--broker: {err}") from err
    if session not in (None, "clean", "persistent"):
        raise ConfigError(f"--session must be clean or persistent, got {session!r}")
    # With --share the default is a clean session: a worker that dies for good must not keep
    # a share of the traffic queued in its session (docs/cloud-scaleout.md).
    # On JetStream too: the MQTT session then carries only gateway statuses (informational).
    clean = session == "clean" if session is not None else share is not None or bool(jetstream)
    return CloudConfig(
        broker=address,
        db_url=db,
        keys_dirs=tuple(keys),
        cloud_id=cloud_id,
        max_payload_bytes=max_payload_bytes,
        ready_file=ready_file,
        share_group=share,
        clean_session=clean,
        verify_threads=verify_threads,
        repair_interval_s=repair_interval_s,
        repair_grace_s=repair_grace_s,
        receipt_interval_s=receipt_interval_s,
        tls=None if pki is None else client_tls(pki, Role.CLOUD, cloud_id),
        jetstream=tuple(jetstream),
        broker_alternates=tuple(alternates),
        ack_wait_s=ack_wait_s,
    )


def check_republish_topics(rules: RulesConfig) -> None:
    """On a locked-down wire a cloud worker may write only under ``edgetally-out/`` beyond its
    receipts and commands (edgetally/acl.py): Mosquitto would refuse any other republish and
    close the worker's connection on each, so such a rules file is refused at start."""
    from cloud.engine.actions import RepublishAction
    from protocol.topics import RULES_OUTPUT_ROOT

    for rule in rules.enabled:
        for action in rule.actions:
            if isinstance(action, RepublishAction) and not action.topic.text.startswith(f"{RULES_OUTPUT_ROOT}/"):
                raise ConfigError(
                    f"rule {rule.name!r}: republish topic {action.topic.text!r} is outside {RULES_OUTPUT_ROOT}/,"
                    " the only tree a locked-down cloud broker lets a cloud worker write (or run with plain mqtt://)"
                )


def stop_on_signals(what: str) -> threading.Event:
    """An event SIGTERM and SIGINT set (logging ``what`` the command does then): a long-running
    command stops cleanly whichever a supervisor or a person sends."""
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        log.info("%s: %s", signal.Signals(signum).name, what)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    return stop


def load_registry(keys: Path) -> Registry:
    from protocol import Registry

    if not keys.is_dir():
        raise ConfigError(f"--keys {keys}: no such directory")
    try:
        return Registry.load(keys)
    except ProtocolError as err:
        raise ConfigError(f"--keys {keys}: {err}") from err


@app.command("run")
def run(
    broker: str = typer.Option(..., "--broker", help="cloud broker, mqtts://host:port (TLS) or mqtt://host:port; a cluster's nodes comma-separated"),
    pki: Path | None = typer.Option(
        None, "--pki", help="PKI directory (`edgetally pki init`) holding ca.crt and this worker's certificate"
    ),
    db: str = DB_OPTION,
    keys: list[Path] = typer.Option(
        [],
        "--keys",
        help="keys directory of an election (registry.json, cloud-signing.key); repeatable."
        " Stored in the database, with any added later by `cloud elections add`: all are served",
    ),
    cloud_id: str = typer.Option(
        DEFAULT_CLOUD_ID, "--id", help="worker name (MQTT client edgetally-cloud-NAME)"
    ),
    max_payload_bytes: int = typer.Option(DEFAULT_MAX_BYTES, "--max-payload-bytes"),
    ready_file: Path | None = typer.Option(
        None, "--ready-file", help="written once connected and subscribed"
    ),
    share: str | None = typer.Option(
        None,
        "--share",
        help="shared subscription group: workers with the same GROUP (and distinct --id)"
        " split the batches between them",
    ),
    session: str | None = typer.Option(
        None,
        "--session",
        help="MQTT session: persistent (default) or clean (default with --share)",
    ),
    verify_threads: int = typer.Option(
        2, "--verify-threads", help="threads verifying signatures while a group commits"
    ),
    repair_interval: float = typer.Option(
        2.0, "--repair-interval", help="seconds between repair requests to one device (doubling)"
    ),
    repair_grace: float = typer.Option(
        0.5, "--repair-grace", help="seconds a seq gap stays open before it is requested"
    ),
    receipt_interval: float = typer.Option(
        DEFAULT_RECEIPT_INTERVAL_S,
        "--receipt-interval",
        help="seconds: at most one receipt per device per interval, always the latest"
        " (0: every receipt at once)",
    ),
    rules_file: Path | None = typer.Option(
        None,
        "--rules",
        help="rules file (YAML or TOML, docs/rules.md); default: the rules shipped with EdgeTally",
    ),
    jetstream: list[str] = typer.Option(
        [],
        "--jetstream",
        help="a NATS JetStream cloud broker's nats:// (tls:// with --pki) address (repeatable):"
        " batches come from its shared durable consumers (docs/cloud-scaleout.md)",
    ),
    ack_wait: float | None = typer.Option(
        None,
        "--ack-wait",
        help="with --jetstream: seconds before an unacknowledged batch goes to another worker; sets the"
        " shared consumers' ack wait (default: leave it as it is, 10 s where this worker creates them)",
    ),
) -> None:
    """Consume batches from the cloud broker, run the rules (ledger, alerts, ...); publish
    receipts."""
    from cloud.db import make_engine, upgrade
    from cloud.elections import Elections, load_served, served_from
    from cloud.engine.engine import RulesEngine
    from cloud.engine.rulefile import load_rules
    from cloud.ledger.ledger import Ledger
    from cloud.worker.status import StatusStore
    from cloud.worker.worker import CloudWorker

    try:
        rules = load_rules(rules_file)  # a bad rules file is refused before anything starts
        armed = faults.arm_from_environment()
        config = build_config(
            broker, db, keys, cloud_id, max_payload_bytes, ready_file, share, session,
            verify_threads, repair_interval, repair_grace, receipt_interval, pki, jetstream, ack_wait,
        )  # fmt: skip
        served = [served_from(k) for k in config.keys_dirs]  # each checked before anything starts
        if len({s.id for s in served}) < len(served):
            twice = sorted({s.id for s in served if [t.id for t in served].count(s.id) > 1})
            raise ConfigError(f"--keys: election {', '.join(twice)} is given twice; give each election once")
        if config.tls is not None:
            from cloud.worker.session import check_tls

            check_tls(config.tls)  # a missing or bad certificate stops the worker here, named
            check_republish_topics(rules)  # the locked broker's ACL would refuse the others
        engine = make_engine(config.db_url)
        upgrade(engine)
        elections = Elections(served, loader=load_served(engine))
        ledger = Ledger(engine, elections, max_payload_bytes=config.max_payload_bytes)
        ledger.prepare()  # stores what --keys gave; then what the database holds besides
        elections.refresh(force=True)
        if not len(elections):
            raise ConfigError("no election to serve: give --keys DIR, or add one with `edgetally cloud elections add`")
        rules_engine = RulesEngine(ledger, elections, rules, engine)
    except CloudError as err:
        _fail("run", err)
    if armed:
        log.warning("TEST-ONLY fault injection armed: %s", armed)
    log.info(
        "rules from %s: %s",
        rules.source,
        ", ".join(r.name if r.enabled else f"{r.name} (disabled)" for r in rules.rules),
    )
    stop = stop_on_signals("stopping after the current commit")
    log.info(
        "cloud %s: %s, %d devices, database %s, %s session%s",
        config.cloud_id,
        f"election {elections.ids[0]}" if len(elections) == 1 else f"{len(elections)} elections ({elections.describe()})",
        sum(len(s.registry.devices) for s in elections.served()),
        engine.url.render_as_string(hide_password=True),
        "clean" if config.clean_session else "persistent",
        f", shared group {config.share_group}" if config.share_group else "",
    )
    if config.jetstream:
        wait = "as the consumers have it" if config.ack_wait_s is None else f"{config.ack_wait_s:.1f}s"
        log.info("batches from JetStream at %s (ack wait %s)", ", ".join(config.jetstream), wait)
    # Everything loaded so far (modules, the registry, the rules) lives as long as the process:
    # out of the collector's sight, each full collection walks only what ingest allocates.
    gc.freeze()
    try:
        CloudWorker(
            config, ledger, StatusStore(engine), rules=rules_engine, signing_key=elections
        ).run(stop)
    finally:
        engine.dispose()


@app.command("migrate")
def migrate(db: str = DB_OPTION) -> None:
    """Create or upgrade the cloud database schema (Alembic, to the newest revision)."""
    from cloud.db import make_engine, upgrade

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
    unit: str | None = typer.Option(
        None, "--unit", help="reporting unit to show (default: the root of the election)"
    ),
    windows: bool = typer.Option(
        False, "--windows", help="ballots and votes over time (tumbling windows on issued_at)"
    ),
    last: int = typer.Option(
        0, "--last", min=0, help="with --windows: only the last N windows in the tables"
    ),
) -> None:
    """Totals of a reporting unit: per-contest votes and shares, ballots, turnout, precincts
    reporting, its child units; or with --windows, ballots and votes per time window."""
    if windows:
        _trend(db, election, unit, as_json=as_json, last=last)
        return
    from cloud.results.results import render
    from cloud.results.sqlite import load_results_file, sqlite_file

    path = sqlite_file(db)
    try:
        if path is not None:  # the stdlib reader: no SQLAlchemy to import
            loaded = load_results_file(path, db, election, unit)
        else:
            from cloud.db import make_engine
            from cloud.results.results import load_results

            engine = make_engine(db, create=False, writer=False)
            try:
                loaded = load_results(engine, election, unit)
            finally:
                engine.dispose()
    except CloudError as err:
        _fail("results", err)
    if as_json:
        typer.echo(json.dumps(loaded.to_mapping(), indent=2, sort_keys=True))
    else:
        render(loaded, Console())


def _trend(db: str, election: str | None, unit: str | None, *, as_json: bool, last: int) -> None:
    from cloud.db import make_engine
    from cloud.results.trend import load_trend, render_trend

    try:
        engine = make_engine(db, create=False, writer=False)
        try:
            trend = load_trend(engine, election, unit)
        finally:
            engine.dispose()
    except CloudError as err:
        _fail("results", err)
    if as_json:
        typer.echo(json.dumps(trend.to_mapping(), indent=2, sort_keys=True))
    else:
        render_trend(trend, Console(), last=last)


@app.command("export")
def export(
    db: str = DB_OPTION,
    fmt: str = typer.Option(
        ..., "--format", help="nist-1500-100 (NIST SP 1500-100 v2 JSON) or csv"
    ),
    out: Path | None = typer.Option(
        None, "--out", help="write FILE (atomically: a temporary file renamed); default stdout"
    ),
    election: str | None = typer.Option(
        None, "--election", help="election id, if the database holds several"
    ),
) -> None:
    """The election's results per reporting unit, contest and choice, as NIST SP 1500-100 v2
    JSON (an ElectionReport) or as CSV; the figures `results --json` shows."""
    from datetime import UTC, datetime

    from cloud.export.export import export_text, write_atomically

    try:
        text = export_text(db, fmt, election, datetime.now(UTC))
        if out is not None:
            write_atomically(out, text)
    except CloudError as err:
        _fail("export", err)
    if out is None:
        typer.echo(text, nl=False)


@app.command("audit")
def audit(
    db: str = DB_OPTION,
    keys: Path = typer.Option(..., "--keys", help="keys directory holding registry.json"),
    as_json: bool = typer.Option(False, "--json", help="print JSON instead of tables"),
    election: str | None = typer.Option(
        None, "--election", help="election id (default: the registry's)"
    ),
    limit: int = typer.Option(
        DEFAULT_LIMIT, "--limit", min=0, help="discrepancies listed per check (0: all)"
    ),
) -> None:
    """Re-verify every signature and hash chain, find seq gaps and missing final batches,
    check final totals, recompute tallies and windows from the ledger. Exit 0 only if all
    hold; 1 if anything does not (or the audit cannot run: one line on stderr)."""
    from cloud.audit.audit import render_audit, run_audit
    from cloud.db import make_engine

    try:
        registry = load_registry(keys)
        engine = make_engine(db, create=False, writer=False)
        report = run_audit(engine, registry, election, limit=limit)
    except CloudError as err:
        _fail("audit", err)
    engine.dispose()
    if as_json:
        typer.echo(json.dumps(report.to_mapping(), indent=2, sort_keys=True))
    else:
        render_audit(report, Console())
    if not report.ok:
        raise typer.Exit(1)


@app.command("settings")
def settings(
    db: str = DB_OPTION,
    window_seconds: int | None = typer.Option(
        None,
        "--window-seconds",
        help="set the trend window width; every window is rebuilt from the ledger",
    ),
) -> None:
    """Show the settings stored with the data, or change the window width."""
    from cloud.db import make_engine
    from cloud.results.windows import load_width, set_window_width

    try:
        if window_seconds is None:
            engine = make_engine(db, create=False, writer=False)
            width = load_width(engine)
        else:
            engine = make_engine(db, create=False)
            placed = set_window_width(engine, window_seconds)
            width = window_seconds
            typer.echo(f"windows rebuilt from {placed:,} ledger rows")
    except CloudError as err:
        _fail("settings", err)
    engine.dispose()
    typer.echo(f"window_seconds = {width}")


@app.command("gateways")
def gateways(
    db: str = DB_OPTION,
    as_json: bool = typer.Option(False, "--json", help="print JSON instead of a table"),
) -> None:
    """The latest status each gateway reported: links, buffer depth, dropped rejects, rates, age."""
    from cloud.db import make_engine
    from cloud.worker.status import load_gateways, render_gateways

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


LIMIT_OPTION = typer.Option(
    DEFAULT_OUTPUT_LIMIT, "--limit", min=0, help="the newest N rows (0: all)"
)


@app.command("alerts")
def alerts(
    db: str = DB_OPTION,
    as_json: bool = typer.Option(False, "--json", help="print JSON instead of a table"),
    rule: str | None = typer.Option(None, "--rule", help="only this rule's alerts"),
    device: str | None = typer.Option(None, "--device", help="only this device's alerts"),
    election: str | None = typer.Option(None, "--election", help="only this election's alerts"),
    limit: int = LIMIT_OPTION,
) -> None:
    """Alerts the rules raised (severity, rule, device, seq, message), oldest first."""
    from cloud.db import make_engine
    from cloud.engine import outputs
    from cloud.results.results import sa_query, stored_election

    try:
        engine = make_engine(db, create=False, writer=False)
        if election is not None:  # one the database does not hold is named, with what it holds
            with engine.connect() as conn:
                stored_election(sa_query(conn), election)
        found = outputs.load_alerts(engine, rule=rule, device=device, election=election, limit=limit)
    except CloudError as err:
        _fail("alerts", err)
    engine.dispose()
    if as_json:
        typer.echo(json.dumps(found, indent=2))
    else:
        outputs.render_alerts(found, Console())


@app.command("stored")
def stored(
    db: str = DB_OPTION,
    table: str | None = typer.Option(
        None, "--table", help="the store action's table (default: list the tables)"
    ),
    as_json: bool = typer.Option(False, "--json", help="print JSON instead of a table"),
    limit: int = LIMIT_OPTION,
) -> None:
    """Rows the rules' store actions kept, in one named table; or the tables and their sizes."""
    from cloud.db import make_engine
    from cloud.engine import outputs

    try:
        engine = make_engine(db, create=False, writer=False)
        if table is None:
            tables = outputs.stored_tables(engine)
        else:
            found = outputs.load_stored(engine, table, limit=limit)
    except CloudError as err:
        _fail("stored", err)
    engine.dispose()
    if table is None:
        if as_json:
            typer.echo(json.dumps(tables, indent=2))
        else:
            outputs.render_tables(tables, Console())
    elif as_json:
        typer.echo(json.dumps(found, indent=2))
    else:
        outputs.render_stored(table, found, Console())


@app.command("dead-letters")
def dead_letters(
    db: str = DB_OPTION,
    as_json: bool = typer.Option(False, "--json", help="print JSON instead of a table"),
    limit: int = LIMIT_OPTION,
) -> None:
    """Rows whose action failed, and their error action too (or had none), with the error."""
    from cloud.db import make_engine
    from cloud.engine import outputs

    try:
        engine = make_engine(db, create=False, writer=False)
        found = outputs.load_dead_letters(engine, limit=limit)
    except CloudError as err:
        _fail("dead-letters", err)
    engine.dispose()
    if as_json:
        typer.echo(json.dumps(found, indent=2))
    else:
        outputs.render_dead_letters(found, Console())


@app.command("serve")
def serve(
    db: str = DB_OPTION,
    host: str = typer.Option("127.0.0.1", "--host", help="address to listen on"),
    port: int = typer.Option(8080, "--port", min=0, max=65535, help="port (0 = a free one, named in the ready file)"),
    election: str | None = typer.Option(None, "--election", help="which election (default: the only one)"),
    poll: float = typer.Option(0.25, "--poll", min=0.05, max=60, help="seconds between database polls"),
    ready_file: Path | None = typer.Option(None, "--ready-file", help="written once serving: JSON with pid and port"),
    feed: Path | None = typer.Option(None, "--feed", help="also serve this `cloud publish --out` directory under /feed/"),
    keys: Path | None = typer.Option(None, "--keys", help="the election's registry: /api/audit serves the audit's verdict"),
) -> None:
    """Serve results over HTTP, read-only: the live page, JSON per unit with ETags, SSE changes, /metrics."""
    from cloud.serve.app import ServeConfig
    from cloud.serve.server import serve as run_server

    try:
        if feed is not None and not feed.is_dir():
            raise ConfigError(f"--feed {feed}: no such directory (make it with `edgetally cloud publish --out {feed}`)")
        registry = load_registry(keys) if keys is not None else None
        run_server(db, host, port, ServeConfig(election=election, poll_s=poll, feed=feed), ready_file, registry)
    except CloudError as err:
        _fail("serve", err)


@app.command("publish")
def publish(
    db: str = DB_OPTION,
    out: Path = typer.Option(..., "--out", help="the feed's directory (current_ver.txt, v/{version}/...)"),
    every: float | None = typer.Option(None, "--every", min=0.05, help="keep publishing each new version, polling every S seconds, until Ctrl-C or SIGTERM"),
    keep: int = typer.Option(10, "--keep", min=1, help="versions kept (older ones are removed; never the current one)"),
    election: str | None = typer.Option(None, "--election", help="which election (default: the only one)"),
) -> None:
    """Publish a static, versioned results feed a CDN can serve (current_ver.txt last)."""
    from cloud.db import make_engine
    from cloud.serve.feed import current, publish_until

    stop = stop_on_signals("stopping after the current version")
    try:
        engine = make_engine(db, create=False, writer=False)
        written = publish_until(engine, out, election=election, every=every, keep=keep, stop=stop)
    except CloudError as err:
        _fail("publish", err)
    typer.echo(f"published {written} new version(s); current: {current(out)}")

