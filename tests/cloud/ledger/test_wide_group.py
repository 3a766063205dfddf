"""A group of batches from more devices than SQLite takes conditions in one statement (its
expression depth is 1,000): the ledger reads the devices' rows in chunks, and the whole group
is counted. Before, such a group failed as "database unavailable", which a caller retries forever."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy.engine import Engine

from cloud.ledger.ledger import Ledger
from cloud.results.results import load_results
from devices.generator import device_batches
from devices.synth import synth_election
from protocol import load_signing_key, provision, seal
from tests.cloud.support import raw_inbound

DEVICES = 1_200


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)], indirect=True)
def test_a_group_from_1200_devices_is_counted_in_one_transaction(engine: Engine, tmp_path: Path) -> None:
    election = synth_election(DEVICES, DEVICES // 5, seed=2)
    keys = tmp_path / "keys"
    registry = provision(election, keys)
    ledger = Ledger(engine, registry, max_payload_bytes=64 * 1024)
    ledger.prepare()
    group = []
    for device in election.devices:
        (body,) = device_batches(election, 4, device, 1)
        group.append(raw_inbound(seal(body, load_signing_key(keys, device)).to_bytes(), f"edgetally/v1/{election.id}/{device}/batch"))
    ledger.record(group)
    got = load_results(engine, election.id).to_mapping()
    assert got["batches"] == DEVICES and got["devices_final"] == DEVICES
