"""The import rule (docs/architecture.md), read from the source: the three tiers never import
each other, ``protocol`` imports none of them, and only ``edgetally`` composes them.

Every import statement counts, including those inside functions and under ``TYPE_CHECKING``:
a lazy or type-only import still ties one tier to another's code.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("protocol", "devices", "gateway", "cloud", "edgetally")
MAY_IMPORT: dict[str, set[str]] = {
    "protocol": set(),
    "devices": {"protocol"},
    "gateway": {"protocol"},
    "cloud": {"protocol"},
    "edgetally": {"protocol", "devices", "gateway", "cloud"},
}


def imported_packages(path: Path) -> dict[str, int]:
    """Our top-level packages that ``path`` imports, each with the first line that does."""
    found: dict[str, int] = {}
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        for name in names:
            top = name.split(".")[0]
            if top in PACKAGES:
                found.setdefault(top, node.lineno)
    return found


def violations(package: str, root: Path = ROOT) -> list[str]:
    allowed = MAY_IMPORT[package] | {package}
    out = []
    for path in sorted((root / package).rglob("*.py")):
        for top, line in imported_packages(path).items():
            if top not in allowed:
                out.append(f"{path.relative_to(root)}:{line} imports {top}")
    return out


@pytest.mark.parametrize("package", PACKAGES)
def test_a_package_imports_only_what_the_layout_allows(package: str) -> None:
    assert violations(package) == []


def test_a_tier_importing_another_tier_is_reported(tmp_path: Path) -> None:
    (tmp_path / "gateway").mkdir()
    (tmp_path / "gateway" / "uplink.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from cloud.ledger import chain\n"
    )
    (tmp_path / "gateway" / "ok.py").write_text("import protocol.envelope\n")
    assert violations("gateway", root=tmp_path) == ["gateway/uplink.py:3 imports cloud"]
