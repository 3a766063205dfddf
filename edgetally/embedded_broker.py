"""The fallback broker: amqtt in its own process, for machines without Mosquitto.

Run as ``python -m edgetally.embedded_broker --port N``. Stops cleanly on SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import warnings
from typing import Protocol


class _Broker(Protocol):
    """What this module uses of ``amqtt.broker.Broker`` (amqtt ships no type information)."""

    async def start(self) -> None: ...
    async def shutdown(self) -> None: ...


async def serve(port: int) -> None:
    try:
        from amqtt.broker import Broker
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise SystemExit(
            "no mosquitto binary and no amqtt: install mosquitto, or pip install 'edgetally[embedded-broker]'"
        ) from exc
    config = {
        "listeners": {"default": {"type": "tcp", "bind": f"127.0.0.1:{port}", "max_connections": 20000}},
        "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
    }
    broker: _Broker = Broker(config)
    await broker.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await broker.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    warnings.simplefilter("ignore", DeprecationWarning)
    asyncio.run(serve(args.port))


if __name__ == "__main__":
    main()
