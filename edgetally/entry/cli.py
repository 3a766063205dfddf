"""`edgetally entry ...`: key, compare, resolve and correct tally sheets; send their batches."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

import typer
from rich.console import Console
from rich.table import Table

from edgetally.entry.errors import EntryError
from edgetally.entry.sheet import Figures, differences, load_figures, prompt_figures
from edgetally.entry.state import Keying, Round, StationState
from edgetally.entry.station import Outcome, Station, correction_reason
from protocol import ProtocolError, Registry

T = TypeVar("T")

app = typer.Typer(help="Key precinct tally sheets by hand, double-keyed, into the pipeline.", no_args_is_help=True)
out = Console()
err = Console(stderr=True)

SHEET = typer.Option(..., "--sheet", help="The tally sheet's id (printed on the paper sheet)")
KEYS = typer.Option(..., "--keys", help="Keys directory: registry.json, the manual sources' and operators' keys")
STATION = typer.Option(..., "--station", help="The station's directory (its state, station.db, 0600)")
FROM = typer.Option(None, "--from", help='Scripted input: JSON {"ballots": n, "counts": {contest: {choice: n}}} (default: prompts)')
BROKER = typer.Option(None, "--broker", help="Edge broker, mqtts://host:port (the manual source's certificate from --keys) or mqtt://; without it the batch waits for `entry send`")
TIMEOUT = typer.Option(10.0, "--timeout", min=0.1, help="Seconds to wait for the broker (connect, each PUBACK)")


def _fail(message: str, code: int = 2) -> typer.Exit:
    err.print(f"[bold red]error:[/] {message}")
    return typer.Exit(code)


def _open(keys: Path | None, station_dir: Path) -> tuple[Registry | None, StationState]:
    try:
        registry = Registry.load(keys) if keys is not None else None
        return registry, StationState(station_dir).open()
    except (EntryError, ProtocolError) as exc:
        raise _fail(str(exc)) from exc


def _figures(registry: Registry, source: Path | None, who: str) -> Figures:
    if source is not None:
        return load_figures(registry.election, source)
    out.print(f"[bold]{who}[/]: key the sheet as written (ballots, then each contest's choices)")
    return prompt_figures(registry.election, lambda label: int(typer.prompt(label, type=int)))


def _send(station: Station, broker: str | None, timeout: float) -> int:
    from edgetally.entry.send import publish  # the MQTT client, only when something is sent
    from protocol import parse_broker_url

    pending = station.state.unsent()
    if not pending:
        return 0
    if broker is None:
        out.print(f"{len(pending)} batch(es) signed, not sent: `edgetally entry send --broker URL`")
        return 0
    address = parse_broker_url(broker)
    publish(address, station.keys, station.election.id, pending, station.state.mark_sent, timeout)
    for batch in pending:
        out.print(f"sent: sheet {batch.sheet} as {batch.device} seq {batch.seq} (PUBACK from {address.url})")
    return len(pending)


def _report(outcome: Outcome, station: Station, broker: str | None, timeout: float) -> None:
    r = outcome.round
    what = f"sheet {r.sheet}" + (f" correction {r.round}" if r.round else "")
    if outcome.waiting:
        out.print(f"{what}: keyed, signed; waiting for a second operator")
        return
    if outcome.conflict is not None:
        out.print(f"[bold yellow]{what}: the keyings differ; nothing sent[/] (`edgetally entry conflicts`)")
        raise typer.Exit(1)
    assert outcome.batch is not None
    out.print(f"{what}: keyings agree; signed as {outcome.batch.device} seq {outcome.batch.seq}")
    _send(station, broker, timeout)


def _run(keys: Path, station_dir: Path, action: Callable[[Station, Registry], T]) -> tuple[T, Station]:
    registry, state = _open(keys, station_dir)
    assert registry is not None
    try:
        station = Station(registry, keys, state)
        return action(station, registry), station
    except (EntryError, ProtocolError) as exc:
        state.close()
        raise _fail(str(exc)) from exc


@contextmanager
def _finishing(station: Station) -> Iterator[None]:
    """The rest of a command on an opened station: its error as one line, its state closed."""
    try:
        yield
    except EntryError as exc:
        raise _fail(str(exc)) from exc
    finally:
        station.state.close()


@app.command("key")
def key_cmd(
    sheet: str = SHEET,
    precinct: str = typer.Option(..., "--precinct", help="The precinct the sheet reports"),
    operator: str = typer.Option(..., "--operator", help="Who keys (an operator id of the registry, e.g. operator-1)"),
    keys: Path = KEYS, station_dir: Path = STATION, source: Path | None = FROM,
    broker: str | None = BROKER, timeout: float = TIMEOUT,
) -> None:
    """Key a sheet; once two operators agree, sign its batch and send it."""
    outcome, station = _run(keys, station_dir, lambda st, reg: st.key(sheet, precinct, operator, _figures(reg, source, operator)))
    with _finishing(station):
        _report(outcome, station, broker, timeout)


@app.command("correct")
def correct_cmd(
    sheet: str = SHEET,
    reason: str = typer.Option(..., "--reason", help="Why the submitted sheet is corrected (signed with it)"),
    operator: str = typer.Option(..., "--operator", help="Who keys the corrected sheet"),
    keys: Path = KEYS, station_dir: Path = STATION, source: Path | None = FROM,
    broker: str | None = BROKER, timeout: float = TIMEOUT,
) -> None:
    """Key the corrected sheet (double-keyed like the first); the batch sent is the deltas and the reason."""
    def act(st: Station, reg: Registry) -> Outcome:
        current = st.state.current(sheet)
        if current is None:
            raise EntryError(f"sheet {sheet!r} was never keyed at this station")
        return st.key(sheet, current.precinct, operator, _figures(reg, source, operator), reason=correction_reason(reason))

    outcome, station = _run(keys, station_dir, act)
    with _finishing(station):
        _report(outcome, station, broker, timeout)


@app.command("resolve")
def resolve_cmd(
    sheet: str = SHEET,
    supervisor: str = typer.Option(..., "--supervisor", help="Who resolves (a supervisor id of the registry)"),
    keys: Path = KEYS, station_dir: Path = STATION, source: Path | None = FROM,
    broker: str | None = BROKER, timeout: float = TIMEOUT,
) -> None:
    """Resolve a sheet in conflict with the supervisor's figures and signature; send its batch."""
    outcome, station = _run(keys, station_dir, lambda st, reg: st.resolve(sheet, supervisor, _figures(reg, source, supervisor)))
    with _finishing(station):
        assert outcome.batch is not None
        out.print(f"sheet {sheet}: resolved by {supervisor}; signed as {outcome.batch.device} seq {outcome.batch.seq}")
        _send(station, broker, timeout)


@app.command("send")
def send_cmd(keys: Path = KEYS, station_dir: Path = STATION, broker: str = typer.Option(..., "--broker"), timeout: float = TIMEOUT) -> None:
    """Send every signed batch the broker has not acknowledged yet."""
    _, station = _run(keys, station_dir, lambda st, reg: None)
    with _finishing(station):
        if _send(station, broker, timeout) == 0:
            out.print("nothing to send")


@app.command("conflicts")
def conflicts_cmd(
    station_dir: Path = STATION,
    keys: Path | None = typer.Option(None, "--keys", help="Keys directory: show contest and choice names"),
    as_json: bool = typer.Option(False, "--json", help="Print JSON"),
) -> None:
    """The sheets whose keyings differ: every contest and choice that differs, each keying's figure."""
    registry, state = _open(keys, station_dir)
    rows: list[tuple[Round, list[Keying], dict[tuple[str, str], list[int]]]] = []
    try:
        for r in [r for r in state.rounds() if r.status == "conflict"]:
            keyings = state.keyings(r.sheet, r.round)
            ops = [k for k in keyings if k.role == "operator"]
            diffs = {(c, ch): [a, b] for c, ch, a, b in differences(ops[0].figures, ops[1].figures)}
            rows.append((r, ops, diffs))
    finally:
        state.close()
    if as_json:
        typer.echo(json.dumps([
            {"sheet": r.sheet, "round": r.round, "precinct": r.precinct, "operators": [k.signer for k in ops],
             "differences": [{"contest": c, "choice": ch, "figures": v} for (c, ch), v in diffs.items()]}
            for r, ops, diffs in rows
        ], indent=2))
        return
    if not rows:
        out.print("no conflicts")
        return
    for r, ops, diffs in rows:
        table = Table(title=f"sheet {r.sheet} (precinct {r.precinct}{f', correction {r.round}' if r.round else ''})")
        table.add_column("contest")
        table.add_column("choice")
        for k in ops[:2]:
            table.add_column(k.signer, justify="right")
        for (contest, choice), (a, b) in diffs.items():
            table.add_row(*_names(registry, contest, choice), str(a), str(b))
        out.print(table)


def _names(registry: Registry | None, contest: str, choice: str) -> tuple[str, str]:
    if registry is None or contest == "ballots":
        return contest, choice
    found = registry.election.contest(contest)
    if found is None:
        return contest, choice
    name = next((c.name for c in found.choices if c.id == choice), choice)
    return found.name, name


@app.command("sheets")
def sheets_cmd(station_dir: Path = STATION) -> None:
    """Every sheet and round this station holds, with its state."""
    _, state = _open(None, station_dir)
    try:
        table = Table(title="sheets")
        for column in ("sheet", "round", "precinct", "source", "status", "resolved by", "reason"):
            table.add_column(column)
        for r in state.rounds():
            table.add_row(r.sheet, str(r.round), r.precinct, r.device, r.status, r.resolved_by or "", r.reason or "")
    finally:
        state.close()
    out.print(table)
