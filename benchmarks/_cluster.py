"""The pieces of ``benchmarks.cluster``: one cloud broker of each kind behind one interface, the
edge side (edge Mosquitto and a gateway), and polling the gateway buffer and the cloud ledger."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from rich.progress import Progress

from edgetally.acl import BrokerKind
from edgetally.brokers import BrokerProcess
from edgetally.nats import NatsCluster
from edgetally.processes import Component
from edgetally.wire import Wire
from protocol import Registry
from protocol.tls import Role

KINDS = {"mosquitto": "Mosquitto", "nats-r1": "NATS R1", "nats-r3": "NATS R3"}  # 1 node, 1 node, 3 nodes


class CloudBroker:
    """The cloud broker of one run: one Mosquitto, or a NATS JetStream cluster of 1 or 3 nodes."""

    def __init__(self, kind: str, work: Path, wire: Wire, registry: Registry) -> None:
        self.kind = kind
        self.mosquitto: BrokerProcess | None = None
        self.cluster: NatsCluster | None = None
        if kind == "mosquitto":
            self.mosquitto = BrokerProcess(work / "cloud-broker", name="cloud-broker", tls=wire.broker(BrokerKind.CLOUD))
            self.urls = [self.mosquitto.url]
        else:
            self.cluster = NatsCluster(
                work / "cloud-broker", nodes=3 if kind == "nats-r3" else 1,
                tls=wire.nats(registry), probe=wire.client(Role.CLOUD, wire.clouds[0]),
            )  # fmt: skip
            self.urls = self.cluster.mqtt_urls

    def start(self) -> None:
        if self.mosquitto is not None:
            self.mosquitto.start()
        elif self.cluster is not None:
            self.cluster.start(timeout=60)

    def stop(self) -> None:
        if self.mosquitto is not None:
            self.mosquitto.stop()
        if self.cluster is not None:
            self.cluster.stop()

    def worker_args(self, *, share: bool) -> list[str]:
        """`cloud run` options for this broker: NATS workers pull from the durable consumers;
        Mosquitto workers take a shared subscription (clean sessions) when ``share``, else one
        persistent session, which queues while its worker is down."""
        args = ["--broker", ",".join(self.urls)]
        if self.cluster is not None:
            return args + [a for url in self.cluster.nats_urls for a in ("--jetstream", url)]
        return args + (["--share", "bench"] if share else ["--session", "persistent"])

    def kill_leader(self) -> str:
        """SIGKILL what holds the queue: Mosquitto, or the node leading ``$MQTT_msgs``."""
        if self.mosquitto is not None:
            self.mosquitto.kill()
            return "mosquitto"
        assert self.cluster is not None
        leader = self.cluster.stream_leader()
        if leader is None:
            raise RuntimeError("no node reports a leader of $MQTT_msgs")
        self.cluster.kill_node(leader)
        return leader

    def restart(self, name: str) -> None:
        if self.mosquitto is not None:
            self.mosquitto.start()
        elif self.cluster is not None:
            self.cluster.start_node(name)


class Edge:
    """Edge Mosquitto and a gateway forwarding to the cloud broker's nodes (comma-separated)."""

    def __init__(self, work: Path, wire: Wire, keys: Path, cloud_urls: list[str]) -> None:
        self.broker = BrokerProcess(work / "edge-broker", name="edge-broker", tls=wire.broker(BrokerKind.EDGE))
        self.buffer = work / "buffer.db"
        self.gateway = Component(
            "gateway",
            ["--log-level", "WARNING", "gateway", "run", "--edge", self.broker.url, "--cloud", ",".join(cloud_urls),
             "--buffer", str(self.buffer), "--keys", str(keys), "--id", wire.gateways[0], "--pki", str(wire.pki)],
            work,
        )  # fmt: skip

    def start(self) -> None:
        self.broker.start()
        self.gateway.start()
        self.gateway.wait_ready(60)

    def stop(self) -> None:
        self.gateway.stop()
        self.broker.stop()

    def delivered(self) -> int:
        """Batches the cloud broker acknowledged to the gateway (PUBACK), from the buffer's
        usage row (exact, kept by triggers); 0 while the buffer is being created."""
        try:
            with sqlite3.connect(f"file:{self.buffer}?mode=ro", uri=True, timeout=5) as conn:
                row = conn.execute("SELECT delivered_batches FROM usage").fetchone()
        except sqlite3.Error:
            return 0
        return int(row[0]) if row else 0


def _posix(value: str | None) -> float | None:
    return None if value is None else datetime.fromisoformat(value).replace(tzinfo=UTC).timestamp()


class Ledger:
    """The cloud's SQLite ledger, read with sqlite3 (the workers write it)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.url = f"sqlite:///{path}"

    def _query(self, sql: str, *params: object) -> tuple[object, ...]:
        try:
            with sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=5) as conn:
                row: tuple[object, ...] = conn.execute(sql, params).fetchone()
                return row
        except sqlite3.OperationalError:  # no file or no table yet
            return (0, None, None)

    def count(self) -> int:
        return int(self._query("SELECT count(*) FROM ledger")[0])  # type: ignore[call-overload]

    def last_rowid(self) -> int:
        return int(self._query("SELECT coalesce(max(rowid), 0) FROM ledger")[0])  # type: ignore[call-overload]

    def span(self, after_rowid: int) -> tuple[int, float | None, float | None]:
        """Rows past ``after_rowid``: how many, first and last ``received_at`` (POSIX)."""
        count, first, last = self._query(
            "SELECT count(*), min(received_at), max(received_at) FROM ledger WHERE rowid > ?", after_rowid
        )
        return int(count), _posix(first), _posix(last)  # type: ignore[call-overload, arg-type]


def watch(
    progress: Progress, label: str, read: Callable[[], int], target: int, timeout: float,
    *, quiet: float | None = None, alive: Callable[[], None] | None = None,
) -> tuple[int, float]:  # fmt: skip
    """Poll ``read`` until it reaches ``target``: (value, time.time() when it did). With
    ``quiet``, also stop once the value has not grown for that many seconds (a loss). Without
    it, RuntimeError after ``timeout``; ``alive`` raises if a process it watches died."""
    task = progress.add_task(label, total=target)
    deadline = time.monotonic() + timeout
    value, changed = read(), time.monotonic()
    try:
        while value < target:
            now = time.monotonic()
            if quiet is not None and now - changed > quiet:
                break
            if now > deadline:
                if quiet is not None:
                    break
                raise RuntimeError(f"{label}: {value:,} of {target:,} after {timeout:.0f} s")
            if alive is not None:
                alive()
            time.sleep(0.05)
            latest = read()
            if latest != value:
                value, changed = latest, time.monotonic()
            progress.update(task, completed=value)
        return value, time.time()
    finally:
        progress.remove_task(task)
