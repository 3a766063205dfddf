"""What a rule does with its rows: the actions, their templates, and the writes they make.

Configuration (built once by :mod:`cloud.engine.rulefile`, frozen):

    LedgerAction     the exactly-once path (verify, ledger row, tallies, windows, receipts); run
                     by :mod:`cloud.engine.engine` through :class:`cloud.ledger.ledger.Ledger`, not here
    AlertAction      severity and a message template: a row in ``alerts``, logged at WARNING
    StoreAction      a logical table name: the row in ``stored_rows`` under that name
    RepublishAction  a topic template and a QoS: the row as JSON, published after the commit

Execution (called by the engine): :func:`write_alerts`, :func:`write_stored` and
:func:`write_dead_letters` insert many rows in one statement inside the group's transaction;
each call runs under its own SAVEPOINT (:func:`isolated`), and when the statement fails the rows
are tried one by one, each under its own SAVEPOINT, so that only the failing row's action fails.
Every row carries a ``dedup_key`` (rule, action slot, the message's body hash, the ledger
outcome, the row's index): a redelivered message that gets the same outcome adds nothing
(``ON CONFLICT DO NOTHING``), which makes alerts, stored rows and dead letters exactly-once with
the batch. A dead letter the database refuses is handed back (the engine logs it at ERROR).
:func:`render_republish` renders a republish inside the transaction; :func:`publish` hands it
to paho after the commit and checks the return code.

Templates: ``${field}`` (or ``${field.sub}``) is replaced by the row's value: strings as they
are, numbers as written, booleans ``true``/``false``, null ``null``, objects and arrays as JSON.
A field missing from the row (a column that was undefined) makes the action fail.

The module stays whole (some 420 lines): each action's configuration, its template and the
write it makes belong together, and the writes share one SAVEPOINT-and-retry rule
(:func:`write_rows`) and one dedup key; read apart, that rule would be far from the rows it
protects.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

import orjson
import paho.mqtt.client as mqtt
from sqlalchemy import Table, exc
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection

from cloud import models

SEVERITIES = ("info", "warning", "critical")
Severity = Literal["info", "warning", "critical"]
ERROR_FIELDS = ("error", "rule", "action")  # added to the row given to an error action
_PLACEHOLDER = re.compile(r"\$\{([^{}]*)\}")


class ActionFailed(Exception):
    """An action could not do its work for one row: the row goes to the error path."""


# -- templates ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Template:
    """A string with ``${field}`` placeholders, parsed once."""

    text: str
    parts: tuple[str | tuple[str, ...], ...]  # literal text, or a field path

    @classmethod
    def parse(cls, text: str) -> Template:
        """Raise ``ValueError`` naming the problem for a malformed template."""
        parts: list[str | tuple[str, ...]] = []
        at = 0
        for match in _PLACEHOLDER.finditer(text):
            parts.append(text[at : match.start()])
            path = tuple(segment.strip() for segment in match.group(1).split("."))
            if not all(path):
                raise ValueError(f"empty field name in {match.group(0)!r}")
            parts.append(path)
            at = match.end()
        rest = text[at:]
        if "${" in rest:
            raise ValueError(f"'${{' at {at + rest.index('${') + 1} is not closed by '}}'")
        parts.append(rest)
        return cls(text, tuple(p for p in parts if p != ""))

    @property
    def fields(self) -> tuple[str, ...]:
        """The top-level fields the template reads, in order."""
        return tuple(p[0] for p in self.parts if isinstance(p, tuple))

    def render(self, row: Mapping[str, Any]) -> str:
        """The text for ``row``; :class:`ActionFailed` if a field is not in it."""
        out: list[str] = []
        for part in self.parts:
            if isinstance(part, str):
                out.append(part)
                continue
            value: Any = row
            for depth, key in enumerate(part):
                if not isinstance(value, Mapping) or key not in value:
                    shown = ".".join(part[: depth + 1])
                    raise ActionFailed(f"template {self.text!r}: the row has no field {shown!r}")
                value = value[key]
            out.append(text_of(value))
        return "".join(out)

    def __str__(self) -> str:
        return self.text


def text_of(value: Any) -> str:
    if isinstance(value, str):
        return value
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    return row_json(value)


def row_json(row: Any) -> str:
    """A row as compact JSON text (column order kept)."""
    try:
        return orjson.dumps(row).decode("utf-8")
    except TypeError:  # an integer beyond 64 bits: the standard library writes it exactly
        return json.dumps(row, separators=(",", ":"), ensure_ascii=False)


# -- configuration ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LedgerAction:
    kind: Literal["ledger"] = "ledger"


@dataclass(frozen=True, slots=True)
class AlertAction:
    severity: Severity
    message: Template
    kind: Literal["alert"] = "alert"


@dataclass(frozen=True, slots=True)
class StoreAction:
    table: str
    kind: Literal["store"] = "store"


@dataclass(frozen=True, slots=True)
class RepublishAction:
    topic: Template
    qos: int
    kind: Literal["republish"] = "republish"


Action = LedgerAction | AlertAction | StoreAction | RepublishAction
OutputAction = AlertAction | StoreAction | RepublishAction  # what runs per row


# -- what the engine hands over -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Origin:
    """The message a row came from: stored with the row, named in logs, and (body hash and
    ledger outcome) part of the dedup key."""

    topic: str
    election: str | None
    device: str | None
    seq: int | None
    body_hash: str | None
    outcome: str | None


def dedup_key(rule: str, slot: str, index: int, origin: Origin) -> str:
    text = "\0".join(
        (rule, slot, origin.body_hash or origin.topic, origin.outcome or "", str(index))
    )
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


@dataclass(frozen=True, slots=True)
class Job:
    """One row for one action of one rule. ``slot`` is the action's place in the rule ("2"),
    or for the rule's error action "error:" and the place of the action that failed ("error:2");
    ``index`` is the row's position among the rows the rule gave for the message."""

    rule: str
    slot: str
    action: OutputAction
    row: Mapping[str, Any]
    index: int
    origin: Origin

    def dedup_key(self) -> str:
        return dedup_key(self.rule, self.slot, self.index, self.origin)

    @property
    def is_error_action(self) -> bool:
        return self.slot.startswith("error:")

    @property
    def label(self) -> str:
        """How dead letters and logs name the action: 'alert (action 2)', 'store (error_action)'."""
        where = "error_action" if self.is_error_action else f"action {self.slot}"
        return f"{self.action.kind} ({where})"


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A row whose action failed, and its error action too (or it had none)."""

    rule: str
    action: str  # Job.label, or "evaluate" when the rule itself could not be evaluated
    error: str
    row: Mapping[str, Any]
    index: int
    origin: Origin

    def dedup_key(self) -> str:
        return dedup_key(self.rule, f"dead:{self.action}", self.index, self.origin)


@dataclass(frozen=True, slots=True)
class Failure:
    job: Job
    error: str


@dataclass(frozen=True, slots=True)
class Written:
    """What one write did: rows it inserted, rows already stored by an earlier delivery of
    the same message (same dedup key), and rows the database refused."""

    inserted: list[Any]
    existing: list[Any]
    refused: list[tuple[Any, str]]


# -- writes -----------------------------------------------------------------------------

# What a database refuses because of one row's values (a constraint, a trigger, a value too
# long): the action fails for that row. Anything else (the database gone, the disk full) is a
# failure of the group's transaction and propagates: the group is retried, nothing is acked.
ROW_ERRORS = (exc.IntegrityError, exc.DataError, exc.ProgrammingError, exc.InternalError)


@contextmanager
def isolated(conn: Connection) -> Iterator[None]:
    """A SAVEPOINT: what fails inside rolls back alone; the transaction goes on."""
    with conn.begin_nested():
        yield


def _insert(conn: Connection, table: Table, rows: list[dict[str, Any]]) -> set[str]:
    """Insert ``rows`` in one statement, skipping dedup keys already stored; return the keys
    this statement inserted."""
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    statement = (
        dialect.insert(table)
        .on_conflict_do_nothing(index_elements=["dedup_key"])
        .returning(table.c.dedup_key)
    )
    return set(conn.execute(statement, rows).scalars().all())


def write_rows(
    conn: Connection, table: Table, items: Sequence[Any], make: Callable[[Any], dict[str, Any]]
) -> Written:
    """Insert one row per item (``make(item)`` builds it, :class:`ActionFailed` refuses it;
    ``item.dedup_key()`` keys it): all in one SAVEPOINT, or, if that statement fails, each in
    its own, so that only the rows the database refuses fail."""
    prepared: list[tuple[Any, dict[str, Any]]] = []
    refused: list[tuple[Any, str]] = []
    for item in items:
        try:
            row = make(item)
        except ActionFailed as err:
            refused.append((item, str(err)))
            continue
        row["dedup_key"] = item.dedup_key()
        prepared.append((item, row))
    if not prepared:
        return Written([], [], refused)
    keys: set[str] = set()
    bad: set[int] = set()
    try:
        with isolated(conn):
            keys = _insert(conn, table, [row for _, row in prepared])
    except ROW_ERRORS:
        for position, (item, row) in enumerate(prepared):
            try:
                with isolated(conn):
                    keys |= _insert(conn, table, [row])
            except ROW_ERRORS as err:
                bad.add(position)
                refused.append((item, f"{table.name}: {first_line(err)}"))
    inserted: list[Any] = []
    existing: list[Any] = []
    for position, (item, row) in enumerate(prepared):
        if position not in bad:
            (inserted if row["dedup_key"] in keys else existing).append(item)
    return Written(inserted, existing, refused)


def _origin_columns(origin: Origin) -> dict[str, Any]:
    return {
        "election": origin.election,
        "device": origin.device,
        "seq": origin.seq,
        "topic": origin.topic,
    }


def write_alerts(conn: Connection, jobs: Sequence[Job], now: datetime) -> Written:
    def make(job: Job) -> dict[str, Any]:
        action = job.action
        assert isinstance(action, AlertAction)
        return {
            "rule": job.rule,
            "severity": action.severity,
            "message": action.message.render(job.row),
            **_origin_columns(job.origin),
            "row": row_json(job.row),
            "raised_at": now,
        }

    return write_rows(conn, models.alerts, jobs, make)


def write_stored(conn: Connection, jobs: Sequence[Job], now: datetime) -> Written:
    def make(job: Job) -> dict[str, Any]:
        action = job.action
        assert isinstance(action, StoreAction)
        return {
            "table_name": action.table,
            "rule": job.rule,
            **_origin_columns(job.origin),
            "row": row_json(job.row),
            "stored_at": now,
        }

    return write_rows(conn, models.stored_rows, jobs, make)


def write_dead_letters(conn: Connection, letters: Sequence[DeadLetter], now: datetime) -> Written:
    def make(letter: DeadLetter) -> dict[str, Any]:
        return {
            "rule": letter.rule,
            "action": letter.action,
            "error": letter.error,
            **_origin_columns(letter.origin),
            "row": row_json(letter.row),
            "failed_at": now,
        }

    return write_rows(conn, models.dead_letters, letters, make)


# -- republish --------------------------------------------------------------------------

Publish = Callable[[str, bytes, int], int]  # (topic, payload, qos) -> paho rc


@dataclass(frozen=True, slots=True)
class Outgoing:
    """A republish rendered inside the transaction, published after the commit."""

    job: Job
    topic: str
    payload: bytes


def render_republish(job: Job, reserved: Callable[[str], bool]) -> Outgoing:
    """The topic and payload of a republish job; :class:`ActionFailed` if the topic is not one
    to publish on (empty, a wildcard, too long, or one of EdgeTally's own: ``reserved``)."""
    action = job.action
    assert isinstance(action, RepublishAction)
    topic = action.topic.render(job.row)
    problem = topic_name_problem(topic)
    if problem is None and reserved(topic):
        problem = "it is one of EdgeTally's own topics"
    if problem is not None:
        raise ActionFailed(f"republish topic {topic!r}: {problem}")
    return Outgoing(job, topic, row_json(job.row).encode("utf-8"))


def topic_name_problem(topic: str) -> str | None:
    """Why ``topic`` cannot be published on, or None."""
    if not topic:
        return "it is empty"
    if "\0" in topic:
        return "it contains NUL"
    if "+" in topic or "#" in topic:
        return "it contains a wildcard ('+' or '#')"
    if len(topic.encode("utf-8", "surrogatepass")) > 65535:
        return "it is longer than 65,535 bytes"
    return None


def publish(outgoing: Outgoing, send: Publish | None) -> str | None:
    """Hand ``outgoing`` to paho: None once paho took it (its rc checked), else the error."""
    action = outgoing.job.action
    assert isinstance(action, RepublishAction)
    if send is None:
        return "not connected to the broker"
    try:
        rc = send(outgoing.topic, outgoing.payload, action.qos)
    except ValueError as err:  # paho refuses the topic or the payload size
        return f"publish refused: {err}"
    if rc != mqtt.MQTT_ERR_SUCCESS:
        return f"publish failed: {mqtt.error_string(rc)}"
    return None


def first_line(err: exc.SQLAlchemyError) -> str:
    source: BaseException = getattr(err, "orig", None) or err
    lines = str(source).strip().splitlines()
    return lines[0] if lines else type(source).__name__
