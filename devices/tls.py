"""TLS for the lean device connection, over memory BIOs.

Why not ``loop.create_connection(ssl=...)``: asyncio's SSL transport gives every connection a
256 KiB receive buffer (``asyncio.sslproto.SSLProtocol.max_size``), measured here at 296 KiB of
memory per connection, 3 GiB for a 10,000-device fleet. An :class:`ssl.SSLObject` between two
:class:`ssl.MemoryBIO` inside the device's own protocol costs what OpenSSL itself holds
(measured 41 KiB per TLS 1.3 connection; benchmarks/fleet.py reports it). The plain TCP
transport carries the ciphertext; :class:`TlsLayer` turns it into the MQTT bytes and back.
"""

from __future__ import annotations

import ssl

READ_CHUNK = 16 * 1024  # one TLS record at most


class TlsLayer:
    """One connection's TLS client: feed it what arrives, take what must be sent.

    Errors (a broker certificate that does not verify, an alert because ours was refused) are
    :class:`ssl.SSLError` from :meth:`feed` or :meth:`start`; the connection fails with them.
    """

    __slots__ = ("_in", "_obj", "_out", "ready")

    def __init__(self, context: ssl.SSLContext, server_hostname: str) -> None:
        self._in = ssl.MemoryBIO()
        self._out = ssl.MemoryBIO()
        self._obj = context.wrap_bio(self._in, self._out, server_hostname=server_hostname)
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
