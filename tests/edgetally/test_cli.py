"""The root command: tiers' commands load only when used, and look the same as before."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from edgetally._lazy import LazyGroup
from edgetally.cli import SUBCOMMANDS, app

TIMEOUT_S = 60.0


def _modules_after(argv: list[str]) -> set[str]:
    """The modules a fresh interpreter has imported after running ``edgetally ARGV``."""
    code = (
        "import json, sys\n"
        "from edgetally.cli import app\n"
        "try:\n"
        f"    app({argv!r})\n"
        "except SystemExit:\n"
        "    pass\n"
        "sys.stderr.write('\\nMODULES' + json.dumps(sorted(sys.modules)))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=TIMEOUT_S, check=False
    )
    return set(json.loads(done.stderr.rsplit("MODULES", 1)[1]))


def test_root_help_imports_no_tier_command_and_no_database_library() -> None:
    loaded = _modules_after(["--help"])
    for module in ("devices.cli", "gateway.cli", "cloud.cli", "edgetally.scenarios.cli", "edgetally.proxy.cli",
                   "sqlalchemy", "alembic", "cryptography"):
        assert module not in loaded, f"`edgetally --help` imported {module}"


def test_a_tier_command_imports_its_own_cli_and_not_the_others() -> None:
    loaded = _modules_after(["gateway", "--help"])
    assert "gateway.cli" in loaded
    assert not {"cloud.cli", "devices.cli", "edgetally.scenarios.cli"} & loaded


def test_buffer_stats_and_cloud_results_on_sqlite_import_no_sqlalchemy(tmp_path: Path) -> None:
    from cloud.db import make_engine, upgrade
    from gateway.buffer.store import Buffer

    with Buffer(tmp_path / "buffer.db"):
        pass
    url = f"sqlite:///{tmp_path / 'cloud.db'}"
    engine = make_engine(url)
    upgrade(engine)
    engine.dispose()
    for argv in (
        ["gateway", "buffer", "stats", "--buffer", str(tmp_path / "buffer.db"), "--json"],
        ["cloud", "results", "--db", url, "--json"],  # no election yet: refused, still read
    ):
        loaded = _modules_after(argv)
        assert {"sqlalchemy", "alembic", "cryptography"}.isdisjoint(loaded), argv


@pytest.mark.parametrize("name", sorted(SUBCOMMANDS))
def test_the_root_lists_each_command_with_the_commands_own_help(name: str) -> None:
    entry = SUBCOMMANDS[name]
    loaded = entry.load(name)
    assert loaded.name == name
    assert (loaded.help or "").strip().splitlines()[0] == entry.help


def test_root_help_lists_every_command() -> None:
    result = CliRunner().invoke(app, ["--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    for name in [*SUBCOMMANDS, "demo", "broker"]:
        assert f" {name} " in result.output


def test_a_lazy_command_runs_through_the_root() -> None:
    result = CliRunner().invoke(app, ["cloud", "migrate", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "--db" in result.output


def test_a_mistyped_command_is_answered_with_the_lazy_one_it_resembles() -> None:
    result = CliRunner().invoke(app, ["gatewy"])
    assert result.exit_code == 2
    assert "No such command 'gatewy'. Did you mean 'gateway'?" in result.output


def test_the_root_group_is_lazy() -> None:
    import typer.main

    assert isinstance(typer.main.get_command(app), LazyGroup)
