"""What a fleet of many connections needs of the OS: open files, and source addresses for ports.

Every device holds one socket, so a fleet of N devices needs N file descriptors and more
(``RLIMIT_NOFILE``; the default soft limit is often 1,024). :func:`raise_nofile` raises this
process's limit (children inherit it: a broker started afterwards gets it too).

One (source address, broker address and port) pair has only the ephemeral port range
(``net.ipv4.ip_local_port_range``, 28,232 ports by default) for its connections, so past that
the devices spread over several source addresses of 127.0.0.0/8 (every one of them is this
host's loopback): :func:`source_addresses` parses them, :func:`sources_for` picks enough.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import math
import resource
import socket
from pathlib import Path

from devices._exceptions import FleetError

log = logging.getLogger(__name__)

NR_OPEN = Path("/proc/sys/fs/nr_open")  # the kernel's ceiling for RLIMIT_NOFILE
PER_SOURCE = 20_000  # connections per source address: the port range (28,232) with a margin
FIRST_SOURCE = ipaddress.IPv4Address("127.0.0.2")


def _kernel_ceiling() -> int:
    try:
        return int(NR_OPEN.read_text())
    except (OSError, ValueError):
        return 1_048_576


def raise_nofile(wanted: int) -> int:
    """Raise this process's open-files limit to at least ``wanted`` if it can; return the new
    soft limit (which may stay below ``wanted``: the caller decides whether that is enough).

    The soft limit goes up to the hard limit; the hard limit itself only as root (or with
    CAP_SYS_RESOURCE), up to the kernel's ``fs.nr_open``. A limit already high enough is left.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= wanted:
        return int(soft)
    if hard != resource.RLIM_INFINITY and hard < wanted:
        target = min(wanted, _kernel_ceiling())
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, target))
            log.info("open files limit raised to %d (soft and hard)", target)
            return target
        except (ValueError, OSError):  # not privileged: the hard limit is as far as we go
            log.warning("cannot raise the open files hard limit %d to %d (not root?)", hard, wanted)
        wanted = int(hard)
    resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    log.info("open files limit raised to %d", wanted)
    return wanted


def source_addresses(text: str) -> tuple[str, ...]:
    """``--source-addresses``: a comma-separated list (``127.0.0.2,127.0.0.3``) or a count
    (``4``: 127.0.0.2 to 127.0.0.5). Every address must be a loopback IPv4 address."""
    text = text.strip()
    if text.isdigit():
        count = int(text)
        if not 1 <= count <= 250:
            raise FleetError(f"--source-addresses {text}: give 1 to 250 addresses")
        return tuple(str(FIRST_SOURCE + i) for i in range(count))
    found: list[str] = []
    for part in (p.strip() for p in text.split(",")):
        try:
            address = ipaddress.IPv4Address(part)
        except ValueError as exc:
            raise FleetError(f"--source-addresses: {part!r} is not an IPv4 address") from exc
        if not address.is_loopback:
            raise FleetError(f"--source-addresses: {part} is not in 127.0.0.0/8 (this host's loopback)")
        found.append(str(address))
    if not found:
        raise FleetError("--source-addresses: no address given")
    return tuple(found)


def sources_for(devices: int, per_source: int = PER_SOURCE) -> tuple[str, ...]:
    """Enough source addresses for ``devices`` connections to one broker port; none (the
    kernel picks, 127.0.0.1) while one address's port range is enough."""
    if devices <= per_source:
        return ()
    return source_addresses(str(math.ceil(devices / per_source)))


async def bound_socket(loop: asyncio.AbstractEventLoop, source: str, host: str, port: int) -> socket.socket:
    """A TCP socket connected from ``source`` (any free port of it) to ``host:port``.

    IP_BIND_ADDRESS_NO_PORT leaves the port to connect(), which may then reuse a port that
    another connection from this address holds to another destination: bind() alone would take
    a port exclusively, and from half the range first."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_IP, _IP_BIND_ADDRESS_NO_PORT, 1)
        sock.bind((source, 0))
        await loop.sock_connect(sock, (host, port))
    except BaseException:
        sock.close()
        raise
    return sock


_IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)  # Linux 4.2+
