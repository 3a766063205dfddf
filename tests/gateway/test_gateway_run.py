"""`edgetally gateway run` as a real subprocess between two real Mosquitto brokers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from devices.generator import device_batches
from edgetally.brokers import BrokerProcess
from gateway.buffer.store import Buffer
from protocol import (
    BATCH_FILTER,
    COMMAND_FILTER,
    GENESIS_HASH,
    RECEIPT_FILTER,
    Election,
    Envelope,
    Receipt,
    RepairRequest,
    batch_topic,
    command_topic,
    gateway_status_topic,
    load_signing_key,
    parse_device_topic,
    receipt_topic,
    seal,
)
from tests.gateway.support import Collector, envelopes, publish_all, start_gateway
from tests.helpers import children_of, run_cli, wait_until

pytestmark = pytest.mark.integration


def test_envelopes_published_to_the_edge_come_out_unchanged_on_the_cloud(
    tmp_path: Path,
    edge: BrokerProcess,
    cloud: BrokerProcess,
    keys_dir: Path,
    sample_election: Election,
    processes: list[subprocess.Popen[bytes]],
) -> None:
    sent = envelopes(sample_election, keys_dir, sample_election.devices[:6], 20)
    collector = Collector(cloud.url, BATCH_FILTER).start()
    start_gateway(
        processes, tmp_path, edge=edge.url, cloud=cloud.url, buffer=tmp_path / "b.db", keys=keys_dir
    )
    publish_all(edge.url, [(s.topic, s.payload) for s in sent])
    expected = {(s.topic, s.payload) for s in sent}
    wait_until(
        lambda: {(g.topic, g.payload) for g in collector.messages()} >= expected,
        30,
        "every envelope on the cloud",
    )
    got = collector.messages()
    assert {(g.topic, g.payload) for g in got} == expected
    # Per device, batches leave in seq order (first arrival of each).
    order: dict[str, list[int]] = {}
    seq_of = {s.payload: s.seq for s in sent}
    for g in got:
        where = parse_device_topic(g.topic)
        assert where is not None
        if seq_of[g.payload] not in order.setdefault(where.device, []):
            order[where.device].append(seq_of[g.payload])
    assert all(seqs == sorted(seqs) for seqs in order.values())
    collector.stop()


def stats_json(buffer: Path) -> dict[str, object]:
    return json.loads(
        run_cli("gateway", "buffer", "stats", "--buffer", str(buffer), "--json").stdout
    )


def nothing_to_forward(buffer: Path) -> bool:
    """Every row delivered (kept for the retention window) or quarantined; none pending or in flight."""
    states = stats_json(buffer)["states"]
    return states["pending"] + states["inflight"] == 0  # type: ignore[index, no-any-return]


def test_bad_envelopes_are_quarantined_with_their_reason_and_never_forwarded(
    tmp_path: Path,
    broker_factory: Callable[..., BrokerProcess],
    keys_dir: Path,
    sample_election: Election,
    processes: list[subprocess.Popen[bytes]],
) -> None:
    # Plain brokers: this is the gateway's own defence behind the broker. A locked edge broker's
    # ACL already drops a publish to a non-device topic (bad_topic) before the gateway sees it.
    edge = broker_factory("edge", plain=True)
    cloud = broker_factory("cloud", plain=True)
    device, other = sample_election.devices[:2]
    bodies = device_batches(sample_election, 7, device, 3)
    key = load_signing_key(keys_dir, device)
    good = seal(bodies[0], key)
    forged = Envelope(
        body=bodies[1].to_bytes(), sig=key.sign(bodies[2].to_bytes()), kid=key.kid
    ).to_bytes()
    foreign_key = seal(bodies[1], load_signing_key(keys_dir, other)).to_bytes()
    topic = batch_topic(sample_election.id, device)
    bad = [
        (topic, forged, "bad_signature"),
        (topic, b"{this is not json", "malformed_json"),
        (topic, foreign_key, "wrong_key"),
        (batch_topic(sample_election.id, other), good.to_bytes(), "topic_mismatch"),
        ("edgetally/v1/_gateway/sneaky/batch", good.to_bytes(), "bad_topic"),
    ]
    collector = Collector(cloud.url, "edgetally/#").start()
    buffer = tmp_path / "b.db"
    run = start_gateway(
        processes, tmp_path, edge=edge.url, cloud=cloud.url, buffer=buffer, keys=keys_dir
    )
    publish_all(edge.url, [(t, p) for t, p, _ in bad] + [(topic, good.to_bytes())])
    # The good one was published last on the same connection: once it is through, so is the rest.
    wait_until(
        lambda: good.to_bytes() in collector.payloads(), 30, "the good envelope on the cloud"
    )
    wait_until(
        lambda: stats_json(buffer)["states"]["quarantined"] == len(bad), 30, "quarantined rows"
    )
    forwarded = collector.payloads()
    assert not forwarded & {p for _, p, _ in bad if p != good.to_bytes()}
    assert [
        g.topic for g in collector.messages() if g.payload == good.to_bytes() and "batch" in g.topic
    ] == [topic]

    run.proc.send_signal(signal.SIGTERM)
    assert run.proc.wait(30) == 0, run.log_text()
    with Buffer(buffer) as opened:
        kept = opened.quarantined()
    assert sorted(q.reason or "" for q in kept) == sorted(reason for _, _, reason in bad)
    by_reason = {q.reason: q for q in kept}
    assert by_reason["bad_signature"].seq == 2
    assert "does not verify" in (by_reason["bad_signature"].detail or "")
    assert by_reason["malformed_json"].payload == b"{this is not json"
    collector.stop()


def test_gateway_buffers_while_the_cloud_is_down_and_drains_when_it_returns(
    tmp_path: Path,
    edge: BrokerProcess,
    cloud: BrokerProcess,
    keys_dir: Path,
    sample_election: Election,
    processes: list[subprocess.Popen[bytes]],
) -> None:
    sent = envelopes(sample_election, keys_dir, sample_election.devices[:10], 20)
    collector = Collector(cloud.url, BATCH_FILTER, persistent=True).start()
    buffer = tmp_path / "b.db"
    start_gateway(processes, tmp_path, edge=edge.url, cloud=cloud.url, buffer=buffer, keys=keys_dir)
    cloud.stop()  # clean stop: the collector's session survives in the broker's persistence file
    publish_all(edge.url, [(s.topic, s.payload) for s in sent])
    wait_until(
        lambda: stats_json(buffer)["states"]["pending"] == len(sent), 30, "everything buffered"
    )
    assert collector.messages() == []
    cloud.start()
    expected = {(s.device, s.seq) for s in sent}
    arrived = lambda: {(s.device, s.seq) for s in sent if s.payload in collector.payloads()}  # noqa: E731
    wait_until(lambda: arrived() == expected, 60, "every (device, seq) on the cloud")
    assert collector.payloads() == {s.payload for s in sent}
    wait_until(lambda: nothing_to_forward(buffer), 30, "nothing left to forward")
    collector.stop()


def test_sigterm_stops_the_gateway_cleanly_with_its_buffered_batches_kept(
    tmp_path: Path, edge: BrokerProcess, cloud: BrokerProcess, keys_dir: Path,
    sample_election: Election, processes: list[subprocess.Popen[bytes]],
) -> None:  # fmt: skip
    sent = envelopes(sample_election, keys_dir, sample_election.devices[:4], 10)
    buffer = tmp_path / "b.db"
    run = start_gateway(processes, tmp_path, edge=edge.url, cloud=cloud.url, buffer=buffer, keys=keys_dir)
    cloud.stop()  # nothing can be forwarded: every batch stays in the buffer
    publish_all(edge.url, [(s.topic, s.payload) for s in sent])
    wait_until(lambda: stats_json(buffer)["states"]["pending"] == len(sent), 30, "everything buffered")
    assert children_of(run.proc.pid) == set()  # nothing of its own to leave behind

    run.proc.send_signal(signal.SIGTERM)

    assert run.proc.wait(20) == 0, run.log_text()
    assert not run.ready.exists()
    assert run_cli("gateway", "buffer", "check", "--buffer", str(buffer)).returncode == 0
    states = stats_json(buffer)["states"]
    assert states["pending"] == len(sent) and states["inflight"] == 0  # type: ignore[index]


def test_sigkill_mid_stream_and_restart_on_the_same_buffer_loses_nothing(
    tmp_path: Path,
    edge: BrokerProcess,
    cloud: BrokerProcess,
    keys_dir: Path,
    sample_election: Election,
    processes: list[subprocess.Popen[bytes]],
) -> None:
    sent = envelopes(sample_election, keys_dir, sample_election.devices[:30], 100)
    collector = Collector(cloud.url, BATCH_FILTER).start()
    buffer = tmp_path / "b.db"
    first = start_gateway(
        processes,
        tmp_path,
        edge=edge.url,
        cloud=cloud.url,
        buffer=buffer,
        keys=keys_dir,
        name="gw-a",
    )
    publisher = threading.Thread(
        target=publish_all, args=(edge.url, [(s.topic, s.payload) for s in sent])
    )
    publisher.start()
    wait_until(lambda: len(collector.messages()) >= 200, 30, "the stream to be flowing")
    os.killpg(first.proc.pid, signal.SIGKILL)
    first.proc.wait(10)
    at_kill = len(collector.messages())
    publisher.join(60)
    assert not publisher.is_alive()
    assert at_kill < len(sent), "the gateway finished before it was killed: not a mid-stream kill"

    start_gateway(
        processes,
        tmp_path,
        edge=edge.url,
        cloud=cloud.url,
        buffer=buffer,
        keys=keys_dir,
        name="gw-b",
    )
    expected = {(s.device, s.seq) for s in sent}
    seq_of = {s.payload: (s.device, s.seq) for s in sent}
    wait_until(
        lambda: {seq_of.get(p) for p in collector.payloads()} >= expected,
        90,
        "every (device, seq) on the cloud",
    )
    assert collector.payloads() == set(seq_of)  # nothing else, nothing altered
    wait_until(lambda: nothing_to_forward(buffer), 30, "nothing left to forward")
    collector.stop()


def test_receipts_published_on_the_cloud_appear_retained_on_the_edge(
    tmp_path: Path,
    edge: BrokerProcess,
    cloud: BrokerProcess,
    keys_dir: Path,
    sample_election: Election,
    processes: list[subprocess.Popen[bytes]],
) -> None:
    first, second = sample_election.devices[:2]
    early = (
        receipt_topic(sample_election.id, first),
        Receipt(sample_election.id, first, 0, GENESIS_HASH).to_bytes(),
    )
    late = (
        receipt_topic(sample_election.id, second),
        Receipt(sample_election.id, second, 3, "ab" * 32).to_bytes(),
    )
    publish_all(cloud.url, [early], retain=True)  # before the gateway exists
    live = Collector(edge.url, RECEIPT_FILTER).start()
    start_gateway(
        processes, tmp_path, edge=edge.url, cloud=cloud.url, buffer=tmp_path / "b.db", keys=keys_dir
    )
    publish_all(cloud.url, [late], retain=True)
    wait_until(
        lambda: {(g.topic, g.payload) for g in live.messages()} >= {early, late},
        30,
        "both receipts relayed",
    )
    fresh = Collector(edge.url, RECEIPT_FILTER).start()
    wait_until(lambda: len(fresh.messages()) >= 2, 10, "retained receipts for a new subscriber")
    assert {(g.topic, g.payload) for g in fresh.messages() if g.retain} == {early, late}
    live.stop()
    fresh.stop()


def test_repair_requests_on_the_cloud_are_relayed_to_the_edge_not_retained(
    tmp_path: Path,
    edge: BrokerProcess,
    cloud: BrokerProcess,
    keys_dir: Path,
    sample_election: Election,
    processes: list[subprocess.Popen[bytes]],
) -> None:
    device = sample_election.devices[0]
    receipt = (
        receipt_topic(sample_election.id, device),
        Receipt(sample_election.id, device, 0, GENESIS_HASH).to_bytes(),
    )
    request = (
        command_topic(sample_election.id, device),
        RepairRequest(sample_election.id, device, ((11, 12),)).to_bytes(),
    )
    receipts = Collector(edge.url, RECEIPT_FILTER).start()
    commands = Collector(edge.url, COMMAND_FILTER).start()
    start_gateway(
        processes, tmp_path, edge=edge.url, cloud=cloud.url, buffer=tmp_path / "b.db", keys=keys_dir
    )
    publish_all(cloud.url, [receipt], retain=True)
    # The receipt came down, so the gateway's downlink subscription (one SUBSCRIBE for
    # receipts and commands) is in place: a live command now reaches it.
    wait_until(lambda: receipts.messages(), 30, "the receipt relayed")
    publish_all(cloud.url, [request])
    wait_until(lambda: commands.messages(), 30, "the repair request relayed")
    got = commands.messages()
    assert [(g.topic, g.payload, g.retain) for g in got] == [(*request, False)]
    # A new subscriber gets the retained receipt and no retained command.
    fresh = Collector(edge.url, "edgetally/v1/+/+/+").start()
    wait_until(
        lambda: any(g.topic == receipt[0] for g in fresh.messages()), 10, "the retained receipt"
    )
    assert not [g for g in fresh.messages() if g.topic == request[0]]
    for collector in (receipts, commands, fresh):
        collector.stop()


def test_gateway_announces_status_and_stops_cleanly_on_sigterm(
    tmp_path: Path,
    edge: BrokerProcess,
    cloud: BrokerProcess,
    keys_dir: Path,
    processes: list[subprocess.Popen[bytes]],
) -> None:
    topic = gateway_status_topic("gw-status")
    on_edge = Collector(edge.url, topic).start()
    on_cloud = Collector(cloud.url, topic).start()
    run = start_gateway(
        processes, tmp_path, edge=edge.url, cloud=cloud.url, buffer=tmp_path / "b.db", keys=keys_dir,
        extra=("--id", "gw-status"),
    )  # fmt: skip

    def states(collector: Collector) -> list[str]:
        return [json.loads(g.payload)["state"] for g in collector.messages()]

    wait_until(
        lambda: "online" in states(on_edge) and "online" in states(on_cloud),
        30,
        "online status on both brokers",
    )
    run.proc.send_signal(signal.SIGTERM)
    assert run.proc.wait(30) == 0, run.log_text()
    wait_until(
        lambda: states(on_edge)[-1:] == ["offline"] and states(on_cloud)[-1:] == ["offline"],
        10,
        "offline status",
    )
    assert not run.ready.exists()
    on_edge.stop()
    on_cloud.stop()


def test_gateway_waits_for_an_unreachable_edge_broker_instead_of_failing(
    tmp_path: Path,
    cloud: BrokerProcess,
    keys_dir: Path,
    processes: list[subprocess.Popen[bytes]],
) -> None:
    edge = BrokerProcess(tmp_path / "late-edge", name="late-edge", embedded=False)
    try:
        run = start_gateway(
            processes, tmp_path, edge=edge.url, cloud=cloud.url, buffer=tmp_path / "b.db", keys=keys_dir,
            wait_ready=False,
        )  # fmt: skip
        wait_until(
            lambda: "edge broker" in run.log_text() and "unreachable; retrying" in run.log_text(),
            30,
            "a failed attempt on the edge broker",
        )
        assert run.proc.poll() is None and not run.ready.exists()
        edge.start()
        wait_until(run.ready.exists, 30, "the ready file once the edge broker is up")
        assert run.proc.poll() is None
    finally:
        edge.kill()
    # Both brokers gone: a stop request still ends the gateway cleanly and promptly.
    cloud.kill()
    run.proc.send_signal(signal.SIGTERM)
    assert run.proc.wait(20) == 0, run.log_text()
