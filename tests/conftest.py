"""Fixtures: real Mosquitto brokers on free ports, a provisioned sample election, unique topics."""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from devices.election_file import load_election
from edgetally.acl import BrokerKind
from edgetally.brokers import BrokerProcess, mosquitto_binary
from protocol import Election, Registry, SigningKey, provision
from protocol.registry import load_cloud_key
from tests.helpers import SAMPLE_ELECTION
from tests.support import wire as test_wires
from tests.support.broker_choice import (
    ENV,
    BrokerBackend,
    BrokerChoice,
    choose_broker,
    session_choice,
)
from tests.support.nats import nats_cluster_factory  # noqa: F401 - a fixture
from tests.support.wire import TestWire

_counter = itertools.count()


def unique_topic() -> str:
    """A topic no other test uses, for tests that share a broker."""
    return f"edgetally-test/{uuid.uuid4().hex}/{next(_counter)}"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--kill-cycles",
        type=int,
        default=None,
        help="SIGKILL/restart cycles of tests/gateway/test_crash_random.py"
        " (default: $EDGETALLY_KILL_CYCLES, else a count that keeps it under a minute)",
    )
    parser.addoption(
        "--kill-runs",
        type=int,
        default=1,
        help="how many times each test of tests/integration/test_kills.py runs (scripts/kill-test N)",
    )


def pytest_configure(config: pytest.Config) -> None:
    try:  # a typo in EDGETALLY_TEST_BROKER stops the session before any test runs
        choose_broker(os.environ.get(ENV), None, True)
    except ValueError as error:
        raise pytest.UsageError(str(error)) from None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if mosquitto_binary() is not None:
        return
    skip = pytest.mark.skip(reason="integration tests need a mosquitto binary (apt-get install mosquitto)")
    for item in items:
        if "integration" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def broker_choice() -> BrokerChoice:
    """Local ``mosquitto`` or a testcontainers one (tests/support/broker_choice.py): by
    EDGETALLY_TEST_BROKER, else the container only where Docker answers and no binary is installed."""
    return session_choice()


@pytest.fixture
def broker_factory(
    tmp_path: Path, test_wire: TestWire, broker_choice: BrokerChoice
) -> Iterator[Callable[..., BrokerProcess]]:
    """Make started Mosquitto brokers in this test's tmp dir; all are killed afterwards.

    Locked down by default, as the product runs them: TLS, client certificates from the
    session's PKI (``test_wire``) and the ACL of ``kind`` (edge: devices and gateways; cloud:
    gateways and cloud workers). ``plain=True`` is anonymous TCP without ACLs: only for a test
    about plain mode, or one that needs anonymous access for a reason stated where it asks.

    The local binary, or the same config in an ``eclipse-mosquitto:2`` container
    (tests/support/container_broker.py) when ``broker_choice`` says so; skipped with its reason
    when EDGETALLY_TEST_BROKER=testcontainers and no Docker engine answers."""
    if broker_choice.backend is BrokerBackend.SKIP:
        pytest.skip(broker_choice.reason)
    made: list[BrokerProcess] = []

    def make(
        name: str = "broker", kind: BrokerKind | str | None = None, plain: bool = False, **kwargs: object
    ) -> BrokerProcess:
        broker_kind = BrokerKind(kind) if kind is not None else BrokerKind.CLOUD if "cloud" in name else BrokerKind.EDGE
        tls = None if plain else test_wire.wire.broker(broker_kind)
        workdir = tmp_path / f"broker-{name}"
        broker: BrokerProcess
        if broker_choice.backend is BrokerBackend.TESTCONTAINERS:
            from tests.support.container_broker import ContainerBroker

            broker = ContainerBroker(workdir, name=name, tls=tls, **kwargs)
        else:
            broker = BrokerProcess(workdir, name=name, embedded=False, tls=tls, **kwargs)  # type: ignore[arg-type]
        test_wire.kinds[broker.port] = broker_kind
        if tls is not None:
            test_wire.locked.add(broker.port)
        broker.start()
        made.append(broker)
        return broker

    yield make
    for broker in made:
        broker.kill()


@pytest.fixture
def broker(broker_factory: Callable[..., BrokerProcess]) -> BrokerProcess:
    return broker_factory("edge")


@pytest.fixture(scope="session")
def sample_election() -> Election:
    return load_election(SAMPLE_ELECTION)


@pytest.fixture(scope="session")
def keys_dir(tmp_path_factory: pytest.TempPathFactory, sample_election: Election) -> Iterator[Path]:
    """The sample election provisioned once per session (keys are slow-ish to make), with
    every device's TLS certificate (``clients/``, ``ca.crt``) from the session's PKI
    (``test_wire``): device processes on a locked broker take theirs from the keys directory.
    A test about a keys directory without them, or with a PKI of its own, copies it with
    tests.support.wire.copy_keys."""
    directory = tmp_path_factory.mktemp("keys")
    registry = provision(sample_election, directory)
    test_wires.install(test_wires.make_wire(tmp_path_factory.mktemp("wire"), directory, registry))
    yield directory
    test_wires.install(None)


@pytest.fixture(scope="session")
def registry(keys_dir: Path) -> Registry:
    return Registry.load(keys_dir)


@pytest.fixture(scope="session")
def test_wire(keys_dir: Path) -> TestWire:
    """The session's PKI and ACLs for ``keys_dir``'s registry (tests/support/wire.py): what
    ``broker_factory``'s brokers and the harness clients use."""
    return test_wires.current()


@pytest.fixture(scope="session")
def cloud_key(keys_dir: Path) -> SigningKey:
    """The cloud's signing key of ``keys_dir`` (``cloud-signing.key``): what tests standing in
    for the cloud sign receipts and repair requests with."""
    return load_cloud_key(keys_dir)


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Child processes a test starts; anything still running at the end is SIGKILLed."""
    children: list[subprocess.Popen[bytes]] = []
    yield children
    for child in children:
        if child.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(child.pid, signal.SIGKILL)
            child.wait(10)
