"""Which Mosquitto the tests' ``broker_factory`` runs: the local binary, or ``eclipse-mosquitto:2``
in a container through testcontainers (tests/support/container_broker.py).

``EDGETALLY_TEST_BROKER``:

- ``local`` runs the ``mosquitto`` binary, whatever else the machine has;
- ``testcontainers`` runs the container, and where no Docker engine answers every test that
  asks for a broker is skipped, with the engine's error as the reason;
- unset (or empty) runs the container only when a Docker engine answers and no ``mosquitto``
  binary is installed; the local binary otherwise (with neither, the local path fails as it
  always has: "mosquitto is not installed").

:func:`choose_broker` decides from those three facts and nothing else; :func:`session_choice`
gathers them once per test session.
"""

from __future__ import annotations

import enum
import functools
import gc
import os
import warnings
from dataclasses import dataclass

from edgetally.brokers import mosquitto_binary

ENV = "EDGETALLY_TEST_BROKER"
DOCKER_PING_TIMEOUT = 3  # seconds


class BrokerBackend(enum.Enum):
    LOCAL = "local"
    TESTCONTAINERS = "testcontainers"
    SKIP = "skip"


@dataclass(frozen=True)
class BrokerChoice:
    backend: BrokerBackend
    reason: str  # why this backend; for SKIP, the skip reason shown


def no_engine_reason(asked: str, docker_error: str) -> str:
    return f"{asked} but no Docker engine is reachable: {docker_error}"


def choose_broker(setting: str | None, docker_error: str | None, binary: bool) -> BrokerChoice:
    """The broker for ``EDGETALLY_TEST_BROKER`` = ``setting`` (None: unset), ``docker_error``
    (None: a Docker engine answered a ping; else why not) and ``binary`` (a ``mosquitto``
    binary is installed). An unknown setting is a ValueError: a typo must not quietly pick one."""
    value = (setting or "").strip().lower()
    if value == BrokerBackend.LOCAL.value:
        return BrokerChoice(BrokerBackend.LOCAL, f"{ENV}=local")
    if value == BrokerBackend.TESTCONTAINERS.value:
        if docker_error is not None:
            return BrokerChoice(BrokerBackend.SKIP, no_engine_reason(f"{ENV}=testcontainers", docker_error))
        return BrokerChoice(BrokerBackend.TESTCONTAINERS, f"{ENV}=testcontainers")
    if value:
        raise ValueError(f"{ENV} must be 'local' or 'testcontainers' (or unset), not {setting!r}")
    if binary:
        return BrokerChoice(BrokerBackend.LOCAL, "a mosquitto binary is installed")
    if docker_error is None:
        return BrokerChoice(BrokerBackend.TESTCONTAINERS, "no mosquitto binary, and a Docker engine answered")
    return BrokerChoice(BrokerBackend.LOCAL, f"no mosquitto binary, and no Docker engine: {docker_error}")


def docker_error(timeout: float = DOCKER_PING_TIMEOUT) -> str | None:
    """None when the Docker engine of the environment (DOCKER_HOST, else the local socket)
    answers a ping within ``timeout``; else what went wrong, as one line."""
    try:
        import docker
        import docker.errors
    except ImportError as error:
        return f"the docker package is not installed ({error}; pip install -e '.[test]')"
    client = None
    # A failed connection leaves its socket to the garbage collector: collect it here, where
    # its ResourceWarning is expected, not in some later test (warnings are errors there).
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        try:
            client = docker.DockerClient.from_env(timeout=int(timeout), version="auto")
            client.ping()
        except (docker.errors.DockerException, OSError) as error:
            host = os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"
            return f"{host}: {' '.join(str(error).split())}"
        finally:
            if client is not None:
                client.close()
            gc.collect()
    return None


@functools.cache
def session_docker_error() -> str | None:
    """:func:`docker_error`, asked once per session."""
    return docker_error()


@functools.cache
def session_choice() -> BrokerChoice:
    """This session's broker: the environment, the engine and the binary, looked at once.
    The engine is pinged only when the answer depends on it."""
    setting = os.environ.get(ENV)
    binary = mosquitto_binary() is not None
    value = (setting or "").strip().lower()
    needs_engine = value == BrokerBackend.TESTCONTAINERS.value or (not value and not binary)
    # Where the engine cannot change the answer, it is not asked (and None stands in for it).
    return choose_broker(setting, session_docker_error() if needs_engine else None, binary)
