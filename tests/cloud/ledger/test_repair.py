"""Gap repair: the cloud sees a device's seqs jump, asks for the missing range on the device's
command topic, and the resent batches close the gap (real Mosquitto, real `cloud run`)."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine

from cloud.ledger.repairs import RepairScheduler
from devices.generator import expected_totals
from edgetally.brokers import BrokerProcess
from protocol import COMMAND_FILTER, RepairRequest
from tests.cloud.support import SEED, Envelopes, Publisher
from tests.cloud.worker_support import Cloud
from tests.gateway.support import Collector
from tests.helpers import run_cli, wait_until


def test_scheduler_waits_out_the_grace_then_coalesces_per_device() -> None:
    scheduler = RepairScheduler(interval_s=2.0, grace_s=0.5)
    key = ("e", "d")
    scheduler.observe([(key, ((11, 12),))], now=0.0)
    assert scheduler.due(0.4) == []  # out-of-order arrival may still fill it
    assert scheduler.due(0.5) == [RepairRequest("e", "d", ((11, 12),))]
    scheduler.observe([(key, ((12, 12),))], now=0.6)  # 11 arrived: the latest ranges count
    assert scheduler.due(1.0) == []  # one request per interval
    assert scheduler.due(2.5) == [RepairRequest("e", "d", ((12, 12),))]
    assert scheduler.due(5.0) == []  # the interval doubled (4 s)
    assert scheduler.due(6.5) == [RepairRequest("e", "d", ((12, 12),))]
    scheduler.observe([(key, ())], now=7.0)  # repaired
    assert scheduler.due(100.0) == [] and scheduler.open_devices == 0


@pytest.mark.integration
def test_cloud_requests_withheld_seqs_and_the_resend_repairs_the_gap(
    tmp_path: Path,
    broker_factory: Callable[..., BrokerProcess],
    keys_dir: Path,
    envelopes: Envelopes,
    processes: list[subprocess.Popen[bytes]],
    db_url: str,
    engine: Engine,  # migrated and empty: the PostgreSQL database is shared by the worker's tests
) -> None:
    broker = broker_factory("cloud")
    cloud = Cloud(
        tmp_path,
        broker,
        keys_dir,
        processes,
        db_url=db_url,
        args=("--repair-grace", "0", "--repair-interval", "0.5"),
    )
    cloud.start()
    device = envelopes.devices(1)[0]
    batches = envelopes.messages([device], 13)
    commands = Collector(broker.url, COMMAND_FILTER).start()  # the test is the device
    wait_until(commands.subscribed.is_set, 10, "the device's command subscription")
    publisher = Publisher(broker.port)

    publisher.publish_all(batches[:10] + batches[12:])  # seqs 11 and 12 withheld

    # Unanswered, the request is repeated (every 0.5 s, doubling) though nothing else arrives.
    wait_until(lambda: len(commands.messages()) >= 2, 20, "a repair request, then another")
    requests = [envelopes.repair(m.payload) for m in commands.messages()[:2]]
    for request in requests:
        assert (request.election, request.device, request.missing) == (
            envelopes.election.id,
            device,
            ((11, 12),),
        )
    assert not any(m.retain for m in commands.messages())
    publisher.publish_all([batches[seq - 1] for seq in request.seqs])  # the device resends

    wait_until(lambda: cloud.ledger() == 13, 20, "13 batches in the ledger")
    results = json.loads(
        run_cli("--log-level", "WARNING", "cloud", "results", "--db", cloud.db_url, "--json").stdout
    )
    expected = expected_totals(envelopes.election, SEED, 13, [device]).to_mapping()
    assert {k: results[k] for k in expected} == expected

    def audit() -> dict[str, object]:
        out = run_cli(
            "--log-level", "WARNING", "cloud", "audit", "--db", cloud.db_url,
            "--keys", str(keys_dir), "--json", check=False,
        ).stdout  # fmt: skip
        return dict(json.loads(out))

    report = audit()
    repairs = report["repairs"]
    assert isinstance(repairs, list) and len(repairs) == 1
    assert repairs[0]["device"] == device and repairs[0]["seqs"] == "11-12"
    assert repairs[0]["state"] == "repaired" and repairs[0]["requests"] >= 2
    assert repairs[0]["repaired_at"] is not None
    checks = {c["name"]: c["ok"] for c in report["checks"]}  # type: ignore[attr-defined]
    assert checks["seq gaps"] and checks["device state"] and checks["tallies"]
    publisher.close()
    commands.stop()
    assert cloud.terminate() == 0
