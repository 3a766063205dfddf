"""A scenario's cloud broker as a NATS JetStream cluster (``topology.cloud_broker: nats``).

Its nodes are timeline targets (:class:`ClusterNode`: ``cloud-nodeN``, ``cloud-node-leader``,
``cloud-node-follower``, resolved when the action runs), and the verdict gains the ``CLUSTER``
check: every batch counted with **no device resend**. Devices resend only what stays
unreceipted past ``resend_after``; a cluster scenario sets that longer than its faults last, so
a resend means a batch the cluster acknowledged (or a receipt it took) was lost and the devices
had to bring it back, which is what Mosquitto needs after a SIGKILL and a replicated cluster
must not.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from edgetally.brokers import BrokerError
from edgetally.nats import NatsCluster
from edgetally.verdict import Check

CLUSTER = "the cloud cluster kept what it acknowledged: no device resend"


class ClusterNode:
    """One node as a scenario process: ``start``, ``stop``, ``kill``, ``running``."""

    def __init__(self, cluster: NatsCluster, node: str) -> None:
        self.cluster = cluster
        self.node = node

    @property
    def name(self) -> str:
        return f"cloud-node{self.node.removeprefix('n')}"

    @property
    def running(self) -> bool:
        return self.cluster.running(self.node)

    def start(self) -> None:
        self.cluster.start_node(self.node)

    def stop(self) -> None:
        self.cluster.stop_node(self.node)

    def kill(self) -> None:
        self.cluster.kill_node(self.node)


def cluster_nodes(cluster: NatsCluster, target: str, number: int | None) -> list[ClusterNode]:
    """The nodes a ``cloud-node*`` target names now; BrokerError if it names none."""
    nodes = [ClusterNode(cluster, n.name) for n in cluster.nodes]
    if target == "cloud-node":
        return nodes if number is None else [nodes[number - 1]]
    leader = cluster.stream_leader()
    if target == "cloud-node-leader":
        if leader is None:
            raise BrokerError("the MQTT message stream has no leader now (no quorum?)")
        return [node for node in nodes if node.node == leader]
    followers = [node for node in nodes if node.running and node.node != leader]
    if not followers:
        raise BrokerError("no running node that does not lead the MQTT message stream")
    return followers[:1]


def check_cluster(fleet_summaries: Sequence[Mapping[str, Any]], resend_after: float) -> Check:
    resends = sum(int(summary.get("resends", 0)) for summary in fleet_summaries)
    if resends:
        return Check(
            CLUSTER, False,
            f"devices resent {resends:,} batches (resend after {resend_after:g}s): something the cluster had"
            " acknowledged, or a receipt, was lost and only the devices brought it back",
        )  # fmt: skip
    return Check(CLUSTER, True, f"0 resends (resend after {resend_after:g}s): every batch came from the cluster's store or a buffer")
