"""Reading election definitions from YAML (or JSON) files, with errors that name the file."""

from __future__ import annotations

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


def _read(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ElectionFileError(f"{path}: cannot read election file: {exc.strerror}") from exc
    try:
        return yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        raise ElectionFileError(f"{where}: not valid YAML: {getattr(exc, 'problem', exc)}") from exc


def load_election(path: Path) -> Election:
    data = _read(path)
    try:
        return Election.from_mapping(data)
    except ElectionModelError as exc:
        raise ElectionFileError(f"{path}: {exc}") from exc


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
