"""TLS for the lean device connection, over memory BIOs.

Why not ``loop.create_connection(ssl=...)``: asyncio's SSL transport gives every connection a
256 KiB receive buffer (``asyncio.sslproto.SSLProtocol.max_size``), measured here at 296 KiB of
memory per connection, 3 GiB for a 10,000-device fleet. An :class:`ssl.SSLObject` between two
:class:`ssl.MemoryBIO` inside the device's own protocol costs what OpenSSL itself holds
(measured 41 KiB per TLS 1.3 connection; benchmarks/fleet.py reports it). The plain TCP
transport carries the ciphertext; :class:`TlsLayer` turns it into the MQTT bytes and back.

Why one context for the whole fleet (:class:`FleetTls`): an ``ssl.SSLContext`` costs ~25 KiB
(its certificate store with the CA, cipher lists, the loaded chain), and each device has its own
certificate. OpenSSL copies a context's certificate and key into each connection when the
connection is made (``SSL_new`` duplicates the context's ``CERT``), so loading device A's
chain and wrapping, then device B's and wrapping, gives each connection its own identity over
one context; the lock makes load-and-wrap one step. Measured on 91 connections: 74.6 KiB per
connection with a context per device, 42.9 KiB with one shared.
"""

from __future__ import annotations

import functools
import ssl
import threading
from dataclasses import dataclass
from pathlib import Path

from protocol.tls import ClientTls, server_verifying_context

READ_CHUNK = 16 * 1024  # one TLS record at most


class FleetTls:
    """The one ``ssl`` context of a fleet's connections (the CA, verification, TLS >= 1.2);
    each connection presents its own device's certificate. Constructing it does no I/O."""

    def __init__(self, ca: Path) -> None:
        self.ca = ca
        self._context: ssl.SSLContext | None = None
        self._lock = threading.Lock()

    def wrap(self, files: ClientTls, incoming: ssl.MemoryBIO, outgoing: ssl.MemoryBIO, server_hostname: str) -> ssl.SSLObject:
        """A client TLS object over the two BIOs that presents ``files``' certificate.
        :class:`ssl.SSLError` naming the file when the certificate cannot be loaded."""
        with self._lock:
            if self._context is None:
                self._context = server_verifying_context(self.ca)
            try:
                self._context.load_cert_chain(str(files.cert), str(files.key))
            except (OSError, ssl.SSLError) as exc:
                raise ssl.SSLError(f"cannot load the TLS certificate of {files.name} ({files.cert}): {exc}") from exc
            return self._context.wrap_bio(incoming, outgoing, server_hostname=server_hostname)


@functools.cache
def fleet_tls(ca: Path) -> FleetTls:
    """The shared context of every device that trusts ``ca`` (one per process)."""
    return FleetTls(ca)


@dataclass(frozen=True, slots=True)
class DeviceTls:
    """What one device's connection speaks TLS with: the fleet's context, its own certificate."""

    fleet: FleetTls
    files: ClientTls


class TlsLayer:
    """One connection's TLS client: feed it what arrives, take what must be sent.

    Errors (a broker certificate that does not verify, an alert because ours was refused) are
    :class:`ssl.SSLError` from :meth:`feed` or :meth:`start`; the connection fails with them.
    """

    __slots__ = ("_in", "_obj", "_out", "ready")

    def __init__(self, tls: DeviceTls, server_hostname: str) -> None:
        self._in = ssl.MemoryBIO()
        self._out = ssl.MemoryBIO()
        self._obj = tls.fleet.wrap(tls.files, self._in, self._out, server_hostname)
        self.ready = False  # handshake complete: application data may flow

    def start(self) -> bytes:
        """The client hello, to send first."""
        self._step()
        return self._out.read()

    def _step(self) -> bool:
        try:
            self._obj.do_handshake()
        except ssl.SSLWantReadError:
            return False
        self.ready = True
        return True

    def feed(self, data: bytes) -> bytes:
        """Ciphertext in; the plaintext it completes out (b"" during the handshake)."""
        self._in.write(data)
        if not self.ready and not self._step():
            return b""
        chunks: list[bytes] = []
        while True:
            try:
                chunk = self._obj.read(READ_CHUNK)
            except (ssl.SSLWantReadError, ssl.SSLZeroReturnError):
                break
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks)

    def wrap(self, plain: bytes) -> None:
        """Encrypt ``plain``; :meth:`outgoing` then holds the records to send."""
        self._obj.write(plain)

    def outgoing(self) -> bytes:
        """Everything waiting to be sent (handshake messages, records)."""
        return self._out.read()
