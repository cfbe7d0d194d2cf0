"""Certificates for the local cluster: names, usages, identities, key files."""

import ipaddress
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    PublicFormat,
    load_pem_private_key,
)
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from matchops_devenv import pki

# Binding everywhere is not an address clients dial; these tests only pass it around.
EVERYWHERE = "0.0.0.0"  # noqa: S104


def test_kubernetes_service_ip_is_first_address_of_the_range() -> None:
    assert str(pki.kubernetes_service_ip("10.96.0.0/12")) == "10.96.0.1"
    assert str(pki.kubernetes_service_ip("fd00:10:96::/112")) == "fd00:10:96::1"


def test_apiserver_sans_cover_loopback_service_and_configured_addresses() -> None:
    sans = pki.apiserver_sans(
        ["10.88.0.1", EVERYWHERE], "10.0.0.0/24", ["api.example", "192.0.2.7"]
    )

    assert set(sans.dns_names) == {
        "localhost",
        "kubernetes",
        "kubernetes.default",
        "kubernetes.default.svc",
        "kubernetes.default.svc.cluster.local",
        "api.example",
    }
    assert {str(ip) for ip in sans.ip_addresses} == {
        "127.0.0.1",
        "::1",
        "10.0.0.1",
        "10.88.0.1",
        "192.0.2.7",
    }


def test_apiserver_sans_list_each_entry_once() -> None:
    sans = pki.apiserver_sans(["127.0.0.1", "127.0.0.1", "localhost"], "10.96.0.0/12")

    assert len(sans.dns_names) == len(set(sans.dns_names))
    assert len(sans.ip_addresses) == len(set(sans.ip_addresses))


def _cert(pem: bytes) -> x509.Certificate:
    return x509.load_pem_x509_certificate(pem)


def test_serving_certificate_is_signed_by_the_ca_for_the_given_names() -> None:
    ca = pki.CertificateAuthority.create()
    sans = pki.apiserver_sans(["10.88.0.1"], "10.96.0.0/12")

    cert = _cert(ca.issue_serving("kube-apiserver", sans).cert_pem)

    cert.verify_directly_issued_by(ca.cert)
    alt = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "kubernetes.default.svc" in alt.get_values_for_type(x509.DNSName)
    assert ipaddress.ip_address("10.88.0.1") in alt.get_values_for_type(x509.IPAddress)
    usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usages) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False


def test_client_certificate_carries_user_and_groups() -> None:
    ca = pki.CertificateAuthority.create()

    cert = _cert(ca.issue_client(pki.kubelet_identity("node-a")).cert_pem)

    cert.verify_directly_issued_by(ca.cert)
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == (
        "system:node:node-a"
    )
    orgs = [a.value for a in cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)]
    assert orgs == ["system:nodes"]
    usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usages) == [ExtendedKeyUsageOID.CLIENT_AUTH]


def test_ca_certificate_can_sign() -> None:
    ca = pki.CertificateAuthority.create("test-ca")

    assert ca.cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is True
    assert ca.cert.extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign is True


def test_serving_certificate_without_names_is_refused() -> None:
    ca = pki.CertificateAuthority.create()

    with pytest.raises(ValueError, match="subject alternative names"):
        ca.issue("kube-apiserver", server=True)


def test_certificate_must_have_a_purpose() -> None:
    ca = pki.CertificateAuthority.create()

    with pytest.raises(ValueError, match="serving, client"):
        ca.issue("nobody")


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_key_pair_files_keep_the_private_key_to_the_owner(tmp_path: Path) -> None:
    ca = pki.CertificateAuthority.create()

    cert_path, key_path = ca.issue_client(pki.ADMIN).write(tmp_path / "pki", "admin")

    assert cert_path.name == "admin.crt"
    assert _mode(key_path) == 0o600
    load_pem_private_key(key_path.read_bytes(), password=None)


def test_signing_key_files_hold_a_matching_pair(tmp_path: Path) -> None:
    private_path, public_path = pki.SigningKey.create().write(tmp_path)

    private = load_pem_private_key(private_path.read_bytes(), password=None)
    public = private.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    assert public == public_path.read_bytes()
    assert _mode(private_path) == 0o600
