"""Topic names and broker URLs: pure string handling, exact strings (they are the contract)."""

from __future__ import annotations

import pytest

from protocol import (
    BATCH_FILTER,
    RECEIPT_FILTER,
    BadTopic,
    BrokerAddress,
    DeviceTopic,
    DeviceTopicKind,
    InvalidValue,
    RejectReason,
    batch_topic,
    gateway_status_topic,
    parse_batch_topic,
    parse_broker_url,
    parse_device_topic,
    receipt_topic,
    status_topic,
)
from protocol.topics import STATUS_FILTER


def test_topic_names_are_the_documented_strings() -> None:
    assert batch_topic("sample-2026", "p-001-a") == "edgetally/v1/sample-2026/p-001-a/batch"
    assert status_topic("sample-2026", "p-001-a") == "edgetally/v1/sample-2026/p-001-a/status"
    assert receipt_topic("sample-2026", "p-001-a") == "edgetally/v1/sample-2026/p-001-a/receipt"
    assert gateway_status_topic("gw1") == "edgetally/v1/_gateway/gw1/status"
    assert BATCH_FILTER == "edgetally/v1/+/+/batch"
    assert RECEIPT_FILTER == "edgetally/v1/+/+/receipt"
    assert STATUS_FILTER == "edgetally/v1/+/+/status"


@pytest.mark.parametrize("kind", list(DeviceTopicKind))
def test_device_topics_parse_back(kind: DeviceTopicKind) -> None:
    topic = f"edgetally/v1/sample-2026/p-001-a/{kind}"
    assert parse_device_topic(topic) == DeviceTopic("sample-2026", "p-001-a", kind)


def test_parsed_batch_topic_names_election_and_device() -> None:
    parsed = parse_device_topic(batch_topic("e.1", "dev_2"))
    assert parsed is not None
    assert (parsed.election, parsed.device, parsed.kind) == ("e.1", "dev_2", DeviceTopicKind.BATCH)


@pytest.mark.parametrize(
    "topic",
    [
        "edgetally/v1/e/d",  # too short
        "edgetally/v1/e/d/batch/extra",  # too long
        "edgetally/v2/e/d/batch",  # other version
        "other/v1/e/d/batch",
        "edgetally/v1/e/d/bogus",  # unknown kind
        "edgetally/v1/e/d/Batch",
        gateway_status_topic("gw1"),  # not a device
        "edgetally/v1//d/batch",  # empty election
        "edgetally/v1/e//batch",  # empty device
        "edgetally/v1/e/-d/batch",  # not an id
        "edgetally/v1/e/d\n/batch",
        "",
    ],
)
def test_anything_else_is_not_a_device_topic(topic: str) -> None:
    assert parse_device_topic(topic) is None
    with pytest.raises(BadTopic, match="is not a device batch topic"):
        parse_batch_topic(topic)


@pytest.mark.parametrize("topic", ["edgetally/v1/e/d/status", "edgetally/v1/e/d/receipt"])
def test_other_device_topics_are_not_batch_topics(topic: str) -> None:
    with pytest.raises(BadTopic) as caught:
        parse_batch_topic(topic)
    assert caught.value.reason is RejectReason.BAD_TOPIC


def test_batch_topic_parses_to_election_and_device() -> None:
    assert parse_batch_topic("edgetally/v1/e-1/d-2/batch") == DeviceTopic("e-1", "d-2", DeviceTopicKind.BATCH)


@pytest.mark.parametrize(
    ("url", "host", "port"),
    [
        ("mqtt://127.0.0.1:18830", "127.0.0.1", 18830),
        ("tcp://broker.example:1884", "broker.example", 1884),
        ("mqtt://localhost", "localhost", 1883),
        ("mqtt://localhost/", "localhost", 1883),
        ("127.0.0.1:1885", "127.0.0.1", 1885),
        ("localhost", "localhost", 1883),
        ("mqtt://[::1]:1886", "::1", 1886),
        ("mqtt://localhost:65535", "localhost", 65535),
    ],
)
def test_broker_urls_parse(url: str, host: str, port: int) -> None:
    assert parse_broker_url(url) == BrokerAddress(host, port)


@pytest.mark.parametrize(
    ("url", "port"), [("mqtts://127.0.0.1:8884", 8884), ("mqtts://localhost", 8883)]
)
def test_mqtts_urls_ask_for_tls_on_port_8883_by_default(url: str, port: int) -> None:
    address = parse_broker_url(url)
    assert (address.port, address.tls) == (port, True)
    assert parse_broker_url(address.url) == address


@pytest.mark.parametrize(
    ("address", "url"),
    [(BrokerAddress("127.0.0.1", 1883), "mqtt://127.0.0.1:1883"), (BrokerAddress("::1", 1886), "mqtt://[::1]:1886")],
)
def test_broker_address_url_parses_back(address: BrokerAddress, url: str) -> None:
    assert address.url == url
    assert parse_broker_url(address.url) == address


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("", "must look like mqtts://host:port or mqtt://host:port"),
        ("mqtt://", "must look like mqtts://host:port or mqtt://host:port"),
        ("ssl://host:8883", "must look like mqtts://host:port or mqtt://host:port"),
        ("http://host:1883", "must look like mqtts://host:port or mqtt://host:port"),
        ("mqtt://host:abc", "is not valid"),
        ("mqtt://host:70000", "is not valid"),
        ("mqtt://host:0", "port must be 1-65535, got 0"),
        ("[", "is not valid"),
        ("mqtt://[::1", "is not valid"),
        ("mqtt://user:secret@host:1883", "credentials in the URL are not supported"),
        ("mqtt://host:1883/topic", "a path, query or fragment is not supported"),
        ("mqtt://host:1883?x=1", "a path, query or fragment is not supported"),
    ],
)
def test_bad_broker_urls_are_refused_naming_the_problem(url: str, problem: str) -> None:
    with pytest.raises(InvalidValue, match=problem) as caught:
        parse_broker_url(url)
    assert repr(url) in str(caught.value)
