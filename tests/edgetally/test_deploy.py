"""The container deployment files stay in step with the brokers EdgeTally runs locally."""

from __future__ import annotations

from pathlib import Path

import yaml

from edgetally.brokers import BrokerSettings, mosquitto_config
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


def test_compose_runs_every_tier_with_the_shipped_broker_config() -> None:
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"edge-broker", "cloud-broker", "postgres", "cloud", "gateway", "fleet"} <= set(services)
    for broker in ("edge-broker", "cloud-broker"):
        assert any("deploy/mosquitto/mosquitto.conf" in v for v in services[broker]["volumes"])
    assert any(str(arg).startswith("--db=postgresql+psycopg://") for arg in services["cloud"]["command"])
