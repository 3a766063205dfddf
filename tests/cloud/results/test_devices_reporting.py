"""Devices reporting, confirmed and silent, and each choice's share, per unit (cloud/results/), on SQLite and
PostgreSQL: a device is reporting once any batch of its is counted, confirmed when every seq up
to its final one is, silent otherwise; each unit sums its own."""

from __future__ import annotations

from sqlalchemy.engine import Engine

from cloud.ledger.ledger import Ledger
from cloud.results.results import load_results
from tests.cloud.results_support import BATCHES, fill
from tests.cloud.support import Envelopes


def test_devices_are_reporting_confirmed_or_silent_in_every_unit(ledger: Ledger, engine: Engine, envelopes: Envelopes) -> None:
    election = envelopes.election
    county = election.units[election.units[election.root].children[0]]
    precinct = next(u for u in election.walk(county.id) if u.is_precinct and len(u.devices) >= 2)
    whole, gapped = precinct.devices[0], precinct.devices[1]
    silent = list(precinct.devices[2:])
    fill(ledger, envelopes, [whole, gapped], skip=[(gapped, 2)])  # gapped: final in, seq 2 missing

    got = load_results(engine, unit_id=precinct.id).to_mapping()
    assert (got["devices_reporting"], got["devices_confirmed"], got["devices_silent"]) == (2, 1, len(silent))
    assert got["devices_final"] == 2  # both finals are in; only one device's chain is whole
    root = load_results(engine).to_mapping()
    assert (root["devices_reporting"], root["devices_confirmed"]) == (2, 1)
    assert root["devices_silent"] == len(election.devices) - 2
    for child in root["children"]:
        expected = (2, 1) if child["id"] == county.id else (0, 0)
        assert (child["devices_reporting"], child["devices_confirmed"]) == expected, child["id"]

    fill(ledger, envelopes, [gapped], batches=BATCHES)  # seq 2 arrives; the rest are duplicates
    got = load_results(engine, unit_id=precinct.id).to_mapping()
    assert (got["devices_reporting"], got["devices_confirmed"]) == (2, 2)


def test_each_choice_has_its_share_of_the_contests_votes(ledger: Ledger, engine: Engine, envelopes: Envelopes) -> None:
    empty = load_results(engine).to_mapping()
    assert all(share is None for choices in empty["shares"].values() for share in choices.values())
    fill(ledger, envelopes, list(envelopes.election.devices)[:10])
    got = load_results(engine).to_mapping()
    for contest, choices in got["contests"].items():
        total = sum(choices.values())
        assert got["shares"][contest] == {c: round(n / total, 6) for c, n in choices.items()}
        assert abs(sum(got["shares"][contest].values()) - 1) < 1e-5
