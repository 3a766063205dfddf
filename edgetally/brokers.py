"""Starting MQTT brokers for the demo, scenarios and tests.

A ``mosquitto`` binary on PATH is run on a free 127.0.0.1 port with a config EdgeTally
writes (persistence on, no queue limit, so nothing queued is dropped). Where there is no
mosquitto, an embedded Python broker (amqtt) runs in a child process instead, and says so:
it speaks MQTT 3.1.1 like everything in EdgeTally, but keeps no offline queue for persistent
sessions, so on it the end-to-end receipts and device resends do the work the queue would.

``BrokerProcess`` is reusable: ``start``, then ``stop`` (SIGTERM: Mosquitto saves its
persistence file) or ``kill`` (SIGKILL: in-memory queues are lost), then ``start`` again on
the same port.
"""

from __future__ import annotations

import logging
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)


class BrokerError(Exception):
    """A broker could not be started or did not become ready."""


_LISTEN_FLOOR = 10000
_handed_out: set[int] = set()


def ephemeral_port_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


def free_port() -> int:
    """A free 127.0.0.1 port for a listener started a moment later.

    Chosen below the kernel's ephemeral range where there is room, so that the source port of
    some outgoing connection cannot take it in the gap before the broker binds it (that race
    made a NATS node exit with "address already in use" in a busy suite), and never the same
    port twice in one process.
    """
    low, _high = ephemeral_port_range()
    if low - _LISTEN_FLOOR >= 1000:
        rng = random.SystemRandom()
        for _ in range(200):
            port = rng.randrange(_LISTEN_FLOOR, low)
            if port not in _handed_out and port_is_free(port):
                _handed_out.add(port)
                return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    _handed_out.add(port)
    return port


@contextmanager
def stop_signals() -> Iterator[threading.Event]:
    """An event SIGINT and SIGTERM set while the block runs (the previous handlers back after).

    Handlers, not a blocked signal mask: a broker started inside inherits a mask, and with
    SIGTERM blocked it ignored the SIGTERM it was stopped with and was killed 10 s later
    without saving its store. Handlers are reset for a child when it starts.
    """
    stopped = threading.Event()

    def handler(_signum: int, _frame: object) -> None:
        stopped.set()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stopped
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def serve_until_signalled(start: Callable[[], None], stop: Callable[[], None], ready: Callable[[], None]) -> None:
    """``start``, ``ready`` (say where it listens), then wait for SIGINT or SIGTERM; ``stop``
    always, also when ``start`` fails (its :class:`BrokerError` goes to the caller). A signal
    during the start is seen once it is up."""
    with stop_signals() as stopped:
        try:
            start()
            ready()
            while not stopped.wait(0.5):  # the wait wakes for the handler; 0.5 s bounds one missed wake
                pass
        finally:
            stop()


def port_is_free(port: int) -> bool:
    """Whether a listener could bind 127.0.0.1:``port`` now (SO_REUSEADDR, as brokers bind:
    connections of a stopped broker left in TIME_WAIT do not count)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def find_binary(name: str) -> str | None:
    """``name`` on PATH, else in the sbin directories Debian's packages use (not on every PATH)."""
    found = shutil.which(name)
    if found:
        return found
    for directory in ("/usr/sbin", "/usr/local/sbin", "/usr/local/bin"):
        candidate = os.path.join(directory, name)
        if os.access(candidate, os.X_OK):
            return candidate
    return None


def mosquitto_binary() -> str | None:
    return find_binary("mosquitto")


@dataclass(frozen=True)
class BrokerSettings:
    persistence: bool = True
    autosave_interval: int = 5
    max_inflight_messages: int = 1000
    max_packet_size: int = 1024 * 1024
    extra: str = ""  # appended verbatim (e.g. a bridge section for the bridge baseline)


@dataclass(frozen=True)
class BrokerTls:
    """A locked-down listener: TLS with this server certificate, a client certificate from ``ca``
    required (its common name is the username, and the client id), and ``acl`` deciding who may
    touch which topic. Paths only; the files are made by :mod:`edgetally.wire`."""

    ca: Path
    cert: Path
    key: Path
    acl: Path


def listener_lines(port: int, tls: BrokerTls | None, *, bind: str | None = "127.0.0.1") -> list[str]:
    """The listener: locked down with ``tls``; plain TCP, anonymous, every topic, without.

    It binds ``bind`` (None: every interface, for a broker in a container, whose published
    port the container engine binds on the host)."""
    listener = f"listener {port}" if bind is None else f"listener {port} {bind}"
    if tls is None:
        return [listener, "allow_anonymous true"]
    return [
        listener,
        "allow_anonymous false",
        f"cafile {tls.ca}",
        f"certfile {tls.cert}",
        f"keyfile {tls.key}",
        "tls_version tlsv1.2",
        "require_certificate true",
        # The certificate's common name is the username the ACL names, and the client id:
        # nobody can connect as another client and take over its persistent session.
        "use_identity_as_username true",
        "use_username_as_clientid true",
        f"acl_file {tls.acl}",
    ]


def mosquitto_config(
    port: int,
    workdir: Path,
    settings: BrokerSettings,
    tls: BrokerTls | None = None,
    *,
    bind: str | None = "127.0.0.1",
) -> str:
    """The config EdgeTally runs Mosquitto with; deploy/mosquitto/mosquitto.conf is its container
    twin, and the tests' container brokers (tests/support/container_broker.py) run this same
    text with ``bind`` None."""
    lines = [
        # Run as root, Mosquitto drops to the `mosquitto` user and then cannot write its log or
        # persistence file in our (root-owned) directory, nor read our 0600 keys: sessions
        # would silently not survive.
        *(["user root"] if os.geteuid() == 0 else []),
        *listener_lines(port, tls, bind=bind),
        f"persistence {'true' if settings.persistence else 'false'}",
        f"persistence_location {workdir}/",
        "persistence_file mosquitto.db",
        f"autosave_interval {settings.autosave_interval}",
        # No queue limit: past max_queued_messages (default 1000) Mosquitto drops QoS 1
        # messages with one log line. Durable copies live in the gateway and the devices.
        "max_queued_messages 0",
        "max_queued_bytes 0",
        f"max_inflight_messages {settings.max_inflight_messages}",
        f"max_packet_size {settings.max_packet_size}",
        f"log_dest file {workdir}/mosquitto.log",
        "log_type error",
        "log_type warning",
        "log_type notice",
        "log_type information",
        "connection_messages true",
        "log_timestamp_format %Y-%m-%dT%H:%M:%S",
    ]
    return "\n".join(lines) + "\n" + settings.extra


def signal_and_wait(proc: subprocess.Popen[bytes], sig: signal.Signals, timeout: float) -> None:
    """Send ``sig`` to a running broker process and wait for it; SIGKILL it after ``timeout``."""
    if proc.poll() is not None:
        return
    proc.send_signal(sig)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def wait_for_port(port: int, timeout: float, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise BrokerError(f"broker exited with code {proc.returncode} before it listened")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.02)
    raise BrokerError(f"nothing listened on 127.0.0.1:{port} within {timeout:.0f}s")


class BrokerProcess:
    """One broker process on a fixed port, restartable. Constructing it does no I/O."""

    def __init__(
        self,
        workdir: Path,
        *,
        name: str = "broker",
        port: int | None = None,
        settings: BrokerSettings | None = None,
        embedded: bool | None = None,
        tls: BrokerTls | None = None,
    ) -> None:
        """``tls`` None is the plain mode (anonymous TCP, no ACL): for local experiments only."""
        self.name = name
        self.tls = tls
        self.workdir = workdir
        self._port = port
        self.settings = settings or BrokerSettings()
        self._embedded = embedded
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def port(self) -> int:
        if self._port is None:
            self._port = free_port()
        return self._port

    @property
    def url(self) -> str:
        return f"{'mqtts' if self.tls is not None else 'mqtt'}://127.0.0.1:{self.port}"

    @property
    def embedded(self) -> bool:
        if self._embedded is None:
            self._embedded = mosquitto_binary() is None
        return self._embedded

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def log_path(self) -> Path:
        return self.workdir / ("mosquitto.log" if not self.embedded else "amqtt.log")

    def _command(self) -> list[str]:
        if self.embedded:
            if self.tls is not None:
                raise BrokerError(
                    f"{self.name}: the embedded broker speaks plain MQTT only; install mosquitto"
                    " for TLS and ACLs, or run in plain mode (--plain)"
                )
            return [sys.executable, "-m", "edgetally.embedded_broker", "--port", str(self.port)]
        binary = mosquitto_binary()
        if binary is None:
            raise BrokerError("mosquitto is not installed (apt-get install mosquitto)")
        conf = self.workdir / "mosquitto.conf"
        conf.write_text(mosquitto_config(self.port, self.workdir, self.settings, self.tls))
        return [binary, "-c", str(conf)]

    def start(self, timeout: float = 15.0) -> None:
        if self.running:
            raise BrokerError(f"{self.name} broker is already running (pid {self.pid})")
        if not port_is_free(self.port):
            # Else the readiness probe would find whatever holds the port and call this broker up.
            raise BrokerError(f"port {self.port} on 127.0.0.1 is already in use: give another port")
        self.workdir.mkdir(parents=True, exist_ok=True)
        command = self._command()
        if self.embedded:
            log.warning(
                "no mosquitto binary on PATH: %s broker is the embedded amqtt broker on port %d",
                self.name,
                self.port,
            )
        out = open(self.workdir / f"{self.name}.stdout", "ab")  # noqa: SIM115 - owned by the child
        try:
            self._proc = subprocess.Popen(
                command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        finally:
            out.close()
        wait_for_port(self.port, timeout, self._proc)
        log.info("%s broker listening on %s (pid %d)", self.name, self.url, self._proc.pid)

    def _signal(self, sig: signal.Signals, timeout: float) -> None:
        if self._proc is not None:
            signal_and_wait(self._proc, sig, timeout)
        self._proc = None

    def stop(self, timeout: float = 10.0) -> None:
        """Clean stop: Mosquitto writes its persistence file."""
        self._signal(signal.SIGTERM, timeout)

    def kill(self) -> None:
        """SIGKILL: whatever the broker held only in memory is gone."""
        self._signal(signal.SIGKILL, 5.0)

    def restart(self, timeout: float = 15.0) -> None:
        self.stop()
        self.start(timeout)

    def __enter__(self) -> BrokerProcess:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
