"""Without the cloud's signing key nothing runs unverifiable: `cloud run` refuses to start
without cloud-signing.key, `devices run` refuses a registry without the cloud key."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from protocol.registry import CLOUD_KEY_FILE, REGISTRY_FILE
from tests.helpers import run_cli


def test_cloud_run_without_the_cloud_signing_key_names_the_file(keys_dir: Path, tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    shutil.copytree(keys_dir, keys)
    (keys / CLOUD_KEY_FILE).unlink()
    result = run_cli(
        "cloud", "run", "--broker", "mqtt://127.0.0.1:1", "--db", f"sqlite:///{tmp_path / 'c.db'}",
        "--keys", str(keys), check=False,
    )  # fmt: skip
    assert result.returncode == 1
    assert str(keys / CLOUD_KEY_FILE) in result.stderr and "provision" in result.stderr


def test_devices_run_refuses_a_registry_without_the_cloud_key(keys_dir: Path, tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    shutil.copytree(keys_dir, keys)
    registry = json.loads((keys / REGISTRY_FILE).read_text())
    del registry["cloud"]
    (keys / REGISTRY_FILE).write_text(json.dumps(registry))
    result = run_cli(
        "devices", "run", "--broker", "mqtt://127.0.0.1:1", "--keys", str(keys), "--seed", "1", check=False,
    )  # fmt: skip
    assert result.returncode != 0
    assert "no cloud key" in result.stderr and "provision" in result.stderr
