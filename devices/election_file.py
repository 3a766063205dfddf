"""Reading election definitions from YAML (or JSON) files, with errors that name the file and line.

The file is composed to YAML nodes first, which keep their line numbers, and checked there for
what the election model cannot point at: duplicate ids (unit, device, contest, choice within a
contest), a precinct without devices, a unit naming a contest the election does not define,
keys the format does not know (a typo such as ``device:`` must not pass silently) and a key
written twice in one mapping (YAML would silently keep the last). Then the model
(:meth:`protocol.Election.from_mapping`) checks the rest; its errors get the line of the first
id they name. Every error is one line: ``FILE:LINE: problem``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from devices._exceptions import ElectionFileError
from protocol import Election, ElectionModelError


class _Loader(yaml.SafeLoader):
    """Safe YAML without the 1.1 booleans: ``yes`` and ``no`` are choice ids, not true/false."""


_Loader.yaml_implicit_resolvers = {
    key: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:bool"]
    for key, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}

ELECTION_KEYS = ("id", "name", "polls_close", "contests", "units")
CONTEST_KEYS = ("id", "name", "kind", "choices")
CHOICE_KEYS = ("id", "name")
UNIT_KEYS = ("id", "name", "kind", "registered", "devices", "children")
CONTEST_REFERENCES = ("contests", "contest")  # keys a unit might use to name contests


@dataclass(frozen=True)
class ElectionSource:
    """An election read from a file, with the line (1-based) where each id is defined."""

    path: Path
    election: Election
    lines: dict[str, int] = field(default_factory=dict)

    def where(self, ident: str) -> str:
        """``FILE:LINE`` of ``ident`` if the file defines it, else ``FILE``."""
        line = self.lines.get(ident)
        return f"{self.path}:{line}" if line else str(self.path)


def _line(node: yaml.Node) -> int:
    return int(node.start_mark.line) + 1


class _Checker:
    """Walks the composed node tree; raises ElectionFileError at the first problem."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lines: dict[str, int] = {}  # first definition of every id (contest, unit, device)
        self.contests: dict[str, int] = {}
        self.units: dict[str, int] = {}
        self.devices: dict[str, tuple[int, str]] = {}
        self.references: list[tuple[str, str, int]] = []  # (unit, contest, line)

    def fail(self, node: yaml.Node, problem: str) -> ElectionFileError:
        return ElectionFileError(f"{self.path}:{_line(node)}: {problem}")

    def mapping(self, node: yaml.Node, allowed: tuple[str, ...], what: str) -> dict[str, yaml.Node]:
        if not isinstance(node, yaml.MappingNode):
            return {}  # the model reports the wrong shape
        ident = next(
            (v.value for k, v in node.value if k.value == "id" and isinstance(v, yaml.ScalarNode)),
            None,
        )
        if ident is not None and what != "election":
            what = f"{what} {ident!r}"
        out: dict[str, yaml.Node] = {}
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
            if not isinstance(key, str):
                raise self.fail(key_node, f"{what}: keys must be plain names")
            if key in out:
                raise self.fail(
                    key_node, f"{what}: key {key!r} written twice (first at line {_line(out[key])})"
                )
            if key not in allowed:
                raise self.fail(
                    key_node,
                    f"{what}: unknown key {key!r} (expected one of"
                    f" {', '.join(k for k in allowed if k not in CONTEST_REFERENCES)})",
                )
            out[key] = value_node
        return out

    @staticmethod
    def scalar(node: yaml.Node | None) -> str | None:
        return node.value if isinstance(node, yaml.ScalarNode) else None

    def check(self, root: yaml.Node) -> None:
        top = self.mapping(root, ELECTION_KEYS, "election")
        contests = top.get("contests")
        if isinstance(contests, yaml.SequenceNode):
            for item in contests.value:
                self.contest(item)
        units = top.get("units")
        if units is not None:
            self.unit(units)
        for unit, contest, line in self.references:
            if contest not in self.contests:
                raise ElectionFileError(
                    f"{self.path}:{line}: unit {unit!r} references unknown contest {contest!r}"
                    f" (the election defines {', '.join(self.contests) or 'none'})"
                )
        if self.references:
            unit, _, line = self.references[0]
            raise ElectionFileError(
                f"{self.path}:{line}: unit {unit!r}: per-unit contest lists are not supported"
                " (every precinct votes on every contest of the election)"
            )

    def contest(self, node: yaml.Node) -> None:
        fields = self.mapping(node, CONTEST_KEYS, "contest")
        contest_id = self.scalar(fields.get("id"))
        if contest_id is None:
            return
        id_node = fields["id"]
        if contest_id in self.contests:
            raise self.fail(
                id_node,
                f"contest id {contest_id!r} is defined twice (first at line {self.contests[contest_id]})",
            )
        self.contests[contest_id] = _line(id_node)
        self.lines.setdefault(contest_id, _line(id_node))
        choices = fields.get("choices")
        if not isinstance(choices, yaml.SequenceNode):
            return
        seen: dict[str, int] = {}
        for choice in choices.value:
            if isinstance(choice, yaml.MappingNode):
                choice_fields = self.mapping(choice, CHOICE_KEYS, f"contest {contest_id!r} choice")
                choice_node = choice_fields.get("id")
            else:
                choice_node = choice
            choice_id = self.scalar(choice_node)
            if choice_node is None or choice_id is None:
                continue
            if choice_id in seen:
                raise self.fail(
                    choice_node,
                    f"contest {contest_id!r} lists choice {choice_id!r} twice"
                    f" (first at line {seen[choice_id]})",
                )
            seen[choice_id] = _line(choice_node)

    def unit(self, node: yaml.Node) -> None:
        fields = self.mapping(node, UNIT_KEYS + CONTEST_REFERENCES, "unit")
        unit_id = self.scalar(fields.get("id"))
        if unit_id is None:
            return
        id_node = fields["id"]
        if unit_id in self.units:
            raise self.fail(
                id_node, f"unit id {unit_id!r} is used twice (first at line {self.units[unit_id]})"
            )
        self.units[unit_id] = _line(id_node)
        self.lines.setdefault(unit_id, _line(id_node))
        for key in CONTEST_REFERENCES:
            ref = fields.get(key)
            refs = ref.value if isinstance(ref, yaml.SequenceNode) else [ref] if ref else []
            for item in refs:
                name = self.scalar(item)
                if name is not None:
                    self.references.append((unit_id, name, _line(item)))
        children = fields.get("children")
        if isinstance(children, yaml.SequenceNode) and children.value:
            for child in children.value:
                self.unit(child)
            return
        devices = fields.get("devices")
        if not isinstance(devices, yaml.SequenceNode) or not devices.value:
            where = devices if devices is not None else id_node
            if "children" in fields and devices is None:
                problem = f"unit {unit_id!r} has an empty children list and no devices"
            else:
                problem = f"precinct {unit_id!r} has no devices (a precinct needs at least one)"
            raise self.fail(where, problem)
        for item in devices.value:
            device = self.scalar(item)
            if device is None:
                continue
            if device in self.devices:
                line, precinct = self.devices[device]
                raise self.fail(
                    item,
                    f"device {device!r} appears twice (first at line {line}, in precinct {precinct!r})",
                )
            self.devices[device] = (_line(item), unit_id)
            self.lines.setdefault(device, _line(item))


def _compose(path: Path) -> tuple[yaml.Node | None, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ElectionFileError(f"{path}: cannot read election file: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise ElectionFileError(f"{path}: not UTF-8 text: {exc.reason}") from exc
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        raise ElectionFileError(f"{where}: not valid YAML: {getattr(exc, 'problem', exc)}") from exc
    finally:
        loader.dispose()
    return node, data


_QUOTED = re.compile(r"'([^']+)'")


def read_election_file(path: Path) -> ElectionSource:
    """Read, check and build the election in ``path``; errors name the file and line."""
    node, data = _compose(path)
    checker = _Checker(path)
    if node is not None:
        checker.check(node)
    try:
        election = Election.from_mapping(data)
    except ElectionModelError as exc:
        message = str(exc)
        # the model names ids, not lines: point at the first id it names that the file defines
        line = next((checker.lines[m] for m in _QUOTED.findall(message) if m in checker.lines), None)
        where = f"{path}:{line}" if line else str(path)
        raise ElectionFileError(f"{where}: {message}") from exc
    return ElectionSource(path, election, checker.lines)


def load_election(path: Path) -> Election:
    return read_election_file(path).election


def sample_election_path() -> Path:
    """The shipped sample election, in a checkout or an installed wheel."""
    here = Path(__file__).resolve().parent
    for candidate in (
        here.parent / "elections" / "sample.yaml",
        here.parent / "edgetally" / "elections" / "sample.yaml",
    ):
        if candidate.exists():
            return candidate
    raise ElectionFileError("the sample election is not installed; pass --election FILE")
