"""Certificates and keys for the local Kubernetes cluster.

One CA signs every serving and client certificate; identities follow Kubernetes' conventions
(the client certificate's CN is the user name, its O entries the groups). Keys are ECDSA P-256:
Kubernetes accepts them everywhere, and generating one takes microseconds, not the tens of
milliseconds an RSA key costs, which keeps the cluster's start-up fast.
"""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

# Long enough for a development cluster left running, short enough to be obviously throwaway.
VALIDITY = datetime.timedelta(days=365)
# Covers clocks that differ slightly between the host and whatever later checks the certificates.
BACKDATE = datetime.timedelta(minutes=5)

# The in-cluster names of the API server, as pods resolve them through the `kubernetes` Service.
KUBERNETES_SERVICE_NAMES = (
    "kubernetes",
    "kubernetes.default",
    "kubernetes.default.svc",
    "kubernetes.default.svc.cluster.local",
)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True)
class Identity:
    """Who a client certificate authenticates as: a user name and its groups."""

    user: str
    groups: tuple[str, ...] = ()


ADMIN = Identity("matchops-admin", ("system:masters",))
CONTROLLER_MANAGER = Identity("system:kube-controller-manager")
SCHEDULER = Identity("system:kube-scheduler")
KUBE_PROXY = Identity("system:kube-proxy")
# The API server's identity towards kubelets (logs, exec, port-forward).
APISERVER_KUBELET_CLIENT = Identity("kube-apiserver-kubelet-client", ("system:masters",))
# The API server's identity towards extension API servers, signed by the front-proxy CA.
FRONT_PROXY_CLIENT = Identity("front-proxy-client")


def kubelet_identity(node_name: str) -> Identity:
    """The identity the Node authorizer and NodeRestriction admission expect of a kubelet."""
    return Identity(f"system:node:{node_name}", ("system:nodes",))


@dataclass(frozen=True)
class SubjectAltNames:
    """The DNS names and IP addresses a serving certificate is valid for."""

    dns_names: tuple[str, ...]
    ip_addresses: tuple[IPAddress, ...]


def kubernetes_service_ip(service_cidr: str) -> IPAddress:
    """The cluster IP of the `kubernetes` Service: the first address of the service range."""
    network = ipaddress.ip_network(service_cidr, strict=True)
    return network.network_address + 1


def apiserver_sans(
    addresses: Iterable[str], service_cidr: str, extra_names: Iterable[str] = ()
) -> SubjectAltNames:
    """Names for the API server's serving certificate.

    Valid on loopback, on every configured bind or advertise address (a wildcard bind address
    adds nothing: clients never dial it), on the `kubernetes` Service's IP and in-cluster names,
    and on any extra name or address given.
    """
    dns: list[str] = ["localhost", *KUBERNETES_SERVICE_NAMES]
    ips: list[IPAddress] = [ipaddress.IPv4Address("127.0.0.1"), ipaddress.IPv6Address("::1")]
    ips.append(kubernetes_service_ip(service_cidr))
    for entry in (*addresses, *extra_names):
        try:
            ip = ipaddress.ip_address(entry)
        except ValueError:
            dns.append(entry)
            continue
        if not ip.is_unspecified:
            ips.append(ip)
    return SubjectAltNames(tuple(dict.fromkeys(dns)), tuple(dict.fromkeys(ips)))


@dataclass(frozen=True)
class KeyPair:
    """A PEM certificate and its PEM private key."""

    cert_pem: bytes
    key_pem: bytes

    def write(self, directory: Path, name: str) -> tuple[Path, Path]:
        """Write `<name>.crt` and `<name>.key` (owner-only) into `directory`."""
        directory.mkdir(parents=True, exist_ok=True)
        cert_path = directory / f"{name}.crt"
        key_path = directory / f"{name}.key"
        cert_path.write_bytes(self.cert_pem)
        _write_private(key_path, self.key_pem)
        return cert_path, key_path


def _write_private(path: Path, data: bytes) -> None:
    path.touch(mode=0o600, exist_ok=True)
    path.chmod(0o600)
    path.write_bytes(data)


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _name(common_name: str, organizations: Sequence[str] = ()) -> x509.Name:
    attributes = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, org) for org in organizations]
    attributes.append(x509.NameAttribute(NameOID.COMMON_NAME, common_name))
    return x509.Name(attributes)


def _validity() -> tuple[datetime.datetime, datetime.datetime]:
    now = datetime.datetime.now(datetime.UTC)
    return now - BACKDATE, now + VALIDITY


class CertificateAuthority:
    """A self-signed CA that issues the cluster's serving and client certificates."""

    def __init__(self, key: ec.EllipticCurvePrivateKey, cert: x509.Certificate) -> None:
        self._key = key
        self.cert = cert

    @classmethod
    def create(cls, common_name: str = "matchops-cluster-ca") -> CertificateAuthority:
        key = _new_key()
        name = _name(common_name)
        not_before, not_after = _validity()
        ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before)
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(ski, critical=False)
            .sign(key, hashes.SHA256())
        )
        return cls(key, cert)

    @property
    def key_pair(self) -> KeyPair:
        return KeyPair(self.cert.public_bytes(serialization.Encoding.PEM), _key_pem(self._key))

    def issue(
        self,
        common_name: str,
        *,
        organizations: Sequence[str] = (),
        sans: SubjectAltNames | None = None,
        server: bool = False,
        client: bool = False,
    ) -> KeyPair:
        """A certificate for `common_name`, for serving (needs `sans`), client auth, or both."""
        if not (server or client):
            raise ValueError("a certificate must be for serving, client authentication or both")
        if server and sans is None:
            raise ValueError(f"serving certificate {common_name!r} needs subject alternative names")
        key = _new_key()
        usages = [ExtendedKeyUsageOID.SERVER_AUTH] if server else []
        usages += [ExtendedKeyUsageOID.CLIENT_AUTH] if client else []
        not_before, not_after = _validity()
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(common_name, organizations))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before)
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()),
                critical=False,
            )
        )
        if sans is not None:
            names: list[x509.GeneralName] = [x509.DNSName(name) for name in sans.dns_names]
            names += [x509.IPAddress(ip) for ip in sans.ip_addresses]
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        cert = builder.sign(self._key, hashes.SHA256())
        return KeyPair(cert.public_bytes(serialization.Encoding.PEM), _key_pem(key))

    def issue_client(self, identity: Identity) -> KeyPair:
        """A client certificate that authenticates as `identity`."""
        return self.issue(identity.user, organizations=identity.groups, client=True)

    def issue_serving(self, common_name: str, sans: SubjectAltNames) -> KeyPair:
        """A serving certificate valid for `sans`."""
        return self.issue(common_name, sans=sans, server=True)


@dataclass(frozen=True)
class SigningKey:
    """The service-account token signing key pair (private PEM, public PEM)."""

    private_pem: bytes
    public_pem: bytes

    @classmethod
    def create(cls) -> SigningKey:
        key = _new_key()
        public = key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return cls(_key_pem(key), public)

    def write(self, directory: Path, name: str = "service-account") -> tuple[Path, Path]:
        """Write `<name>.key` (owner-only) and `<name>.pub` into `directory`."""
        directory.mkdir(parents=True, exist_ok=True)
        private_path = directory / f"{name}.key"
        public_path = directory / f"{name}.pub"
        _write_private(private_path, self.private_pem)
        public_path.write_bytes(self.public_pem)
        return private_path, public_path
