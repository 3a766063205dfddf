"""Two elections through one gateway and one cloud worker, the second added while the worker
runs (`cloud elections add`), their device ids the same: every vote of each counted in its own
election, every receipt signed with that election's cloud key (real Mosquitto brokers, a real
`gateway run` and `cloud run`, real fleets).

The brokers are plain: the session's PKI and ACLs are made for the sample election, and this test
is about the cloud's elections. The ACL a gateway carrying several elections gets is checked line
by line in tests/edgetally/test_acl.py."""

from __future__ import annotations

import asyncio
import json
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from devices.fleet.config import FleetConfig
from devices.fleet.fleet import Fleet
from devices.fleet.stats import FleetSummary
from devices.generator import expected_totals
from devices.synth import synth_election
from edgetally.brokers import BrokerProcess
from protocol import Registry, parse_broker_url, provision
from tests.cloud.worker_support import Cloud
from tests.gateway.support import start_gateway
from tests.helpers import run_cli, wait_until

pytestmark = pytest.mark.integration

BATCHES = 3
SEEDS = {21: 31, 22: 32}  # election seed -> ballot seed


def test_an_election_added_to_a_running_cloud_is_counted_apart_from_one_with_the_same_device_ids(
    tmp_path: Path,
    broker_factory: Callable[..., BrokerProcess],
    processes: list[subprocess.Popen[bytes]],
) -> None:
    keys = {}
    for seed in SEEDS:
        keys[seed] = tmp_path / f"keys-{seed}"
        provision(synth_election(6, 2, seed), keys[seed])
    a, b = (Registry.load(keys[s]) for s in SEEDS)
    assert a.election.devices == b.election.devices  # the same ids: two devices each
    edge = broker_factory("edge", plain=True)
    cloud_broker = broker_factory("cloud", plain=True)
    cloud = Cloud(tmp_path, cloud_broker, keys[21], processes)
    cloud.start()
    start_gateway(
        processes, tmp_path, edge=edge.url, cloud=cloud_broker.url, buffer=tmp_path / "gw.db",
        keys=keys[21], extra=("--keys", str(keys[22])),
    )  # fmt: skip

    added = run_cli("--log-level", "WARNING", "cloud", "elections", "add", "--db", cloud.db_url, "--keys", str(keys[22]))
    assert f"election {b.election.id}" in added.stdout

    async def both() -> list[FleetSummary]:
        fleets = [
            Fleet(
                FleetConfig(
                    broker=parse_broker_url(edge.url), keys=keys[seed], seed=ballots, batches_per_device=BATCHES,
                    resend_after=2.0, timeout=60.0, client_prefix=f"edgetally-dev-{seed}-",
                ),
                registry,
            )
            for (seed, ballots), registry in zip(SEEDS.items(), (a, b), strict=True)
        ]  # fmt: skip
        return list(await asyncio.gather(*(f.run() for f in fleets)))

    summaries = asyncio.run(both())
    for summary in summaries:  # confirmed = every batch receipted with a receipt that verified
        assert summary.ok and summary.confirmed_devices == 6, summary.to_mapping()
    total = 2 * 6 * BATCHES
    wait_until(lambda: cloud.ledger() == total, 20, f"{total} batches in the ledger")
    for (seed, ballots), registry in zip(SEEDS.items(), (a, b), strict=True):
        shown = json.loads(
            run_cli("--log-level", "WARNING", "cloud", "results", "--db", cloud.db_url, "--election", registry.election.id, "--json").stdout
        )
        expected = expected_totals(registry.election, ballots, BATCHES).to_mapping()
        assert {k: shown[k] for k in expected} == expected, registry.election.id
        assert shown["rejections"] == 0
        audit = run_cli("cloud", "audit", "--db", cloud.db_url, "--keys", str(keys[seed]), "--election", registry.election.id, check=False)
        assert audit.returncode == 0, audit.stdout + audit.stderr
    assert f"now serving election {b.election.id}" in cloud.text()
