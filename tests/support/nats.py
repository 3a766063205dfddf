"""NATS JetStream clusters for tests: locked down like the product's (TLS, client certificates
mapped to users, the cloud ACL's rules as permissions), on free ports in the test's tmp dir."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from edgetally.acl import BrokerKind
from edgetally.nats import NatsCluster, nats_binary
from protocol import Registry
from tests.support.wire import TestWire

NatsFactory = Callable[..., NatsCluster]


def require_nats() -> None:
    """Skip without nats-server; fail under CI=true, where scripts/test installs it."""
    if nats_binary() is None:
        if os.environ.get("CI") == "true":
            pytest.fail("CI=true but no nats-server: scripts/test installs it (apt-get install nats-server)")
        pytest.skip("nats-server is not installed (apt-get install nats-server)")


@pytest.fixture
def nats_cluster_factory(tmp_path: Path, test_wire: TestWire, registry: Registry) -> Iterator[NatsFactory]:
    """Make started clusters (``nodes``, default 3); every node is killed afterwards. Without
    nats-server the test skips, and fails under CI=true (scripts/test installs it)."""
    require_nats()
    made: list[NatsCluster] = []

    def make(nodes: int = 3, name: str = "nats", plain: bool = False, **kwargs: object) -> NatsCluster:
        """``plain``: anonymous, every subject; only where a test says why it needs it."""
        cluster = NatsCluster(
            tmp_path / name, nodes=nodes, tls=None if plain else test_wire.wire.nats(registry),
            probe=None if plain else test_wire.cloud("stand-in-c1"), **kwargs,  # type: ignore[arg-type]
        )
        for node in cluster.nodes:
            test_wire.kinds[node.mqtt_port] = BrokerKind.CLOUD
            if not plain:
                test_wire.locked.add(node.mqtt_port)
        made.append(cluster)
        cluster.start()
        return cluster

    yield make
    for cluster in made:
        cluster.kill()
