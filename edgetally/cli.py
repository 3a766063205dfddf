"""The root ``edgetally`` command: composes each tier's commands and sets up logging."""

from __future__ import annotations

import logging
import sys

import typer

from cloud.cli import app as cloud_app
from devices.cli import app as devices_app
from gateway.cli import app as gateway_app

app = typer.Typer(
    name="edgetally",
    help="Edge-to-cloud election results over MQTT, and the bench that proves it correct.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.add_typer(devices_app, name="devices")
app.add_typer(gateway_app, name="gateway")
app.add_typer(cloud_app, name="cloud")


@app.callback()
def root(
    log_level: str = typer.Option("INFO", "--log-level", envvar="EDGETALLY_LOG_LEVEL", help="DEBUG, INFO, WARNING, ERROR"),
) -> None:
    """Logging goes to stderr, one line per event; only this CLI installs handlers."""
    level = getattr(logging, log_level.upper(), None)
    if not isinstance(level, int):
        raise typer.BadParameter(f"unknown log level {log_level!r}", param_hint="--log-level")
    logging.basicConfig(
        level=level,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )


def main() -> None:
    app()
