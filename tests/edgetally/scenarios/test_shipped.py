"""Every shipped scenario, shortened, through real processes: the verdict must hold.

Shortened: at most 16 devices and 4 batches each (and 6 elections), the timeline played twice as fast (the long
"election night" mix runs as `scripts/election-night`, not here). Each run starts its own
Mosquitto brokers, fault proxies, gateways, cloud workers and fleets (edgetally/scenarios).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from edgetally.scenarios.cluster import CLUSTER
from edgetally.scenarios.contained import CONTAINED
from edgetally.scenarios.model import Scenario, shipped
from edgetally.scenarios.runner import RunOptions, ScenarioRunner
from edgetally.scenarios.served import SERVED
from tests.support.postgres import PG_ADMIN_URL, require_server

pytestmark = pytest.mark.integration

SPEED = 2.0


def _short(scenario: Scenario) -> Scenario:
    topo = scenario.topology
    return scenario.with_topology(
        devices=min(topo.devices or 16, 16), batches=min(topo.batches, 4), elections=min(topo.elections, 6)
    )


# cloud-cluster-quorum-loss is played by tests/integration/test_cloud_cluster.py, which also asserts
# that nothing was acknowledged without a quorum; its scenario file still loads (test_model).
# cloud-cluster-node-loss likewise: test_cloud_cluster's leader test plays the same fault (the worker
# away, the stream leader SIGKILLed) and asserts the same (nothing lost, no device resend); the CLUSTER
# check itself is tests/edgetally/scenarios/test_cluster.py. Run both with `edgetally scenario run`.
COVERED_ELSEWHERE = {"cloud-cluster-quorum-loss", "cloud-cluster-node-loss"}
SHIPPED = [s for s in shipped() if "long" not in s.tags and s.name not in COVERED_ELSEWHERE]


@pytest.mark.timeout(240)
@pytest.mark.parametrize("scenario", SHIPPED, ids=[s.name for s in SHIPPED])
def test_shipped_scenario_passes_shortened(scenario: Scenario, tmp_path: Path) -> None:
    report = ScenarioRunner(_short(scenario), RunOptions(workdir=tmp_path / "world", speed=SPEED, fleet_timeout=150)).run()

    failed_events = [(e.what, e.detail) for e in report.events if not e.ok]
    assert report.error is None, report.error
    assert failed_events == []
    assert report.verdict is not None
    assert report.verdict.ok, report.verdict.to_mapping()
    assert report.verdict.lost == ()
    faults = {"cut", "crash", "kill", "drop", "blackhole", "stop", "restart", "latency", "wipe"}
    assert [e.what for e in report.events if e.what.split()[0] in faults], "no fault was played"
    if scenario.topology.serve:  # the results service ran, and the verdict judged what it showed
        assert SERVED in [c.name for c in report.verdict.checks]
    if any(a.verb == "start" and a.target == "rogue" for a in scenario.timeline):
        # rogue-client is issue 14's attack test (stolen credential, forgeries, flood): CONTAINED
        # is what it asserts, so it must have been judged, not left out for want of a report.
        assert CONTAINED in [c.name for c in report.verdict.checks]
    if scenario.topology.cloud_broker == "nats":  # the verdict judged that no device had to resend
        assert CLUSTER in [c.name for c in report.verdict.checks]
    if "backpressure" in scenario.tags:  # the quota was really reached, and held ingress
        assert "holding ingress" in (tmp_path / "world" / "site1" / "gateway1.log").read_text()


@pytest.mark.postgres
@pytest.mark.timeout(240)
def test_a_scenario_on_postgresql_with_two_workers_passes(tmp_path: Path) -> None:
    """The same runner on a throw-away PostgreSQL database (created and dropped by the run)."""
    admin = require_server(PG_ADMIN_URL)
    scenario = next(s for s in SHIPPED if s.name == "cloud-worker-crash")
    scenario = _short(scenario).with_topology(database="postgresql")
    options = RunOptions(workdir=tmp_path / "world", speed=SPEED, fleet_timeout=150, postgres_admin_url=admin)
    runner = ScenarioRunner(scenario, options)
    assert runner.world.db_url.startswith("postgresql+psycopg://") and "edgetally_scenario_" in runner.world.db_url

    report = runner.run()

    assert report.error is None and report.verdict is not None, report.error
    assert report.verdict.ok, report.verdict.to_mapping()
    engine = create_engine(admin)
    try:
        with engine.connect() as conn:
            names = set(conn.execute(text("SELECT datname FROM pg_database")).scalars())
    finally:
        engine.dispose()
    assert runner.world.db_url.rsplit("/", 1)[1] not in names, "the run's database was not dropped"
