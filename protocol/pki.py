"""The wire's X.509 PKI: one certificate authority, a server certificate per broker, a client
certificate per gateway, cloud worker and device.

Keys are ECDSA P-256 (fast to make for 10,000 devices, and what every TLS stack speaks);
private keys are written 0600 and atomically (:func:`protocol.keys.write_secret`). A client
certificate's common name is the client's MQTT identity, ``{role}-{id}`` (``gateway-gw1``,
``device-harbor-p02-a``): a broker configured with ``use_identity_as_username`` takes it as the
username its ACL is written for, so a device holds one credential that never leaves it, like
its Ed25519 signing key, and there is no password file to distribute. A server certificate
names ``localhost`` and ``127.0.0.1`` and any hosts given.

Layout of a PKI directory::

    ca.crt  ca.key                      the authority (ca.key signs; keep it offline)
    brokers/{name}.crt  brokers/{name}.key
    clients/{role}-{id}.crt  clients/{role}-{id}.key

Nothing is overwritten unless asked (``force``): replacing a CA invalidates every certificate.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from protocol._errors import KeyFileError
from protocol.election import ID_PATTERN
from protocol.keys import write_secret
from protocol.tls import Role, ca_cert_path, cert_paths, identity

DEFAULT_DAYS = 400  # a certificate outlives an election cycle; the CA ten times that
CA_DAYS = 4000
_LOCAL_HOSTS = ("localhost", "127.0.0.1")


@dataclass(frozen=True, slots=True)
class Issued:
    """A certificate and its private key on disk."""

    name: str  # common name
    cert: Path
    key: Path


@dataclass(frozen=True, slots=True)
class Authority:
    """The CA of a PKI directory, loaded: it signs new certificates."""

    directory: Path
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    @property
    def cert_path(self) -> Path:
        return ca_cert_path(self.directory)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _check_id(ident: str) -> None:
    if not ID_PATTERN.fullmatch(ident):
        raise KeyFileError(f"{ident!r} is not a valid name (letters, digits, '-', '_', '.'; at most 64)")


def _refuse_existing(paths: tuple[Path, ...], force: bool) -> None:
    existing = [p for p in paths if p.exists()]
    if existing and not force:
        raise KeyFileError(f"{existing[0]} already exists; pass --force to replace it")


def _write_pair(cert: x509.Certificate, key: ec.EllipticCurvePrivateKey, cert_path: Path, key_path: Path) -> None:
    try:
        cert_path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise KeyFileError(f"cannot create {cert_path.parent}: {exc.strerror}") from exc
    pem_key = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    write_secret(key_path, pem_key, "private key")
    write_secret(cert_path, cert.public_bytes(serialization.Encoding.PEM), "certificate", mode=0o644)


def create_authority(directory: Path, *, name: str = "EdgeTally CA", force: bool = False) -> Authority:
    """A new CA in ``directory`` (refused if one is there, unless ``force``)."""
    cert_path, key_path = ca_cert_path(directory), directory / "ca.key"
    _refuse_existing((key_path, cert_path), force)
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)  # private keys live here
    except OSError as exc:
        raise KeyFileError(f"cannot create {directory}: {exc.strerror}") from exc
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    _write_pair(cert, key, cert_path, key_path)
    return Authority(directory, cert, key)


def load_authority(directory: Path) -> Authority:
    """The CA in ``directory`` (its certificate and signing key)."""
    cert_path, key_path = ca_cert_path(directory), directory / "ca.key"
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except FileNotFoundError as exc:
        raise KeyFileError(f"no CA in {directory}: {exc.filename} is missing (run `edgetally pki init`)") from exc
    except (OSError, ValueError) as exc:
        raise KeyFileError(f"cannot read the CA in {directory}: {exc}") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise KeyFileError(f"{key_path} is not an EC private key")
    return Authority(directory, cert, key)


def issue(
    ca: Authority,
    role: Role,
    ident: str,
    *,
    hosts: tuple[str, ...] = (),
    days: int = DEFAULT_DAYS,
    force: bool = False,
    into: Path | None = None,
) -> Issued:
    """A certificate for ``role`` ``ident`` signed by ``ca``, written into the CA's directory
    (or the layout of :func:`cert_paths` under ``into``: a device's keys directory).

    A broker's is a server certificate for ``localhost``, ``127.0.0.1`` and ``hosts``; every
    other role's a client certificate whose common name is :func:`identity`.
    """
    _check_id(ident)
    if days < 1:
        raise KeyFileError(f"a certificate must be valid for at least a day, not {days}")
    cert_path, key_path = cert_paths(into or ca.directory, role, ident)
    _refuse_existing((key_path, cert_path), force)
    key = ec.generate_private_key(ec.SECP256R1())
    name = ident if role is Role.BROKER else identity(role, ident)
    now = _now()
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()), critical=False
        )
    )
    if role is Role.BROKER:
        names: list[x509.GeneralName] = []
        for host in dict.fromkeys((*_LOCAL_HOSTS, *hosts)):
            try:
                names.append(x509.IPAddress(ipaddress.ip_address(host)))
            except ValueError:
                names.append(x509.DNSName(host))
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        usage = ExtendedKeyUsageOID.SERVER_AUTH
    else:
        usage = ExtendedKeyUsageOID.CLIENT_AUTH
    builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    cert = builder.sign(ca.key, hashes.SHA256())
    _write_pair(cert, key, cert_path, key_path)
    return Issued(name, cert_path, key_path)


def verify_issued(ca: Authority, cert_path: Path) -> x509.Certificate:
    """The certificate at ``cert_path``, checked to be signed by ``ca`` and valid now."""
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    try:
        cert.verify_directly_issued_by(ca.cert)
    except (ValueError, TypeError, InvalidSignature) as exc:
        raise KeyFileError(f"{cert_path} was not issued by the CA in {ca.directory}: {exc}") from exc
    now = _now()
    if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
        raise KeyFileError(f"{cert_path} is not valid now (valid {cert.not_valid_before_utc} to {cert.not_valid_after_utc})")
    return cert


def provision_devices(ca: Authority, devices: list[str], into: Path, *, overwrite: bool = False) -> list[Issued]:
    """A client certificate for each device in ``into`` (beside its Ed25519 key), and the CA's
    certificate as ``into/ca.crt`` (what a device trusts). Existing certificates are kept,
    as existing signing keys are, unless ``overwrite``."""
    issued = []
    for device in devices:
        cert_path, key_path = cert_paths(into, Role.DEVICE, device)
        if cert_path.exists() and key_path.exists() and not overwrite:
            issued.append(Issued(identity(Role.DEVICE, device), cert_path, key_path))
        else:
            issued.append(issue(ca, Role.DEVICE, device, force=True, into=into))
    write_secret(ca_cert_path(into), ca.cert.public_bytes(serialization.Encoding.PEM), "certificate", mode=0o644)
    return issued
