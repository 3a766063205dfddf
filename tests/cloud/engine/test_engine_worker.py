"""The rules engine inside `edgetally cloud run` (a real process, a real Mosquitto): --rules,
exactly-once alerts when the worker dies between commit and ack, the CLI that shows what the
rules wrote, and a bad rules file refused before anything starts."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine

from cloud.faults import FAULT_DIR_ENV, FAULT_ENV, marker_path
from edgetally.brokers import BrokerProcess
from protocol import bundle, gateway_bundle_topic
from tests.cloud.engine.test_actions import Subscriber
from tests.cloud.engine_support import crafted
from tests.cloud.support import Envelopes, Publisher, raw_inbound
from tests.cloud.worker_support import Cloud
from tests.helpers import run_cli, wait_until

pytestmark = pytest.mark.integration


def _json(*args: str) -> object:
    return json.loads(run_cli("--log-level", "WARNING", "cloud", *args, "--json").stdout)


def test_an_alert_is_not_duplicated_when_the_worker_dies_after_commit_before_ack(
    tmp_path: Path,
    broker_factory: Callable[..., BrokerProcess],
    keys_dir: Path,
    processes: list[subprocess.Popen[bytes]],
    envelopes: Envelopes,
    engine: Engine,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    broker = broker_factory("cloud")
    db_url = engine.url.render_as_string(hide_password=False)
    cloud = Cloud(tmp_path, broker, keys_dir, processes, db_url=db_url)
    counts = {"governor": {"alvarez": 4}, "senate": {"okafor": 1}}
    anomaly = crafted(envelopes, "harbor-p02-a", ballots=2, counts=counts)  # accepted
    final = crafted(envelopes, "harbor-p03-a", ballots=3, final=True)
    late = crafted(envelopes, "harbor-p03-a", seq=2, prev=final)  # rejected: after_final
    # One bundle, so that the three are one group: the one the fault point stops after.
    payload = bundle.encode(
        [(m.topic, m.payload) for m in map(envelopes.inbound, (anomaly, final, late))]
    )
    monkeypatch.setenv(FAULT_ENV, "committed:1")
    monkeypatch.setenv(FAULT_DIR_ENV, str(tmp_path))
    cloud.start()
    monkeypatch.delenv(FAULT_ENV)
    publisher = Publisher(broker.port)

    publisher.publish_all([raw_inbound(payload, gateway_bundle_topic("gw1"))])
    wait_until(marker_path(tmp_path, "committed").exists, 20, "the commit of the first group")
    before = _json("alerts", "--db", db_url)
    assert [a["rule"] for a in before] == ["contest-above-ballots", "after-final"]  # type: ignore[index, union-attr]
    cloud.kill()  # committed, not acknowledged: the broker delivers the bundle again

    cloud.start()
    wait_until(lambda: cloud.results()["duplicates"] == 2, 30, "the redelivery: two duplicates")
    # the log keeps both runs: the late batch was rejected once by each
    wait_until(lambda: cloud.count("rejected device=harbor-p03-a seq=2") == 2, 10, "late again")
    assert _json("alerts", "--db", db_url) == before  # rejected again, alerted once
    assert _json("dead-letters", "--db", db_url) == []
    assert cloud.ledger() == 2
    publisher.close()
    assert cloud.terminate() == 0


def test_cloud_run_with_a_rules_file_stores_republishes_and_counts_unmatched_messages(
    tmp_path: Path,
    broker_factory: Callable[..., BrokerProcess],
    keys_dir: Path,
    processes: list[subprocess.Popen[bytes]],
    envelopes: Envelopes,
) -> None:
    rules_file = tmp_path / "rules.toml"
    rules_file.write_text(
        """
[[rules]]
name = "harbor-only"
sql = "SELECT device, seq, ballots FROM 'edgetally/v1/+/+/batch' WHERE topic(4) IN ('harbor-p01-a', 'harbor-p02-a')"
actions = [
  {ledger = {}},
  {store = {table = "harbor"}},
  {republish = {topic = "out/${device}/${seq}", qos = 1}},
]
error_action = {alert = {message = "${rule}: ${error}"}}
"""
    )
    # Plain: the rule republishes to out/..., a topic the locked cloud broker's ACL
    # (edgetally/acl.py) grants the cloud no write to; there the output would be dropped.
    broker = broker_factory("cloud", plain=True)
    cloud = Cloud(tmp_path, broker, keys_dir, processes, args=["--rules", str(rules_file)])
    cloud.start()
    subscriber = Subscriber(broker.port, "out/#")
    publisher = Publisher(broker.port)
    kept = envelopes.messages(["harbor-p01-a", "harbor-p02-a"], 2)
    ignored = envelopes.messages(["harbor-p03-a"], 3)

    publisher.publish_all(kept + ignored)
    wait_until(lambda: len(subscriber.messages()) == 4, 20, "four republished rows")

    assert sorted(topic for topic, *_ in subscriber.messages()) == [
        "out/harbor-p01-a/1",
        "out/harbor-p01-a/2",
        "out/harbor-p02-a/1",
        "out/harbor-p02-a/2",
    ]
    assert cloud.ledger() == 4
    stored = _json("stored", "--db", cloud.db_url, "--table", "harbor")
    assert [(s["device"], s["seq"]) for s in stored] == [  # type: ignore[union-attr]
        ("harbor-p01-a", 1), ("harbor-p01-a", 2), ("harbor-p02-a", 1), ("harbor-p02-a", 2)
    ]  # fmt: skip
    assert _json("stored", "--db", cloud.db_url) == {"harbor": 4}
    assert _json("alerts", "--db", cloud.db_url) == []
    assert _json("dead-letters", "--db", cloud.db_url) == []
    table = run_cli("cloud", "stored", "--db", cloud.db_url, "--table", "harbor").stdout
    assert "harbor-p02-a" in table and '"ballots"' in table
    subscriber.close()
    publisher.close()
    assert cloud.terminate() == 0
    assert "rules engine: 7 messages, 3 matched no rule, 4 to the ledger" in cloud.text()
    assert f"rules from {rules_file}: harbor-only" in cloud.text()


def test_cloud_run_refuses_a_bad_rules_file_with_one_line_naming_it(
    tmp_path: Path, keys_dir: Path
) -> None:
    rules_file = tmp_path / "rules.yaml"
    rules_file.write_text(
        "rules:\n"
        "  - name: tally\n"
        "    sql: SELECT devcie FROM 'edgetally/v1/+/+/batch'\n"
        "    actions: [{ledger: {}}]\n"
    )
    proc = run_cli(
        "cloud", "run", "--broker", "mqtt://127.0.0.1:1", "--keys", str(keys_dir),
        "--db", f"sqlite:///{tmp_path / 'c.db'}", "--rules", str(rules_file), check=False,
    )  # fmt: skip
    assert proc.returncode == 1
    assert proc.stderr.strip() == (
        f"edgetally cloud run: error: rules file {rules_file}: rule 'tally' at 1:8:"
        " unknown field 'devcie' (did you mean 'device'?)"
    )
    assert not (tmp_path / "c.db").exists()  # refused before anything started


def test_the_output_commands_read_an_empty_database_and_refuse_a_missing_one(
    tmp_path: Path, engine: Engine
) -> None:
    db_url = engine.url.render_as_string(hide_password=False)
    assert _json("alerts", "--db", db_url) == []
    assert "no alerts" in run_cli("cloud", "alerts", "--db", db_url).stdout
    assert "no dead letters" in run_cli("cloud", "dead-letters", "--db", db_url).stdout
    assert "no rows stored" in run_cli("cloud", "stored", "--db", db_url).stdout
    missing = run_cli("cloud", "alerts", "--db", f"sqlite:///{tmp_path / 'none.db'}", check=False)
    assert missing.returncode == 1
    assert missing.stderr.startswith("edgetally cloud alerts: error: no database file")
