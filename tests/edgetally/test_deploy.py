"""The container deployment files stay in step with the brokers EdgeTally runs locally."""

from __future__ import annotations

from pathlib import Path

import yaml

from edgetally.brokers import BrokerSettings, BrokerTls, listener_lines, mosquitto_config
from tests.helpers import REPO

LOSS_CRITICAL = ("persistence", "max_queued_messages", "max_queued_bytes", "max_inflight_messages", "autosave_interval")


def _settings(text: str) -> dict[str, str]:
    pairs = (line.split(None, 1) for line in text.splitlines() if line.strip() and not line.startswith("#"))
    return {key: value for key, value in pairs if key in LOSS_CRITICAL}


def test_container_broker_config_keeps_the_no_loss_settings(tmp_path: Path) -> None:
    local = _settings(mosquitto_config(1883, tmp_path, BrokerSettings()))
    shipped = _settings((REPO / "deploy" / "mosquitto" / "mosquitto.conf").read_text())
    assert shipped == local
    assert shipped["max_queued_messages"] == "0"


def test_container_listeners_are_locked_down_as_the_local_ones() -> None:
    for kind in ("edge", "cloud"):
        shipped = (REPO / "deploy" / "mosquitto" / kind / "listener.conf").read_text()
        lines = [line for line in shipped.splitlines() if line.strip() and not line.startswith("#")]
        pki = Path("/pki")
        tls = BrokerTls(pki / "ca.crt", pki / "brokers" / f"{kind}.crt", pki / "brokers" / f"{kind}.key", pki / "acl" / f"{kind}.acl")
        assert lines == listener_lines(8883, tls, bind=None)  # every interface of the container
        assert "allow_anonymous false" in lines and "require_certificate true" in lines


def test_compose_runs_every_tier_with_the_shipped_broker_config() -> None:
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"edge-broker", "cloud-broker", "postgres", "cloud", "gateway", "fleet"} <= set(services)
    for broker, kind in (("edge-broker", "edge"), ("cloud-broker", "cloud")):
        assert any("deploy/mosquitto/mosquitto.conf" in v for v in services[broker]["volumes"])
        assert any(v.startswith(f"./deploy/mosquitto/{kind}:") for v in services[broker]["volumes"])
    for tier, option in (("cloud", "--broker="), ("gateway", "--edge="), ("gateway", "--cloud=")):
        args = [str(a) for a in services[tier]["command"]]
        assert any(a.startswith(option + "mqtts://") for a in args) and "--pki=/pki" in args
    assert any(str(a).startswith("--broker=mqtts://") for a in services["fleet"]["command"])
    assert any(str(arg).startswith("--db=postgresql+psycopg://") for arg in services["cloud"]["command"])
    results = services["results"]  # the live page, published on the host's loopback only
    assert results["command"][:2] == ["cloud", "serve"] and results["ports"] == ["127.0.0.1:8080:8080"]
