"""The locked-down wire of a deployment on one machine: its CA, certificates and broker ACLs.

The demo, the scenario world and the tests' stacks run every broker with TLS, client
certificates and an ACL generated from the registry (:mod:`edgetally.acl`); this module makes
what they need, once, in a PKI directory beside the keys::

    pki/ca.crt ca.key                   the deployment's CA (made on first use)
    pki/brokers/{edge,cloud}.crt .key   the brokers' server certificates
    pki/clients/gateway-{id}.crt .key   each gateway's and cloud worker's client certificate
    pki/acl/{edge,cloud}.acl            the brokers' ACLs
    keys/clients/device-{id}.crt .key   each device's client certificate, beside its signing key
    keys/ca.crt                         what the devices trust

:class:`Wire` holds paths only (constructing it does no I/O); :meth:`Wire.prepare` writes what
is missing and always rewrites the ACLs (the registry may have gained devices). Existing keys
are kept, like :func:`protocol.provision` keeps signing keys.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from edgetally.acl import BrokerKind, acl_text, broker_rules
from edgetally.brokers import BrokerTls
from protocol import Registry
from protocol.keys import write_secret
from protocol.tls import ClientTls, Role, ca_cert_path, cert_paths, client_tls, identity

if TYPE_CHECKING:
    from edgetally.nats import NatsTls


@dataclass(frozen=True)
class Wire:
    pki: Path
    keys: Path
    gateways: tuple[str, ...] = ("gw1",)
    clouds: tuple[str, ...] = ("cloud1",)
    monitors: tuple[str, ...] = ()  # read-only identities (edgetally/acl.py)

    def broker(self, kind: BrokerKind) -> BrokerTls:
        cert, key = cert_paths(self.pki, Role.BROKER, kind.value)
        return BrokerTls(ca_cert_path(self.pki), cert, key, self.pki / "acl" / f"{kind.value}.acl")

    def nats(self, registry: Registry) -> NatsTls:
        """A NATS cloud cluster's TLS and users: the cloud broker's certificate, the cloud ACL's
        rules as permissions (after :meth:`prepare`)."""
        from edgetally.nats import NatsTls

        cert, key = cert_paths(self.pki, Role.BROKER, BrokerKind.CLOUD.value)
        users = broker_rules(
            registry, BrokerKind.CLOUD, gateways=self.gateways, clouds=self.clouds, monitors=self.monitors
        )
        workers = frozenset(identity(Role.CLOUD, c) for c in self.clouds)
        return NatsTls(ca_cert_path(self.pki), cert, key, users, workers)

    def client(self, role: Role, ident: str) -> ClientTls:
        """A gateway's or cloud worker's TLS files (after :meth:`prepare`)."""
        return client_tls(self.pki, role, ident)

    def prepare(self, registry: Registry | Sequence[tuple[Registry, Path]]) -> None:
        """The CA, broker and client certificates that are missing, each device's certificate,
        and the ACLs of both brokers for ``registry`` (or several elections' registries, each
        with the keys directory its devices' certificates go to)."""
        from protocol.pki import create_authority, issue, load_authority, provision_devices

        ca = load_authority(self.pki) if ca_cert_path(self.pki).exists() else create_authority(self.pki)
        gateways = self.gateways
        wanted = [(Role.BROKER, kind.value) for kind in BrokerKind]
        wanted += [(Role.GATEWAY, g) for g in gateways] + [(Role.CLOUD, c) for c in self.clouds]
        wanted += [(Role.MONITOR, m) for m in self.monitors]
        for role, ident in wanted:
            if not all(p.exists() for p in cert_paths(self.pki, role, ident)):
                issue(ca, role, ident, force=True)
        elections = [(registry, self.keys)] if isinstance(registry, Registry) else list(registry)
        for each, keys in elections:
            provision_devices(ca, sorted(each.devices), keys)
        for kind in BrokerKind:
            acl = self.broker(kind).acl
            acl.parent.mkdir(mode=0o700, exist_ok=True)
            registries = [each for each, _ in elections]
            text = acl_text(registries, kind, gateways=gateways, clouds=self.clouds, monitors=self.monitors)
            write_secret(acl, text.encode(), "ACL", mode=0o600)
