"""A scenario's fault proxies: one ``edgetally proxy`` process per proxied link."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from edgetally.brokers import BrokerProcess, free_port
from edgetally.processes import Component
from edgetally.proxy.control import ProxyControl
from edgetally.scenarios.model import Action


@dataclass
class Proxy:
    """One ``edgetally proxy`` process on a link: fixed listen and control ports."""

    link: str
    component: Component
    listen_port: int
    control_port: int
    tls: bool = False  # the broker behind it speaks TLS: the proxy forwards the encrypted bytes

    @property
    def url(self) -> str:
        return f"{'mqtts' if self.tls else 'mqtt'}://127.0.0.1:{self.listen_port}"


def make_proxy(name: str, link: str, target: BrokerProcess, workdir: Path) -> Proxy:
    target_port = target.port
    listen, control = free_port(), free_port()
    component = Component(
        name,
        [
            "proxy",
            "--listen", f"127.0.0.1:{listen}",
            "--target", f"127.0.0.1:{target_port}",
            "--control", str(control),
            "--name", name,
        ],
        workdir,
    )
    return Proxy(link, component, listen, control, tls=target.tls is not None)


def command(proxy: Proxy, action: Action) -> None:
    """Send the link action to the proxy's control port."""
    control = ProxyControl(proxy.control_port)
    if action.verb == "cut":
        control.cut()
    elif action.verb == "blackhole":
        control.blackhole()
    elif action.verb == "restore":
        control.pass_()
    elif action.verb == "latency":
        control.latency(action.ms, action.jitter_ms)
    elif action.verb == "bandwidth":
        control.bandwidth(action.bps)
    elif action.verb == "drop":
        control.drop_for(action.duration)
    else:
        raise ValueError(f"unknown link action {action.verb!r}")
