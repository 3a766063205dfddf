"""The NATS cluster's configuration, as edgetally/nats.py writes it (no server needed)."""

from __future__ import annotations

import json
import re
from pathlib import Path

from cloud.worker.jetstream import CONSUMERS, subject_topic, topic_subject
from edgetally.nats import NatsCluster, NatsTls, node_config
from protocol import BATCH_FILTER


def test_mqtt_topics_map_to_the_subjects_nats_server_uses_and_back() -> None:
    assert topic_subject(BATCH_FILTER) == "edgetally.v1.*.*.batch"
    assert topic_subject("edgetally-out/#") == "edgetally-out.>"
    assert subject_topic("$MQTT.msgs.edgetally.v1.e1.dev-1.batch") == "edgetally/v1/e1/dev-1/batch"


def test_every_listener_binds_the_loopback_and_every_node_routes_to_all(tmp_path: Path) -> None:
    cluster = NatsCluster(tmp_path, nodes=3)
    text = node_config(cluster.nodes[0], cluster.nodes, None, "pw")
    listens = re.findall(r"(?:listen|http): ?([0-9.]+):\d+", text)
    assert listens and set(listens) == {"127.0.0.1"}
    assert len(listens) == 4  # client, monitoring, cluster routes, MQTT
    for node in cluster.nodes:
        assert f"route:pw@127.0.0.1:{node.cluster_port}" in text
    assert "stream_replicas: 3" in text and "consumer_replicas: 3" in text
    assert "authorization { users" not in text  # plain: anonymous


def test_locked_users_get_their_acl_subjects_and_only_workers_their_consumers(tmp_path: Path) -> None:
    tls = NatsTls(
        tmp_path / "ca.crt", tmp_path / "c.crt", tmp_path / "c.key",
        {"gateway-gw1": [("write", "edgetally/v1/e1/+/batch"), ("read", "edgetally/v1/e1/+/receipt")],
         "cloud-w1": [("read", "edgetally/v1/e1/+/batch")]},
        frozenset({"cloud-w1"}),
    )  # fmt: skip
    cluster = NatsCluster(tmp_path, nodes=1, tls=tls)
    text = node_config(cluster.nodes[0], cluster.nodes, tls, "pw")
    assert "verify_and_map: true" in text and "cluster {" not in text  # one node: no routes
    users = json.loads(re.search(r"authorization \{ users: (\[.*\]) \}", text).group(1))  # type: ignore[union-attr]
    perms = {u["user"]: u["permissions"] for u in users}
    gateway = perms["CN=gateway-gw1"]
    assert gateway["publish"]["allow"] == ["edgetally.v1.e1.*.batch"]
    assert "edgetally.v1.e1.*.receipt" in gateway["subscribe"]["allow"]
    assert not any(s.startswith("$JS") for s in gateway["publish"]["allow"])
    worker = perms["CN=cloud-w1"]["publish"]["allow"]
    assert {f"$JS.API.CONSUMER.MSG.NEXT.$MQTT_msgs.{name}" for name in CONSUMERS} <= set(worker)
    assert "$JS.API.>" not in worker and not any("STREAM.DELETE" in s for s in worker)
