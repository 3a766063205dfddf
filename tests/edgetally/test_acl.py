"""The ACL files generated from the registry, line by line (tests/integration/test_tls.py runs
the edge one on a real Mosquitto)."""

from __future__ import annotations

from pathlib import Path

from devices.synth import synth_election
from edgetally.acl import BrokerKind, acl_text
from protocol import Registry, provision


def _users(text: str) -> dict[str, list[str]]:
    users: dict[str, list[str]] = {}
    current = None
    for line in text.splitlines():
        if line.startswith("user "):
            current = line.removeprefix("user ")
            users[current] = []
        elif line.startswith("topic ") and current is not None:
            users[current].append(line.removeprefix("topic "))
    return users


def test_the_edge_acl_gives_each_device_only_its_own_four_topics(registry: Registry) -> None:
    users = _users(acl_text(registry, BrokerKind.EDGE, gateways=["gw1"]))
    election = registry.election.id
    assert set(users) == {f"device-{d}" for d in registry.devices} | {"gateway-gw1"}
    device = sorted(registry.devices)[0]
    base = f"edgetally/v1/{election}/{device}"
    assert users[f"device-{device}"] == [f"write {base}/batch", f"write {base}/status", f"read {base}/receipt", f"read {base}/command"]
    assert "write edgetally/v1/_gateway/gw1/status" in users["gateway-gw1"]


def test_the_cloud_acl_has_gateways_and_workers_and_no_device(registry: Registry) -> None:
    users = _users(acl_text(registry, BrokerKind.CLOUD, gateways=["gw1", "gw2"], clouds=["cloud1"]))
    assert set(users) == {"gateway-gw1", "gateway-gw2", "cloud-cloud1"}
    # Every election's: one added to the running cloud (`cloud elections add`) needs no new ACL here.
    assert users["cloud-cloud1"] == [
        "read edgetally/v1/+/+/batch",
        "read edgetally/v1/_gateway/+/bundle",
        "read edgetally/v1/_gateway/+/status",
        "write edgetally/v1/+/+/receipt",
        "write edgetally/v1/+/+/command",
        "write edgetally-out/#",  # what its rules republish (docs/rules.md)
    ]
    assert "write edgetally/v1/_gateway/gw2/bundle" in users["gateway-gw2"]
    assert "write edgetally/v1/_gateway/gw1/bundle" not in users["gateway-gw2"]


def test_a_gateway_carrying_two_elections_gets_both_and_each_device_only_its_own(
    registry: Registry, tmp_path: Path
) -> None:
    other = provision(synth_election(4, 2, 5), tmp_path / "other")
    edge = _users(acl_text([registry, other], BrokerKind.EDGE, gateways=["gw1"]))
    cloud = _users(acl_text([registry, other], BrokerKind.CLOUD, gateways=["gw1"], clouds=["cloud1"]))
    for election in (registry.election.id, other.election.id):
        assert f"read edgetally/v1/{election}/+/batch" in edge["gateway-gw1"]
        assert f"write edgetally/v1/{election}/+/batch" in cloud["gateway-gw1"]
        assert f"read edgetally/v1/{election}/+/receipt" in cloud["gateway-gw1"]
    device = other.election.devices[0]
    assert edge[f"device-{device}"] == [
        f"{access} edgetally/v1/{other.election.id}/{device}/{kind}"
        for access, kind in (("write", "batch"), ("write", "status"), ("read", "receipt"), ("read", "command"))
    ]
