"""Cloud workers on a NATS JetStream cluster (`edgetally cloud run --jetstream`): the MQTT side
for gateways, shared durable pull consumers for the workers (cloud/worker/jetstream.py).

The first test pins the fact the choice rests on: MQTT shared subscriptions on NATS 2.9 grant
the subscription and then deliver nothing.
"""

from __future__ import annotations

import asyncio
import re
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import nats
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from cloud.worker.jetstream import CONSUMERS, MSGS_STREAM
from devices.generator import expected_totals
from edgetally.nats import NatsCluster
from protocol.tls import client_context
from tests.cloud.support import SEED, Envelopes, Publisher
from tests.cloud.worker_support import Cloud, writes_held
from tests.helpers import run_cli, wait_until
from tests.support import wire

pytestmark = pytest.mark.integration


def _pending(cluster: NatsCluster) -> dict[str, tuple[int, int]]:
    """Per consumer: (messages waiting, delivered and not yet acknowledged)."""
    found: dict[str, tuple[int, int]] = {}
    stream = cluster.streams()[MSGS_STREAM]
    for consumer in stream.get("consumer_detail", []) or []:
        found[consumer["name"]] = (int(consumer["num_pending"]), int(consumer["num_ack_pending"]))
    return found


def _workers(
    cluster: NatsCluster, n: int, tmp_path: Path, keys_dir: Path, processes: list[subprocess.Popen[bytes]],
    db_url: str, *extra: str,
) -> list[Cloud]:
    jetstream = [arg for url in cluster.nats_urls for arg in ("--jetstream", url)]
    return [
        Cloud(tmp_path, cluster, keys_dir, processes, db_url=db_url, name=f"w{i}",  # type: ignore[arg-type]
              args=["--id", f"w{i}", *jetstream, *extra], debug=True)
        for i in range(1, n + 1)
    ]  # fmt: skip


def test_mqtt_shared_subscriptions_on_nats_grant_and_then_deliver_nothing(
    nats_cluster_factory: Callable[..., NatsCluster],
) -> None:
    # Plain: the probe subscribes to a share filter, which no role's permissions name.
    cluster = nats_cluster_factory(nodes=1, plain=True)
    port = cluster.nodes[0].mqtt_port
    got: list[str] = []
    granted = threading.Event()
    subscriber = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="share-probe", protocol=mqtt.MQTTv311)

    def on_subscribe(client: mqtt.Client, userdata: Any, mid: int, reasons: list[Any], props: Any) -> None:
        if not any(r.is_failure for r in reasons):
            granted.set()

    subscriber.on_subscribe = on_subscribe
    subscriber.on_message = lambda c, u, m: got.append(m.topic)
    subscriber.on_connect = lambda c, u, f, r, p: c.subscribe("$share/g/edgetally/v1/+/+/batch", qos=1)
    subscriber.connect("127.0.0.1", port)
    subscriber.loop_start()
    envelopes = Envelopes(wire.current().keys)
    messages = [envelopes.inbound(b) for b in envelopes.bodies(envelopes.devices(1)[0], 20)]
    try:
        wait_until(granted.is_set, 10, "the shared subscription granted")
        publisher = Publisher(port)
        publisher.publish_all(messages)
        publisher.close()
        # The batches are in the store (the workers' consumer has them) ...
        wait_until(lambda: _pending(cluster)["edgetally-batches"][0] == len(messages), 10, "the batches stored")
    finally:
        subscriber.disconnect()
        subscriber.loop_stop()
    # ... and the shared subscriber, granted QoS 1, got none of them.
    assert got == []


def test_the_cluster_keeps_every_batch_replicated_for_workers_not_running_yet(
    nats_cluster_factory: Callable[..., NatsCluster], keys_dir: Path,
) -> None:
    cluster = nats_cluster_factory(nodes=3)
    streams = cluster.streams()
    msgs = streams[MSGS_STREAM]
    assert len(msgs["cluster"]["replicas"]) == 2, "the MQTT messages live on all 3 nodes"
    assert sorted(c["name"] for c in msgs["consumer_detail"]) == sorted(CONSUMERS)
    assert {"$MQTT_sess", "$MQTT_rmsgs"} <= set(streams)
    envelopes = Envelopes(keys_dir)
    devices = envelopes.devices(5)
    publisher = Publisher(cluster.nodes[1].mqtt_port)  # any node takes any client
    publisher.publish_all([envelopes.inbound(b) for d in devices for b in envelopes.bodies(d, 4)])
    publisher.close()
    wait_until(lambda: _pending(cluster)["edgetally-batches"] == (20, 0), 10, "20 batches kept for the workers")


def test_the_cluster_admits_only_known_certificates_and_their_subjects(
    nats_cluster_factory: Callable[..., NatsCluster], keys_dir: Path,
) -> None:
    cluster = nats_cluster_factory(nodes=1)
    node = cluster.nodes[0]
    envelopes = Envelopes(keys_dir)
    device = envelopes.devices(1)[0]
    # A device's certificate is the CA's, but the cloud tier has no user for it.
    refused = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="intruder", protocol=mqtt.MQTTv311)
    refused.tls_set_context(client_context(wire.current().device(device)))
    outcome: list[Any] = []
    refused.on_connect = lambda c, u, f, r, p: outcome.append(r)
    refused.on_disconnect = lambda c, u, f, r, p: outcome.append(r)
    refused.connect("127.0.0.1", node.mqtt_port)
    refused.loop_start()
    wait_until(lambda: outcome, 10, "the broker's answer to a device certificate")
    refused.loop_stop()
    assert not refused.is_connected()
    # A gateway may forward batches, not another gateway's bundle; a JetStream client without
    # a mapped user gets nothing either (the monitor has no JetStream API permission).
    gw_b = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="gw-a-as-b", protocol=mqtt.MQTTv311)
    gw_b.tls_set_context(client_context(wire.current().gateway("gw-a")))
    gw_b.connect("127.0.0.1", node.mqtt_port)
    gw_b.loop_start()
    info = gw_b.publish("edgetally/v1/_gateway/gw-b/bundle", b"{}", qos=1)
    info.wait_for_publish(10)
    ok = gw_b.publish(envelopes.inbound(envelopes.bodies(device, 1)[0]).topic, b"{}", qos=1)
    ok.wait_for_publish(10)
    gw_b.disconnect()
    gw_b.loop_stop()
    wait_until(lambda: _pending(cluster)["edgetally-batches"][0] == 1, 10, "the gateway's batch stored")
    assert _pending(cluster)["edgetally-bundles"] == (0, 0), "the forged bundle was not stored"

    async def monitor_pulls() -> str:
        nc = await nats.connect(cluster.nats_urls, tls=client_context(wire.current().monitor()), max_reconnect_attempts=0)
        try:
            await nc.jetstream().consumer_info(MSGS_STREAM, "edgetally-batches", timeout=2)
        except (nats.errors.Error, TimeoutError) as err:
            return type(err).__name__
        finally:
            await nc.close()
        return "allowed"

    assert asyncio.run(monitor_pulls()) != "allowed"


def test_jetstream_workers_split_the_load_and_a_sigkilled_one_s_unacked_batches_go_to_the_others(
    nats_cluster_factory: Callable[..., NatsCluster],
    keys_dir: Path,
    tmp_path: Path,
    processes: list[subprocess.Popen[bytes]],
) -> None:
    cluster = nats_cluster_factory(nodes=3)
    db_url = f"sqlite:///{tmp_path / 'cloud.db'}"
    group = _workers(cluster, 3, tmp_path, keys_dir, processes, db_url, "--ack-wait", "2")
    for worker in group:
        worker.start()
    # The cluster made the consumers with the default 10 s; `--ack-wait 2` set it on them.
    consumers = cluster.streams()[MSGS_STREAM]["consumer_detail"]  # with the MQTT sessions' own
    waits = {c["name"]: c["config"]["ack_wait"] for c in consumers if c["name"] in CONSUMERS}
    assert waits == {name: 2_000_000_000 for name in CONSUMERS}, waits
    envelopes = Envelopes(keys_dir)
    devices = list(envelopes.election.devices)
    batches = 3  # every device to its final batch: the audit below needs all of them reported
    messages = [envelopes.inbound(b) for d in devices for b in envelopes.bodies(d, batches)]
    publisher = Publisher(cluster.nodes[0].mqtt_port)

    def pulled(cloud: Cloud) -> int:
        return cloud.count(r"pulled stream seq")

    with writes_held(db_url):  # every worker pulls its share; none can commit
        publisher.publish_all(messages)
        wait_until(lambda: all(pulled(w) > 0 for w in group), 30, "each worker holding batches")
        held = pulled(group[1])
        group[1].kill()  # SIGKILL, holding `held` unacknowledged batches; never restarted
    publisher.close()
    total = len(messages)
    wait_until(lambda: group[0].ledger() == total, 60, f"all {total} batches in the ledger")
    results = group[0].results()
    expected = expected_totals(envelopes.election, SEED, batches, devices).to_mapping()
    assert {k: results[k] for k in expected} == expected
    assert results["rejections"] == 0
    wait_until(lambda: _pending(cluster)["edgetally-batches"] == (0, 0), 20, "every batch acknowledged")
    # What the dead worker held came to the survivors again (JetStream's delivery count > 1).
    redelivered = sum(
        1 for w in (group[0], group[2]) for n in re.findall(r"\(delivery (\d+)\)", w.text()) if int(n) > 1
    )
    assert redelivered >= held > 0
    assert [group[0].terminate(), group[2].terminate()] == [0, 0]
    accepted = [w.stopped_totals()[0] for w in (group[0], group[2])]
    assert all(a > 0 for a in accepted) and sum(accepted) == total  # one ledger row per key
    audit = run_cli("cloud", "audit", "--db", db_url, "--keys", str(keys_dir), check=False)
    assert audit.returncode == 0, audit.stdout + audit.stderr
