"""Two real Mosquitto brokers per test: the edge broker and the cloud broker."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from edgetally.brokers import BrokerProcess


@pytest.fixture
def edge(broker_factory: Callable[..., BrokerProcess]) -> BrokerProcess:
    return broker_factory("edge")


@pytest.fixture
def cloud(broker_factory: Callable[..., BrokerProcess]) -> BrokerProcess:
    return broker_factory("cloud")
