"""The running gateway: opens the buffer, composes ingress, writer and uplink, stops gracefully.

Threads: paho's network thread for the edge link (ingress callbacks), the writer (group
commits, then acks), the uplink pump (with its own paho network thread per connection), the
status reporter (gateway/status.py: a retained status on both brokers every few seconds), and
the main thread, which waits for a stop request. Writer, pump and reporter run under a
:class:`Supervisor`, the one place in the gateway that catches ``Exception``: it logs the
failure and restarts the task with backoff; a writer restart also replaces the edge client so
that the broker redelivers whatever the failed group had not acknowledged. A task that keeps
failing makes the gateway stop with :class:`ServiceFailed`.

Graceful stop (SIGTERM/SIGINT): the status reporter stops first, intake closes (later
messages stay unacknowledged on the edge broker), the writer commits and acknowledges what is queued, the edge link announces offline
and disconnects cleanly, the pump gives in-flight publishes a short grace for their PUBACKs,
releases the rest to pending and disconnects, and the buffer is closed.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import orjson

from gateway import faults
from gateway._exceptions import ConfigError, ServiceFailed
from gateway.buffer.backpressure import RESUME_RATIO
from gateway.buffer.schema import State
from gateway.buffer.store import Buffer
from gateway.config import GatewayConfig
from gateway.ingress import Ingress
from gateway.links import Backoff, check_tls, is_connected
from gateway.status import StatusReporter
from gateway.uplink import Uplink
from protocol import ProtocolError, Registry, gateway_status_topic

log = logging.getLogger(__name__)

MAX_FAILURES = 5  # consecutive failures of one task before the gateway gives up
HEALTHY_RUN_S = 30.0  # a task that ran this long before failing starts a new count
STOP_POLL_S = 0.2


class Supervisor:
    """Runs ``task(stop)`` in a thread; restarts it when it raises, gives up after repeated failures."""

    def __init__(
        self,
        name: str,
        task: Callable[[threading.Event], None],
        *,
        on_failure: Callable[[], None] | None = None,
        on_give_up: Callable[[str], None],
        backoff: Backoff | None = None,
    ) -> None:
        self.name = name
        self.stop = threading.Event()
        self._task = task
        self._on_failure = on_failure
        self._on_give_up = on_give_up
        self._backoff = backoff or Backoff(0.2, 5.0)
        self._thread = threading.Thread(target=self._main, name=f"gateway-{name}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)
        if self._thread.is_alive():
            log.error("%s did not stop within %.0fs", self.name, timeout or 0)

    def _main(self) -> None:
        failures = 0
        while not self.stop.is_set():
            started = time.monotonic()
            try:
                self._task(self.stop)
            except Exception as exc:  # the supervisor: log the failure and restart the task
                problem = f"{type(exc).__name__}: {exc}"
                log.exception("%s failed", self.name)
            else:
                if self.stop.is_set():
                    return
                problem = "returned before it was asked to stop"
                log.error("%s %s", self.name, problem)
            if time.monotonic() - started > HEALTHY_RUN_S:
                failures = 0
                self._backoff.reset()
            failures += 1
            if failures >= MAX_FAILURES:
                self._on_give_up(f"{self.name} failed {failures} times in a row; last: {problem}")
                return
            if self._on_failure is not None:
                try:
                    self._on_failure()
                except Exception:  # the supervisor: a failed recovery is retried with the task
                    log.exception("%s recovery failed", self.name)
            self.stop.wait(self._backoff.next())


class GatewayService:
    """``edgetally gateway run``. Constructing it does no I/O; :meth:`run` blocks until stopped."""

    def __init__(self, config: GatewayConfig) -> None:
        self.config = config
        self._stop_requested = False
        self._failed = threading.Event()
        self._failure = ""

    def request_stop(self) -> None:
        """Ask :meth:`run` to stop; safe to call from a signal handler (sets a flag only)."""
        self._stop_requested = True

    def run(self) -> None:
        config = self.config
        registries = load_registries(config.keys_dirs)
        if config.tls is not None:
            check_tls(config.tls)  # a missing or bad certificate stops the gateway here, named
        armed = faults.arm_from_environment()
        if armed:
            log.warning("TEST-ONLY fault injection armed: %s", armed)
        _remove(config.ready_file)
        buffer = Buffer.from_config(config)  # records keys dir, retention, id in the file
        buffer.open()
        try:
            counts = buffer.counts()
            log.info(
                "gateway %s starting: buffer holds pending=%d inflight=%d quarantined=%d",
                config.gateway_id,
                counts[State.PENDING],
                counts[State.INFLIGHT],
                counts[State.QUARANTINED],
            )
            if config.max_buffer_batches or config.max_buffer_bytes:
                log.info(
                    "backpressure: ingress holds at %s live batches or %s live bytes"
                    " (0 = no limit) and resumes below %d%% of both",
                    config.max_buffer_batches,
                    config.max_buffer_bytes,
                    round(RESUME_RATIO * 100),
                )
            self._serve(registries, buffer)
        finally:
            buffer.close()
            _remove(config.ready_file)
        if self._failed.is_set():
            raise ServiceFailed(f"gateway {config.gateway_id} stopped: {self._failure}")
        log.info("gateway %s stopped", config.gateway_id)

    def _serve(self, registries: Mapping[str, Registry], buffer: Buffer) -> None:
        config = self.config
        ingress: Ingress | None = None

        def relay(topic: str, payload: bytes) -> None:
            if ingress is not None:
                ingress.relay(topic, payload)

        status: StatusReporter | None = None

        def link_changed() -> None:
            if status is not None:
                status.poke()

        def edge_connected() -> None:
            uplink.request_receipts()
            link_changed()

        uplink = Uplink(config, buffer, relay=relay, on_link_change=link_changed, elections=tuple(registries))
        ingress = Ingress(
            config,
            registries,
            buffer,
            on_stored=uplink.notify,
            on_connected=edge_connected,
            on_ready=self._write_ready_file,
        )
        status = self._status_reporter(buffer, ingress, uplink)
        reporter = Supervisor("status", status.run, on_give_up=self._give_up)
        writer = Supervisor(
            "writer", ingress.run_writer, on_failure=ingress.restart_link, on_give_up=self._give_up
        )
        pump = Supervisor("uplink", uplink.run, on_give_up=self._give_up)
        writer.start()
        pump.start()
        ingress.start()
        reporter.start()
        try:
            while not (self._stop_requested or self._failed.wait(STOP_POLL_S)):
                pass
        finally:
            log.info("gateway %s stopping", config.gateway_id)
            reporter.stop.set()  # first: the links' own "offline" must be the last status
            reporter.join(timeout=10)
            ingress.stop_intake()
            pump.stop.set()
            uplink.interrupt()
            writer.stop.set()
            writer.join(timeout=30)
            ingress.stop()
            pump.join(timeout=config.drain_grace_s + 30)

    def _status_reporter(self, buffer: Buffer, ingress: Ingress, uplink: Uplink) -> StatusReporter:
        config = self.config
        topic = gateway_status_topic(config.gateway_id)
        return StatusReporter(
            config.gateway_id,
            buffer,
            interval_s=config.status_interval_s,
            uplink_up=lambda: uplink.connected,
            edge_up=lambda: is_connected(config.edge_client_id),
            ingress_count=lambda: ingress.stored,
            egress_count=lambda: uplink.delivered,
            publish_edge=lambda payload: ingress.relay(topic, payload),
            publish_cloud=uplink.offer_status,
        )

    def _give_up(self, problem: str) -> None:
        self._failure = problem
        log.error("giving up: %s", problem)
        self._failed.set()

    def _write_ready_file(self) -> None:
        path = self.config.ready_file
        if path is None:
            return
        data = {
            "gateway": self.config.gateway_id,
            "pid": os.getpid(),
            "edge": self.config.edge.url,
            "cloud": self.config.cloud.url,
            "buffer": str(self.config.buffer_path),
        }
        tmp = path.with_name(path.name + ".tmp")
        try:
            tmp.write_bytes(orjson.dumps(data) + b"\n")
            os.replace(tmp, path)
        except OSError as exc:
            self._give_up(f"cannot write the ready file {path}: {exc.strerror}")
            return
        log.info("ready: subscribed on the edge broker (ready file %s)", path)


def load_registries(keys_dirs: Sequence[Path]) -> dict[str, Registry]:
    """Each election's registry by id; an election given twice is refused."""
    registries: dict[str, Registry] = {}
    for keys_dir in keys_dirs:
        registry = load_registry(keys_dir)
        if registry.election.id in registries:
            raise ConfigError(f"--keys: election {registry.election.id} is given twice ({keys_dir})")
        registries[registry.election.id] = registry
    return registries


def load_registry(keys_dir: Path) -> Registry:
    if not keys_dir.is_dir():
        raise ConfigError(f"--keys: {keys_dir} is not a directory")
    try:
        return Registry.load(keys_dir)
    except ProtocolError as exc:
        raise ConfigError(f"--keys: {exc}") from exc


def _remove(path: Path | None) -> None:
    if path is not None:
        path.unlink(missing_ok=True)
