"""Helpers for the rules-engine tests: rules from YAML text, crafted batches signed with the
device's real key, and the engine's tables read back."""

from __future__ import annotations

import contextlib
import dataclasses
import json
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import yaml
from sqlalchemy import select
from sqlalchemy.engine import Engine

from cloud import models
from cloud.engine.engine import RulesEngine
from cloud.engine.rulefile import RulesConfig, load_rules, parse_rules
from cloud.ledger.ledger import Inbound, Ledger
from protocol import GENESIS_HASH, BatchBody, Registry, Totals, body_hash
from tests.cloud.support import Envelopes

BATCHES = "'edgetally/v1/+/+/batch'"
LEDGER_RULE = f"""
  - name: ledger
    sql: SELECT * FROM {BATCHES}
    actions: [{{ledger: {{}}}}]
"""


def rules(text: str, *, with_ledger: bool = True) -> RulesConfig:
    """Rules from the YAML list items in ``text`` (after the ledger rule, by default)."""
    body = (LEDGER_RULE if with_ledger else "") + text
    return parse_rules(yaml.safe_load("rules:\n" + body), "test-rules.yaml")


def rules_engine(
    ledger: Ledger, registry: Registry, engine: Engine, config: RulesConfig | None = None
) -> RulesEngine:
    return RulesEngine(ledger, registry, config if config is not None else load_rules(), engine)


def crafted(
    envelopes: Envelopes,
    device: str,
    *,
    seq: int = 1,
    prev: str | BatchBody | None = None,
    ballots: int = 1,
    counts: dict[str, dict[str, int]] | None = None,
    final: bool = False,
) -> BatchBody:
    """A batch of ``device`` with the given figures; a final one carries matching totals."""
    election = envelopes.election
    precinct = election.precinct_of(device)
    assert precinct is not None
    if counts is None:
        first = election.contests[0]
        counts = {first.id: {first.choices[0].id: ballots}}
    if isinstance(prev, BatchBody):
        prev = body_hash(prev.to_bytes())
    return BatchBody(
        election=election.id,
        device=device,
        precinct=precinct,
        seq=seq,
        prev=prev or GENESIS_HASH,
        issued_at="2026-11-03T20:01:00Z",
        ballots=ballots,
        counts=counts,
        final=final,
        totals=Totals(ballots, counts) if final else None,
    )


def at(message: Inbound, when: datetime) -> Inbound:
    return dataclasses.replace(message, received_at=when)


def rows(engine: Engine, table: Any, **where: Any) -> list[dict[str, Any]]:
    """The table's rows (in id order when it has one), ``row`` decoded from JSON."""
    query = select(table)
    for column, value in where.items():
        query = query.where(table.c[column] == value)
    if "id" in table.c:
        query = query.order_by(table.c.id)
    with engine.connect() as conn:
        found = [dict(r._mapping) for r in conn.execute(query)]
    for r in found:
        if "row" in r:
            r["row"] = json.loads(r["row"])
    return found


def alerts(engine: Engine) -> list[dict[str, Any]]:
    return rows(engine, models.alerts)


def dead_letters(engine: Engine) -> list[dict[str, Any]]:
    return rows(engine, models.dead_letters)


@contextlib.contextmanager
def refusing(engine: Engine, table: str, column: str, value: str) -> Iterator[None]:
    """While inside, the database itself refuses (a trigger raises) every insert into
    ``table`` whose ``column`` is ``value``: a real failure of that action's statement."""
    name = f"refuse_{table}"
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            conn.exec_driver_sql(
                f"CREATE FUNCTION {name}() RETURNS trigger AS $$ BEGIN"
                f" IF NEW.{column} = '{value}' THEN RAISE EXCEPTION 'refused by the test';"
                " END IF; RETURN NEW; END $$ LANGUAGE plpgsql"
            )
            conn.exec_driver_sql(
                f"CREATE TRIGGER {name} BEFORE INSERT ON {table} FOR EACH ROW"
                f" EXECUTE FUNCTION {name}()"
            )
        else:
            conn.exec_driver_sql(
                f"CREATE TRIGGER {name} BEFORE INSERT ON {table}"
                f" WHEN NEW.{column} = '{value}'"
                " BEGIN SELECT RAISE(ABORT, 'refused by the test'); END"
            )
    try:
        yield
    finally:
        with engine.begin() as conn:
            conn.exec_driver_sql(
                f"DROP TRIGGER {name}"
                + (f" ON {table}" if engine.dialect.name == "postgresql" else "")
            )
            if engine.dialect.name == "postgresql":
                conn.exec_driver_sql(f"DROP FUNCTION {name}()")
