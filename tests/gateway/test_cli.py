"""`gateway run` refuses bad input (and a damaged buffer) with one clear line and a non-zero exit,
changing nothing."""

from __future__ import annotations

from pathlib import Path

from gateway.buffer.rows import NewMessage
from gateway.buffer.schema import State
from gateway.buffer.store import Buffer
from tests.gateway.buffer_support import messages_root, overwrite_page, snapshot_dir
from tests.helpers import run_cli

BROKERS = ("--edge", "mqtt://127.0.0.1:1", "--cloud", "mqtt://127.0.0.1:1")


def test_run_without_a_keys_directory_exits_with_one_clear_line(tmp_path: Path) -> None:
    proc = run_cli(
        "gateway", "run", *BROKERS, "--buffer", str(tmp_path / "b.db"), "--keys", str(tmp_path / "no-keys"),
        check=False,
    )  # fmt: skip
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        f"error: --keys: {tmp_path / 'no-keys'} is not a directory"
    ]
    assert not (tmp_path / "b.db").exists()


def test_run_with_a_keys_directory_without_registry_exits_clearly(tmp_path: Path) -> None:
    (tmp_path / "keys").mkdir()
    proc = run_cli(
        "gateway", "run", *BROKERS, "--buffer", str(tmp_path / "b.db"), "--keys", str(tmp_path / "keys"),
        check=False,
    )  # fmt: skip
    assert proc.returncode == 1
    assert len(proc.stderr.strip().splitlines()) == 1
    assert "registry" in proc.stderr


def test_run_on_a_foreign_buffer_file_exits_and_leaves_it_unchanged(
    tmp_path: Path, keys_dir: Path
) -> None:
    path = tmp_path / "precious.txt"
    path.write_bytes(b"not a buffer\n" * 50)
    proc = run_cli(
        "gateway", "run", *BROKERS, "--buffer", str(path), "--keys", str(keys_dir), check=False
    )
    assert proc.returncode == 1
    assert len(proc.stderr.strip().splitlines()) == 1 and "not an SQLite database" in proc.stderr
    assert path.read_bytes() == b"not a buffer\n" * 50
    assert sorted(p.name for p in tmp_path.iterdir()) == ["precious.txt"]


def test_run_with_a_bad_broker_url_exits_clearly(tmp_path: Path, keys_dir: Path) -> None:
    proc = run_cli(
        "gateway", "run", "--edge", "http://x", "--cloud", "mqtt://127.0.0.1:1",
        "--buffer", str(tmp_path / "b.db"), "--keys", str(keys_dir), check=False,
    )  # fmt: skip
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        "error: --edge: broker URL 'http://x' must look like mqtts://host:port or mqtt://host:port"
    ]


def test_run_on_a_damaged_buffer_names_the_recover_command_and_leaves_it_unchanged(
    tmp_path: Path, keys_dir: Path
) -> None:
    path = tmp_path / "b.db"
    with Buffer(path) as buffer:
        buffer.put_many(
            [
                NewMessage(
                    topic="edgetally/v1/el/d/batch", payload=bytes([n % 250]) * 900,
                    state=State.PENDING, received_at=1.0, election="el", device="d", seq=n,
                    body_hash=f"{n:064x}",
                )
                for n in range(200)
            ]
        )  # fmt: skip
    overwrite_page(path, messages_root(path))
    before = snapshot_dir(tmp_path)
    proc = run_cli(
        "gateway", "run", *BROKERS, "--buffer", str(path), "--keys", str(keys_dir), check=False
    )
    assert proc.returncode == 1
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith(f"error: buffer {path} is damaged")
    assert f"edgetally gateway buffer recover --buffer {path} --out {path}.recovered --keys {keys_dir}" in line
    assert snapshot_dir(tmp_path) == before
