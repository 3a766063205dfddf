"""Gateway status storage (cloud/worker/status.py) on SQLite and PostgreSQL: the latest per gateway,
an earlier run never wins, a link-only status keeps the last known figures; the
`cloud gateways` command; and the worker ignoring statuses that do not hold up."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pytest
from sqlalchemy.engine import Engine

from cloud.db import make_engine
from cloud.worker.status import StatusStore, StatusUpdate, load_gateways
from edgetally.brokers import BrokerProcess
from protocol import gateway_status_topic
from protocol.gateway_status import GatewayStatus, Rates
from tests.gateway.support import publish_all
from tests.helpers import run_cli, wait_until
from tests.support.cloud import CloudProcess

T0 = datetime(2026, 11, 3, 20, 0, 0, tzinfo=UTC)


def status(
    gateway: str = "gw1",
    *,
    state: str = "online",
    started: str = "2026-11-03T19:00:00Z",
    pending: int | None = 5,
    uplink: str | None = "up",
    edge: str | None = "up",
    at: str | None = "2026-11-03T20:00:00Z",
    pid: int = 100,
) -> GatewayStatus:
    return GatewayStatus(
        gateway=gateway,
        state=state,
        started_at=started,
        pid=pid,
        version="0.1.0",
        at=at,
        uplink=uplink,
        edge=edge,
        buffer=None
        if pending is None
        else {"pending": pending, "inflight": 1, "delivered": 2, "quarantined": 3},
        oldest_pending_age_s=None if pending is None else 1.5,
        rates=None if pending is None else Rates(10.0, 9.5, 5.0),
    )


def update(s: GatewayStatus, seconds: int = 0) -> StatusUpdate:
    return StatusUpdate(s, s.to_bytes(), T0 + timedelta(seconds=seconds))


def test_the_newest_status_of_each_gateway_is_kept(engine: Engine) -> None:
    store = StatusStore(engine)
    assert store.record([update(status(pending=5)), update(status("gw2", pending=1))]) == 2
    assert store.record([update(status(pending=7), 5), update(status(pending=9), 6)]) == 2

    rows = {r.gateway: r for r in load_gateways(engine)}
    assert set(rows) == {"gw1", "gw2"}
    assert rows["gw1"].buffer == {"pending": 9, "inflight": 1, "delivered": 2, "quarantined": 3}
    assert rows["gw1"].received_at == T0 + timedelta(seconds=6)
    assert (rows["gw1"].ingress_rate, rows["gw1"].egress_rate) == (10.0, 9.5)
    assert rows["gw2"].buffer["pending"] == 1


def test_a_link_only_status_keeps_the_last_known_figures(engine: Engine) -> None:
    store = StatusStore(engine)
    store.record([update(status(pending=5))])
    will = status(state="offline", pending=None, uplink="down", edge=None, at=None)
    store.record([update(will, 10)])

    [row] = load_gateways(engine)
    assert (row.state, row.uplink, row.edge) == ("offline", "down", "up")
    assert row.buffer["pending"] == 5 and row.ingress_rate == 10.0
    assert row.status_at == T0  # the last status that had a time
    assert row.received_at == T0 + timedelta(seconds=10)
    assert row.to_mapping(T0 + timedelta(seconds=12))["age_s"] == 2.0


def test_a_status_of_an_earlier_run_never_replaces_one_of_a_later_run(engine: Engine) -> None:
    store = StatusStore(engine)
    store.record([update(status(started="2026-11-03T19:30:00Z", pid=200))])
    late_will = status(
        state="offline", started="2026-11-03T19:00:00Z", pid=100, pending=None, at=None
    )
    assert store.record([update(late_will, 30)]) == 0

    [row] = load_gateways(engine)
    assert (row.state, row.pid) == ("online", 200)


def test_cloud_gateways_prints_json_and_a_table(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'c.db'}"
    run_cli("cloud", "migrate", "--db", url)
    empty = run_cli("cloud", "gateways", "--db", url).stdout
    assert "no gateway has reported" in empty
    engine = make_engine(url)
    StatusStore(engine).record([update(status("gw-a")), update(status("gw-b", pending=None))])
    engine.dispose()

    got = json.loads(run_cli("cloud", "gateways", "--db", url, "--json").stdout)
    assert [g["gateway"] for g in got] == ["gw-a", "gw-b"]
    assert got[0]["buffer"] == {"pending": 5, "inflight": 1, "delivered": 2, "quarantined": 3}
    assert got[0]["rates"] == {"ingress": 10.0, "egress": 9.5, "interval_s": 5.0}
    assert got[0]["started_at"] == "2026-11-03T19:00:00Z" and got[0]["pid"] == 100
    assert got[1]["buffer"]["pending"] is None
    table = run_cli("cloud", "gateways", "--db", url).stdout
    assert "gw-a" in table and "gw-b" in table and "online" in table


def test_cloud_gateways_refuses_a_missing_database(tmp_path: Path) -> None:
    proc = run_cli("cloud", "gateways", "--db", f"sqlite:///{tmp_path / 'no.db'}", check=False)
    assert proc.returncode == 1 and "no database file" in proc.stderr


@pytest.mark.integration
def test_the_worker_ignores_a_status_that_does_not_parse_or_names_another_gateway(
    tmp_path: Path,
    broker_factory: Callable[..., BrokerProcess],
    keys_dir: Path,
    processes: list[subprocess.Popen[bytes]],
) -> None:
    broker = broker_factory("cloud")
    store = CloudProcess(tmp_path, broker.url, keys_dir, processes).start()
    good = status("gw-ok")
    publish_all(
        broker.url,
        [
            (gateway_status_topic("gw-bad"), b"{not json"),
            (gateway_status_topic("gw-liar"), orjson.dumps(good.to_mapping())),
            (gateway_status_topic("gw-ok"), good.to_bytes()),
        ],
    )
    wait_until(lambda: [r["gateway"] for r in store.gateways()] == ["gw-ok"], 20, "gw-ok stored")
    log = store.text()
    assert "ignored a gateway status on edgetally/v1/_gateway/gw-bad/status" in log
    assert "ignored a gateway status of 'gw-ok' on edgetally/v1/_gateway/gw-liar/status" in log
    assert store.ledger_count() == 0 and store.rejections() == []
