"""The import rule (docs/architecture.md), read from the source: the three tiers never import
each other, ``protocol`` imports none of them, and only ``edgetally`` composes them.

Every import statement counts, including those inside functions and under ``TYPE_CHECKING``:
a lazy or type-only import still ties one tier to another's code. Separately, no module
imports itself round a loop when it loads (function-level and type-only imports excepted).
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


# -- no import cycles -----------------------------------------------------------------------
def module_names(root: Path = ROOT) -> dict[str, Path]:
    """Every module of our packages by dotted name (a package by its own name)."""
    out: dict[str, Path] = {}
    for package in PACKAGES:
        for path in (root / package).rglob("*.py"):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join(parts)] = path
    return out


def _load_time_imports(body: list[ast.stmt], modules: dict[str, Path]) -> set[str]:
    """Our modules a module body imports when it runs: not in functions, not under TYPE_CHECKING.
    ``from package import submodule`` needs the submodule, not the package's names."""
    out: set[str] = set()
    for node in body:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            out |= _load_time_imports(node.orelse, modules)
        elif isinstance(node, ast.If | ast.Try | ast.With):
            for block in ("body", "orelse", "finalbody"):
                out |= _load_time_imports(getattr(node, block, []), modules)
            for handler in getattr(node, "handlers", []):
                out |= _load_time_imports(handler.body, modules)
        elif isinstance(node, ast.Import):
            out |= {alias.name for alias in node.names if alias.name in modules}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module in modules:
            subs = {f"{node.module}.{alias.name}" for alias in node.names} & modules.keys()
            out |= subs
            if len(subs) < len(node.names):
                out.add(node.module)
    return out


def import_cycles(root: Path = ROOT) -> list[list[str]]:
    """Groups of modules that import each other (directly or round a loop) at load time."""
    modules = module_names(root)
    graph = {
        name: _load_time_imports(ast.parse(path.read_text()).body, modules) - {name}
        for name, path in modules.items()
    }
    cycles: list[list[str]] = []
    for start in sorted(graph):
        if start in _reach(graph, start):
            loop = sorted(m for m in _reach(graph, start) if start in _reach(graph, m))
            if loop not in cycles:
                cycles.append(loop)
    return cycles


def _reach(graph: dict[str, set[str]], start: str) -> set[str]:
    """Every module ``start`` loads, directly or through others (bounded: each visited once)."""
    seen: set[str] = set()
    todo = list(graph[start])
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo.extend(graph[name])
    return seen


def test_no_module_imports_itself_round_a_loop() -> None:
    assert import_cycles() == []


def test_an_import_loop_is_reported(tmp_path: Path) -> None:
    (tmp_path / "cloud" / "ledger").mkdir(parents=True)
    (tmp_path / "cloud" / "__init__.py").write_text("")
    (tmp_path / "cloud" / "ledger" / "__init__.py").write_text("")
    (tmp_path / "cloud" / "ledger" / "chain.py").write_text("from cloud.ledger.store import write_group\n")
    (tmp_path / "cloud" / "ledger" / "store.py").write_text(
        "from typing import TYPE_CHECKING\nfrom cloud.ledger import chain\n"
        "if TYPE_CHECKING:\n    from cloud import ledger\n"
    )
    for package in PACKAGES:
        (tmp_path / package).mkdir(exist_ok=True)
    assert import_cycles(tmp_path) == [["cloud.ledger.chain", "cloud.ledger.store"]]


# -- module size ----------------------------------------------------------------------------
MAX_LINES = 400


def long_modules_without_a_reason(root: Path = ROOT) -> list[str]:
    """Modules over MAX_LINES whose docstring does not say why they stay whole."""
    out = []
    for name, path in sorted(module_names(root).items()):
        text = path.read_text()
        lines = text.count("\n")
        if lines > MAX_LINES and "whole" not in (ast.get_docstring(ast.parse(text)) or ""):
            out.append(f"{name} ({lines} lines)")
    return out


def test_a_module_over_400_lines_says_why_it_stays_whole() -> None:
    assert long_modules_without_a_reason() == []


def test_a_long_module_without_a_reason_is_reported(tmp_path: Path) -> None:
    for package in PACKAGES:
        (tmp_path / package).mkdir()
    (tmp_path / "gateway" / "big.py").write_text('"""Big."""\n' + "x = 1\n" * MAX_LINES)
    (tmp_path / "gateway" / "kept.py").write_text('"""One concept that reads best whole."""\n' + "x = 1\n" * MAX_LINES)
    assert long_modules_without_a_reason(tmp_path) == [f"gateway.big ({MAX_LINES + 1} lines)"]
