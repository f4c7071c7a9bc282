"""Key material of a deployment, made with ``cryptography`` (OS CSPRNG via OpenSSL).

* TLS: a federation CA (EC P-256, ``BasicConstraints(ca=True)``, key usage certSign/crlSign)
  and the SuperLink's server certificate signed by it (EC P-256, SAN ``IP:127.0.0.1``,
  ``DNS:localhost`` plus the federation's hosts, EKU serverAuth). Sites get only the CA
  certificate: Flower 1.40 authenticates the server by TLS and each SuperNode by its key.
* SuperNode authentication: an EC P-256 key pair per site, the private key in OpenSSH format
  and the public key as one OpenSSH line (what ``flower-supernode --auth-supernode-private-key``
  and ``flwr supernode register`` accept; Ed25519 and PKCS8 are refused by Flower 1.40).
* SecAgg identity: an Ed25519 key pair per site (raw 32-byte keys). Sites sign their
  advertised per-round keys with it (Bonawitz et al., CCS 2017, §6.2), so an aggregator cannot
  swap them; every party holds every site's public identity key.
"""

from __future__ import annotations

import datetime as _dt
import ipaddress
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["TlsMaterial", "make_tls", "make_node_key", "make_identity_key", "identity_public"]

_VALID_DAYS = 825


@dataclass(frozen=True)
class TlsMaterial:
    ca_cert: bytes  # PEM
    server_cert: bytes  # PEM
    server_key: bytes  # PEM, PKCS8, unencrypted (mode 0600 in the aggregator kit)


def _name(common: str, federation: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common),
                      x509.NameAttribute(NameOID.ORGANIZATION_NAME, federation)])


def make_tls(federation: str, hosts: list[str]) -> TlsMaterial:
    """A CA and a server certificate for ``hosts`` (IP addresses or DNS names) signed by it."""
    now = _dt.datetime.now(_dt.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = _name(f"{federation} federation CA", federation)
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _dt.timedelta(minutes=5))
        .not_valid_after(now + _dt.timedelta(days=_VALID_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    sans: list[x509.GeneralName] = []
    for h in dict.fromkeys(["127.0.0.1", "localhost", *hosts]):
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(h)))
        except ValueError:
            sans.append(x509.DNSName(h))
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(f"{federation} aggregator", federation))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _dt.timedelta(minutes=5))
        .not_valid_after(now + _dt.timedelta(days=_VALID_DAYS))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    return TlsMaterial(
        ca.public_bytes(pem),
        cert.public_bytes(pem),
        key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()),
    )


def make_node_key() -> tuple[bytes, bytes]:
    """(OpenSSH private key, one-line OpenSSH public key) on P-256 for SuperNode authentication."""
    key = ec.generate_private_key(ec.SECP256R1())
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return private, public + b"\n"


def make_identity_key() -> bytes:
    """A fresh Ed25519 signing key, raw 32 bytes."""
    key = ed25519.Ed25519PrivateKey.generate()
    return key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption())


def identity_public(private: bytes) -> bytes:
    """The raw 32-byte Ed25519 public key of a raw private key."""
    key = ed25519.Ed25519PrivateKey.from_private_bytes(private)
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
