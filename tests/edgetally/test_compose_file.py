"""docker-compose.yml is a valid Compose file, with no engine: valid against the Compose
Specification's JSON schema (vendored: tests/support/data/README.md), every published port on
the host's 127.0.0.1 only, and every ``depends_on`` naming a service of the file. Each check is
shown failing on a broken copy, so a broken compose file fails CI."""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from tests.helpers import REPO

SCHEMA = Path(__file__).resolve().parents[1] / "support" / "data" / "compose-spec.json"
SCHEMA_SHA256 = "1f91e091f16b2dd50ab8860e02bb391d22df553d91c145eacedb1b6eff9c3f0e"  # commit 170098b


def _compose() -> dict[str, Any]:
    loaded = yaml.safe_load((REPO / "docker-compose.yml").read_text())  # resolves the << merges
    assert isinstance(loaded, dict)
    return loaded


def schema_errors(compose: dict[str, Any]) -> list[str]:
    schema = json.loads(SCHEMA.read_text())
    # Draft 7 named outright: the file's "$schema" URL lacks the "#" jsonschema looks it up by.
    validator = jsonschema.Draft7Validator(schema)
    return sorted(f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}" for e in validator.iter_errors(compose))


def exposed_ports(compose: dict[str, Any]) -> list[str]:
    """Ports published anywhere but the host's 127.0.0.1 (short syntax "127.0.0.1:HOST:CONTAINER",
    or long syntax with ``host_ip: 127.0.0.1``), and services on the host's network."""
    found = []
    for name, service in compose.get("services", {}).items():
        if service.get("network_mode") == "host":
            found.append(f"{name}: network_mode host")
        for port in service.get("ports", []):
            if isinstance(port, dict):
                ok = port.get("host_ip") == "127.0.0.1"
            else:
                ok = str(port).startswith("127.0.0.1:") and str(port).count(":") == 2
            if not ok:
                found.append(f"{name}: {port!r}")
    return found


def unknown_dependencies(compose: dict[str, Any]) -> list[str]:
    services = compose.get("services", {})
    found = []
    for name, service in services.items():
        depends = service.get("depends_on", [])
        for dependency in depends if isinstance(depends, list) else depends.keys():
            if dependency not in services or dependency == name:
                found.append(f"{name} depends on {dependency}")
    return found


def test_the_vendored_schema_is_the_recorded_one_and_a_valid_schema() -> None:
    assert hashlib.sha256(SCHEMA.read_bytes()).hexdigest() == SCHEMA_SHA256
    jsonschema.Draft7Validator.check_schema(json.loads(SCHEMA.read_text()))


def test_the_compose_file_is_valid_against_the_compose_specification() -> None:
    assert schema_errors(_compose()) == []


def test_the_compose_file_publishes_ports_on_the_loopback_only() -> None:
    compose = _compose()
    assert any(service.get("ports") for service in compose["services"].values())  # the check sees some
    assert exposed_ports(compose) == []


def test_every_dependency_of_the_compose_file_is_one_of_its_services() -> None:
    compose = _compose()
    assert any("depends_on" in service for service in compose["services"].values())
    assert unknown_dependencies(compose) == []


def _broken(change: str) -> dict[str, Any]:
    compose = copy.deepcopy(_compose())
    services = compose["services"]
    if change == "unknown key":
        services["gateway"]["restart_policy"] = "always"  # not a service key (deploy.restart_policy is)
    elif change == "ports as a number":
        services["results"]["ports"] = 8080
    elif change == "depends_on condition":
        services["cloud"]["depends_on"]["postgres"] = {"condition": "service_ready"}
    elif change == "unknown top-level key":
        compose["service"] = {}
    elif change == "environment value a list":
        services["postgres"]["environment"]["POSTGRES_USER"] = ["edgetally"]
    return compose


@pytest.mark.parametrize(
    "change",
    ["unknown key", "ports as a number", "depends_on condition", "unknown top-level key", "environment value a list"],
)
def test_a_broken_compose_file_fails_the_schema(change: str) -> None:
    assert schema_errors(_broken(change)) != []


@pytest.mark.parametrize(
    "ports",
    [["8080:8080"], ["0.0.0.0:8080:8080"], ["8080"], [8080], [{"target": 8080, "published": "8080"}],
     [{"target": 8080, "published": "8080", "host_ip": "0.0.0.0"}]],
)  # fmt: skip
def test_a_port_published_beyond_the_loopback_is_reported(ports: list[object]) -> None:
    compose = _compose()
    compose["services"]["results"]["ports"] = ports
    assert schema_errors(compose) == []  # the schema allows it: only this check refuses it
    assert exposed_ports(compose) == [f"results: {ports[0]!r}"]


def test_long_syntax_on_the_loopback_passes_and_host_networking_is_reported() -> None:
    compose = _compose()
    compose["services"]["results"]["ports"] = [{"target": 8080, "published": "8080", "host_ip": "127.0.0.1"}]
    assert exposed_ports(compose) == []
    compose["services"]["postgres"]["network_mode"] = "host"
    assert exposed_ports(compose) == ["postgres: network_mode host"]


@pytest.mark.parametrize("form", ["list", "mapping"])
def test_a_dependency_on_a_missing_service_is_reported(form: str) -> None:
    compose = _compose()
    fleet = compose["services"]["fleet"]
    fleet["depends_on"] = ["gateway", "gatway"] if form == "list" else {"gatway": {"condition": "service_started"}}
    assert schema_errors(compose) == []  # the schema cannot know the names
    assert unknown_dependencies(compose) == ["fleet depends on gatway"]
