"""A command group whose sub-commands are imported only when they run.

Each tier's CLI (``gateway.cli``, ``cloud.cli``, ...) pulls in its tier on import: SQLAlchemy,
the rule grammar, the fleet. Importing all of them to print ``--help`` or to run one
``gateway buffer stats`` cost ~0.9 s a call. :class:`LazyGroup` knows each sub-command by
name, the module that holds it and a one-line help, and imports that module only when the
command is resolved to run, or asked for its own help. The root ``--help`` lists the one-line
helps without importing anything; ``tests/edgetally/test_cli.py`` checks they match the
tiers' own.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from difflib import get_close_matches
from typing import Any, ClassVar

import typer
from typer import _click  # typer 0.29 vendors click; its own classes are these
from typer.core import TyperGroup


@dataclass(frozen=True, slots=True)
class Lazy:
    """A sub-command held at ``module:attr`` (a ``typer.Typer`` or a command function)."""

    module: str
    attr: str
    help: str

    def load(self, name: str) -> _click.Command:
        target: Any = getattr(importlib.import_module(self.module), self.attr)
        if isinstance(target, typer.Typer):
            command: _click.Command = typer.main.get_group(target)
        elif callable(target):
            single = typer.Typer(add_completion=False)  # completion is the root's
            single.command(name)(target)
            command = typer.main.get_command(single)
        else:  # pragma: no cover - a wrong table entry, caught by the CLI tests
            raise TypeError(f"{self.module}:{self.attr} is neither a Typer nor a command function")
        command.name = name
        return command


class LazyGroup(TyperGroup):
    """A ``TyperGroup`` that also offers the commands in :attr:`lazy`, imported on first use."""

    lazy: ClassVar[dict[str, Lazy]] = {}

    def __init__(self, **attrs: Any) -> None:
        super().__init__(**attrs)
        self._listing = False  # while the group's own help is drawn: lazy entries stay stubs

    def list_commands(self, ctx: _click.Context) -> list[str]:
        return [*self.commands, *(name for name in self.lazy if name not in self.commands)]

    def get_command(self, ctx: _click.Context, cmd_name: str) -> _click.Command | None:
        command = self.commands.get(cmd_name)
        if command is not None:
            return command
        entry = self.lazy.get(cmd_name)
        if entry is None:
            return None
        if self._listing:
            return TyperGroup(name=cmd_name, help=entry.help)
        command = entry.load(cmd_name)
        self.commands[cmd_name] = command
        return command

    def format_help(self, ctx: _click.Context, formatter: _click.HelpFormatter) -> None:
        self._listing = True
        try:
            super().format_help(ctx, formatter)
        finally:
            self._listing = False

    def resolve_command(
        self, ctx: _click.Context, args: list[str]
    ) -> tuple[str | None, _click.Command | None, list[str]]:
        try:
            return self._click_resolve_command(ctx, args)
        except _click.exceptions.UsageError as exc:
            matches = get_close_matches(args[0], self.list_commands(ctx)) if args else []
            if matches:
                exc.message = exc.message.rstrip(".") + ". Did you mean " + ", ".join(map(repr, matches)) + "?"
            raise


def lazy_group(entries: dict[str, Lazy]) -> type[LazyGroup]:
    """A :class:`LazyGroup` subclass offering ``entries`` (``typer.Typer(cls=...)`` takes a class)."""
    return type("LazyRoot", (LazyGroup,), {"lazy": dict(entries)})

