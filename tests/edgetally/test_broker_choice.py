"""How the tests choose their broker (tests/support/broker_choice.py): every combination of
EDGETALLY_TEST_BROKER, a reachable Docker engine and an installed mosquitto binary."""

from __future__ import annotations

import itertools

import pytest

from edgetally.brokers import free_port
from tests.support import broker_choice
from tests.support.broker_choice import BrokerBackend, choose_broker

LOCAL, CONTAINER, SKIP = BrokerBackend.LOCAL, BrokerBackend.TESTCONTAINERS, BrokerBackend.SKIP
ENGINE_DOWN = "unix:///var/run/docker.sock: Error while fetching server API version"

# (EDGETALLY_TEST_BROKER, Docker answers?, mosquitto installed?) -> backend
EXPECTED = {
    (None, True, True): LOCAL,
    (None, True, False): CONTAINER,
    (None, False, True): LOCAL,
    (None, False, False): LOCAL,  # neither: the local path fails as it always did
    ("", True, True): LOCAL,
    ("", True, False): CONTAINER,
    ("", False, True): LOCAL,
    ("", False, False): LOCAL,
    ("local", True, True): LOCAL,
    ("local", True, False): LOCAL,
    ("local", False, True): LOCAL,
    ("local", False, False): LOCAL,
    ("testcontainers", True, True): CONTAINER,
    ("testcontainers", True, False): CONTAINER,
    ("testcontainers", False, True): SKIP,
    ("testcontainers", False, False): SKIP,
}


def test_the_table_covers_every_combination() -> None:
    settings = (None, "", "local", "testcontainers")
    assert set(EXPECTED) == set(itertools.product(settings, (True, False), (True, False)))


@pytest.mark.parametrize(("setting", "engine", "binary"), sorted(EXPECTED, key=str))
def test_the_broker_follows_the_setting_the_engine_and_the_binary(
    setting: str | None, engine: bool, binary: bool
) -> None:
    choice = choose_broker(setting, None if engine else ENGINE_DOWN, binary)
    assert choice.backend is EXPECTED[(setting, engine, binary)]
    assert choice.reason


@pytest.mark.parametrize("binary", [True, False])
def test_testcontainers_without_an_engine_is_skipped_with_the_engines_error(binary: bool) -> None:
    choice = choose_broker("testcontainers", ENGINE_DOWN, binary)
    assert choice.backend is SKIP
    assert choice.reason == f"EDGETALLY_TEST_BROKER=testcontainers but no Docker engine is reachable: {ENGINE_DOWN}"


def test_the_setting_ignores_case_and_spaces() -> None:
    assert choose_broker(" TestContainers ", None, True).backend is CONTAINER
    assert choose_broker("LOCAL", None, False).backend is LOCAL


@pytest.mark.parametrize("setting", ["docker", "container", "1"])
def test_an_unknown_setting_is_an_error_not_a_guess(setting: str) -> None:
    with pytest.raises(ValueError, match="EDGETALLY_TEST_BROKER must be 'local' or 'testcontainers'"):
        choose_broker(setting, None, True)


def test_an_engine_that_does_not_answer_is_reported_with_its_address(monkeypatch: pytest.MonkeyPatch) -> None:
    host = f"tcp://127.0.0.1:{free_port()}"  # nothing listens there
    monkeypatch.setenv("DOCKER_HOST", host)
    error = broker_choice.docker_error(timeout=2)
    assert error is not None and error.startswith(f"{host}: ")
    assert "\n" not in error


@pytest.mark.parametrize(
    ("setting", "binary", "pinged"),
    [("local", False, False), (None, True, False), (None, False, True), ("testcontainers", True, True)],
)
def test_the_engine_is_pinged_only_when_the_choice_depends_on_it(
    monkeypatch: pytest.MonkeyPatch, setting: str | None, binary: bool, pinged: bool
) -> None:
    pings: list[None] = []

    def engine_down() -> str:
        pings.append(None)
        return ENGINE_DOWN

    if setting is None:
        monkeypatch.delenv(broker_choice.ENV, raising=False)
    else:
        monkeypatch.setenv(broker_choice.ENV, setting)
    monkeypatch.setattr(broker_choice, "mosquitto_binary", lambda: "/usr/sbin/mosquitto" if binary else None)
    monkeypatch.setattr(broker_choice, "session_docker_error", engine_down)
    broker_choice.session_choice.__wrapped__()
    assert bool(pings) is pinged
