"""Mosquitto in a container (``eclipse-mosquitto:2`` through testcontainers), as a drop-in for
:class:`edgetally.brokers.BrokerProcess`: what ``broker_factory`` hands out when
tests/support/broker_choice.py picks testcontainers.

One config for both: the container runs the text :func:`edgetally.brokers.mosquitto_config`
writes for the local binary, with one difference: the listener binds every interface of the
container (``bind=None``), since the engine forwards the published port, which it binds on the
host's 127.0.0.1 only. The broker's directory and its TLS files are mounted into the container
at the same paths as on the host, so every path in the config (persistence, log, certificates,
ACL) is the host's and the log and persistence file land where the local broker's do; the
container's port is the host's port. The container runs as the host user, as the local binary
does (root keeps ``user root``, from the same config).

testcontainers' reaper (Ryuk) publishes its control port on every interface of the host; the
project publishes nothing beyond 127.0.0.1, so it is off unless TESTCONTAINERS_RYUK_DISABLED is
set. The fixture removes its containers itself.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING

from edgetally.brokers import BrokerError, BrokerProcess, mosquitto_config

if TYPE_CHECKING:
    from testcontainers.core.container import DockerContainer

log = logging.getLogger(__name__)

IMAGE = "eclipse-mosquitto:2"
LABEL = "org.edgetally.test-broker"


def container_config(broker: BrokerProcess) -> str:
    """The config text the container runs for ``broker`` (the local one with ``bind=None``)."""
    return mosquitto_config(broker.port, broker.workdir, broker.settings, broker.tls, bind=None)


def mounts(broker: BrokerProcess) -> list[tuple[str, str, str]]:
    """(host path, container path, mode): the broker's directory read-write, its TLS files
    read-only, each at its host path."""
    found = [(str(broker.workdir), str(broker.workdir), "rw")]
    if broker.tls is not None:
        tls = broker.tls
        found += [(str(path), str(path), "ro") for path in (tls.ca, tls.cert, tls.key, tls.acl)]
    return found


class ContainerBroker(BrokerProcess):
    """One Mosquitto container on a fixed 127.0.0.1 port, restartable like ``BrokerProcess``:
    ``stop`` is ``docker stop`` (SIGTERM: the persistence file is saved), ``kill`` is SIGKILL;
    ``start`` again runs a new container on the same port and directory."""

    def __init__(self, workdir: Path, *, image: str = IMAGE, **kwargs: object) -> None:
        super().__init__(workdir, embedded=False, **kwargs)  # type: ignore[arg-type]
        self.image = image
        self._container: DockerContainer | None = None

    @property
    def log_path(self) -> Path:
        return self.workdir / "mosquitto.log"

    @property
    def running(self) -> bool:
        if self._container is None:
            return False
        wrapped = self._container.get_wrapped_container()
        wrapped.reload()
        return bool(wrapped.status == "running")

    @property
    def pid(self) -> int | None:
        """The container's main process as the host sees it."""
        if self._container is None:
            return None
        wrapped = self._container.get_wrapped_container()
        wrapped.reload()
        return int(wrapped.attrs["State"]["Pid"]) or None

    def start(self, timeout: float = 60.0) -> None:
        from testcontainers.core.config import testcontainers_config
        from testcontainers.core.container import DockerContainer

        if self.running:
            raise BrokerError(f"{self.name} broker is already running (container {self._container_id()})")
        if "TESTCONTAINERS_RYUK_DISABLED" not in os.environ:
            testcontainers_config.ryuk_disabled = True
        self.workdir.mkdir(parents=True, exist_ok=True)
        conf = self.workdir / "mosquitto.conf"
        conf.write_text(container_config(self))
        seen = self.log_path.stat().st_size if self.log_path.exists() else 0
        container = DockerContainer(self.image, command=["mosquitto", "-c", str(conf)])
        for host, inside, mode in mounts(self):
            container.with_volume_mapping(host, inside, mode)
        # Published on the host's loopback only, on the port the config listens on inside.
        container.ports[f"{self.port}/tcp"] = ("127.0.0.1", self.port)  # type: ignore[assignment]
        container.with_kwargs(user=f"{os.getuid()}:{os.getgid()}", labels={LABEL: self.name})
        container.start()
        self._container = container
        self._wait_ready(seen, timeout)
        log.info("%s broker listening on %s (container %s)", self.name, self.url, self._container_id())

    def _container_id(self) -> str:
        return self._container.get_container_id()[:12] if self._container is not None else "-"

    def _wait_ready(self, seen: int, timeout: float) -> None:
        """Until Mosquitto logs its listener (the engine's port forwarder accepts connections
        before anything listens behind it, so an open port proves nothing)."""
        wanted = f"listen socket on port {self.port}"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.running:
                assert self._container is not None
                out, err = self._container.get_logs()
                raise BrokerError(f"{self.name} container exited before it listened: {(out + err).decode()[-2000:]}")
            if self.log_path.exists():
                with self.log_path.open("rb") as handle:
                    handle.seek(seen)
                    if wanted in handle.read().decode(errors="replace"):
                        return
            time.sleep(0.05)
        raise BrokerError(f"{self.name} container did not log {wanted!r} within {timeout:.0f}s")

    def _remove(self, *, graceful: bool, timeout: float) -> None:
        container = self._container
        if container is None:
            return
        wrapped = container.get_wrapped_container()
        if graceful:
            wrapped.stop(timeout=max(1, int(timeout)))  # SIGTERM, then SIGKILL after timeout
        elif self.running:
            wrapped.kill()
        container.stop()  # remove it (and close the client)
        self._container = None

    def stop(self, timeout: float = 10.0) -> None:
        """``docker stop``: SIGTERM, Mosquitto writes its persistence file."""
        self._remove(graceful=True, timeout=timeout)

    def kill(self) -> None:
        """SIGKILL: whatever the broker held only in memory is gone."""
        self._remove(graceful=False, timeout=0)
