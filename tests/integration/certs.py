"""Certificates the tests make for themselves: a CA, and server or client certificates it
signs (for 127.0.0.1 and localhost), as PEM files."""

from __future__ import annotations

import datetime
import ipaddress
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _builder(subject: str, issuer: x509.Name, public_key) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=2))
    )


def make_ca(folder: Path, cn: str) -> tuple:
    """A self-signed CA, written to ``folder/<cn>.pem``; returns (key, certificate)."""
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        _builder(cn, _name(cn), key.public_key())
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    (folder / f"{cn}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return key, cert


def issue(ca_key, ca_cert, cn: str = "localhost") -> tuple[bytes, bytes]:
    """A certificate for 127.0.0.1 and localhost signed by the CA: (key PEM, cert PEM)."""
    key = ec.generate_private_key(ec.SECP256R1())
    names = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    cert = (
        _builder(cn, ca_cert.subject, key.public_key())
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return key_pem, cert.public_bytes(serialization.Encoding.PEM)


def write_pair(folder: Path, name: str, ca_key, ca_cert) -> tuple[Path, Path]:
    """``folder/<name>.key`` and ``folder/<name>.crt``, signed by the CA."""
    key_pem, cert_pem = issue(ca_key, ca_cert, name)
    (folder / f"{name}.key").write_bytes(key_pem)
    (folder / f"{name}.crt").write_bytes(cert_pem)
    return folder / f"{name}.crt", folder / f"{name}.key"


def make_server_keystore(folder: Path, ca_key, ca_cert) -> Path:
    """Key, certificate and CA in one PEM file (what Kafka's PEM keystore takes)."""
    key_pem, cert_pem = issue(ca_key, ca_cert)
    path = folder / "server-keystore.pem"
    path.write_bytes(key_pem + cert_pem + ca_cert.public_bytes(serialization.Encoding.PEM))
    return path
