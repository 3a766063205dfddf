"""Trend windows on issued_at, kept in the ledger's transaction: exact per window and per unit,
duplicates never counted twice, one width at a time, rebuilt when the width changes, and
filled for batches already in the ledger when the migration adds them."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

import pytest
from alembic import command
from alembic.config import Config
from sqlalchemy.engine import Engine

from cloud._exceptions import ConfigError
from cloud.audit.audit import run_audit
from cloud.db import MIGRATIONS, upgrade
from cloud.ledger.ledger import Ledger
from cloud.results.trend import load_trend
from cloud.results.windows import load_width, set_window_width, window_start
from protocol import Registry
from protocol.election import format_timestamp, parse_timestamp
from tests.cloud.results_support import BATCHES, devices_of, fill, scalar, sql
from tests.cloud.support import Envelopes


def expected_windows(
    envelopes: Envelopes, devices: Sequence[str], width: int, batches: int = BATCHES
) -> list[dict[str, Any]]:
    """Windows computed straight from the generator's bodies."""
    election = envelopes.election
    windows: dict[datetime, dict[str, Any]] = {}
    for device in devices:
        for body in envelopes.bodies(device, batches):
            start = window_start(parse_timestamp(body.issued_at, "issued_at"), width)
            w = windows.setdefault(
                start,
                {
                    "start": format_timestamp(start),
                    "end": format_timestamp(start + timedelta(seconds=width)),
                    "ballots": 0,
                    "batches": 0,
                    "contests": {c.id: dict.fromkeys(c.choice_ids, 0) for c in election.contests},
                },
            )
            w["ballots"] += body.ballots
            w["batches"] += 1
            for contest, choices in body.counts.items():
                for choice, n in choices.items():
                    w["contests"][contest][choice] += n
    return [windows[s] for s in sorted(windows)]


def test_windows_hold_each_batch_once_in_the_window_of_its_issued_at(
    ledger: Ledger, engine: Engine, envelopes: Envelopes
) -> None:
    election = envelopes.election
    devices = list(election.devices)
    sent = fill(ledger, envelopes, devices)
    ledger.record(sent[:50])  # redelivered: duplicates
    ledger.record(sent[100:110] + sent[100:110])

    trend = load_trend(engine).to_mapping()
    assert trend["window_seconds"] == 60
    assert trend["unit"] == election.root
    assert trend["windows"] == expected_windows(envelopes, devices, 60)
    assert len(trend["windows"]) == BATCHES  # the generator issues seq k at polls_close + k min
    county = election.units[election.root].children[1]
    assert load_trend(engine, unit_id=county).to_mapping()["windows"] == expected_windows(
        envelopes, devices_of(election, county), 60
    )


def test_empty_windows_between_batches_show_as_zero(
    ledger: Ledger, engine: Engine, envelopes: Envelopes
) -> None:
    device = envelopes.devices(1)[0]
    fill(ledger, envelopes, [device], skip=[(device, 2), (device, 3)])

    windows = load_trend(engine).to_mapping()["windows"]

    assert [(w["start"][11:16], w["batches"]) for w in windows] == [
        ("20:01", 1),
        ("20:02", 0),
        ("20:03", 0),
        ("20:04", 1),
    ]


def test_changing_the_width_rebuilds_every_window_and_new_batches_use_it(
    ledger: Ledger, engine: Engine, envelopes: Envelopes, registry: Registry
) -> None:
    election = envelopes.election
    first, later = list(election.devices[:40]), list(election.devices[40:])
    fill(ledger, envelopes, first)

    assert set_window_width(engine, 120) == len(first) * BATCHES
    fill(ledger, envelopes, later)  # recorded with the new width

    assert load_width(engine) == 120
    trend = load_trend(engine).to_mapping()
    assert trend["window_seconds"] == 120
    assert trend["windows"] == expected_windows(envelopes, list(election.devices), 120)
    assert [w["start"][11:16] for w in trend["windows"]] == ["20:00", "20:02", "20:04"]
    assert run_audit(engine, registry).ok


@pytest.mark.parametrize("width", [0, -5, 86_401])
def test_a_width_out_of_range_is_refused(engine: Engine, width: int) -> None:
    with pytest.raises(ConfigError, match="--window-seconds must be between 1 and 86400"):
        set_window_width(engine, width)


def test_upgrading_a_database_with_batches_puts_them_in_windows(
    ledger: Ledger, engine: Engine, envelopes: Envelopes, registry: Registry
) -> None:
    devices = envelopes.devices(12)
    fill(ledger, envelopes, devices)
    with engine.begin() as conn:  # back to the schema before windows existed
        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS))
        config.attributes["connection"] = conn
        command.downgrade(config, "0002")

    upgrade(engine)

    assert scalar(engine, "SELECT value FROM settings WHERE name = 'window_seconds'") == "60"
    assert load_trend(engine).to_mapping()["windows"] == expected_windows(envelopes, devices, 60)
    assert run_audit(engine, registry).check("windows").ok


def test_windows_of_another_width_than_the_stored_one_fail_the_audit(
    ledger: Ledger, engine: Engine, envelopes: Envelopes, registry: Registry
) -> None:
    fill(ledger, envelopes, envelopes.devices(3))
    sql(engine, "UPDATE settings SET value = '7'")  # a width changed without a rebuild

    report = run_audit(engine, registry)

    assert not report.check("windows").ok
    assert any("not start on a multiple of 7 s" in d.detail for d in report.check("windows").listed)
