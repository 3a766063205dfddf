"""TLS for MQTT clients: where a client's certificate lives, and the ``ssl`` context it connects with.

Light on purpose (``ssl`` only, no ``cryptography``): every client imports it. The certificates
are made by :mod:`protocol.pki`, which lays them out as :func:`cert_paths` says::

    ca.crt                                  the authority every client and broker trusts
    brokers/{name}.crt  brokers/{name}.key  a broker's server certificate
    clients/{role}-{id}.crt  .key           a client's certificate, common name {role}-{id}

A gateway's and a cloud worker's directory is the one ``edgetally pki init`` made; a device's is
its keys directory (``devices provision --pki`` puts ``ca.crt`` and ``clients/`` there).

A client context verifies the broker's certificate against the CA and its host name (the
certificate names ``127.0.0.1`` and ``localhost``), offers TLS 1.2 or newer only, and presents
the client's certificate: the broker takes its common name as the MQTT username its ACL is
written for.
"""

from __future__ import annotations

import functools
import ssl
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from protocol._errors import KeyFileError


class Role(StrEnum):
    BROKER = "broker"
    GATEWAY = "gateway"
    CLOUD = "cloud"
    DEVICE = "device"
    MONITOR = "monitor"  # reads every EdgeTally topic, writes none (a dashboard, an auditor's tap)


def identity(role: Role, ident: str) -> str:
    """The MQTT identity (username, client id, certificate common name) of a client."""
    return f"{role.value}-{ident}"


def ca_cert_path(directory: Path) -> Path:
    return directory / "ca.crt"


def cert_paths(directory: Path, role: Role, ident: str) -> tuple[Path, Path]:
    """Where the certificate and key of ``role`` ``ident`` live in ``directory``."""
    if role is Role.BROKER:
        base = directory / "brokers" / ident
    else:
        base = directory / "clients" / identity(role, ident)
    return base.with_suffix(".crt"), base.with_suffix(".key")


@dataclass(frozen=True, slots=True)
class ClientTls:
    """The files a TLS client connects with: the CA it trusts, its certificate and key."""

    ca: Path
    cert: Path
    key: Path

    @property
    def name(self) -> str:
        """The identity the certificate carries (its file name, as :func:`cert_paths` lays it out)."""
        return self.cert.stem


def client_tls(directory: Path, role: Role, ident: str) -> ClientTls:
    """The TLS files of client ``role`` ``ident`` in ``directory`` (paths only: no I/O)."""
    cert, key = cert_paths(directory, role, ident)
    return ClientTls(ca_cert_path(directory), cert, key)


def server_verifying_context(ca: Path) -> ssl.SSLContext:
    """A client context that verifies the broker against ``ca`` and its host name, TLS >= 1.2,
    with no certificate of its own yet. ``OSError`` or ``ssl.SSLError`` if ``ca`` cannot be read."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ca))
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


@functools.cache
def client_context(files: ClientTls) -> ssl.SSLContext:
    """An ``ssl`` context that verifies the broker against ``files.ca`` and presents the client's
    certificate; :class:`KeyFileError` naming the file that is missing or unreadable.

    Loaded once per set of files (cached): a client calls it at start to fail fast, and each
    connection after that gets the same context."""
    for path in (files.ca, files.cert, files.key):
        if not path.is_file():
            hint = "devices provision --pki" if files.name.startswith("device-") else "edgetally pki issue"
            raise KeyFileError(f"{path} is missing: {files.name} has no TLS certificate there ({hint})")
    try:
        context = server_verifying_context(files.ca)
        context.load_cert_chain(str(files.cert), str(files.key))
    except (OSError, ssl.SSLError) as exc:
        raise KeyFileError(f"cannot load the TLS files of {files.name} ({files.cert}): {exc}") from exc
    return context
