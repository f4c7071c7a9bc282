"""Long-term site identity keys: Ed25519 signatures (RFC 8032) on the ``cryptography`` package.

Used by the signed variant of pairwise masking (Bonawitz et al., CCS 2017, §6.2): every site
holds a long-term signing key provisioned once (its public key is known to every other site)
and signs what it advertises each round, so an aggregator that relays keys cannot substitute
its own. Keys are raw 32-byte strings (RFC 8032 §5.1.5); private keys come from the OS CSPRNG
(OpenSSL's generator, seeded by the OS). Security rests on the hardness of discrete logarithms
on edwards25519 (EUF-CMA of Ed25519, Brendel et al., IEEE S&P 2021).
"""

from __future__ import annotations

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

__all__ = ["KEY_BYTES", "SIGNATURE_BYTES", "generate", "public_key", "sign", "verify"]

KEY_BYTES = 32
SIGNATURE_BYTES = 64

_RAW = (serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def generate() -> tuple[bytes, bytes]:
    """A fresh identity ``(private_bytes, public_bytes)``, 32 raw bytes each, from the OS CSPRNG."""
    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    return private, key.public_key().public_bytes(*_RAW)


def public_key(private: bytes) -> bytes:
    """The public key (32 bytes) of a raw private key."""
    return _private(private).public_key().public_bytes(*_RAW)


def sign(private: bytes, message: bytes) -> bytes:
    """The 64-byte Ed25519 signature of ``message`` (deterministic, RFC 8032 §5.1.6)."""
    return _private(private).sign(message)


def verify(public: bytes, message: bytes, signature: bytes) -> bool:
    """Whether ``signature`` is a valid signature of ``message`` under ``public``.

    A malformed signature is simply invalid (``False``); a malformed *public key* is an input
    error (``ValueError``): identities are provisioned, not received from the wire.
    """
    key = _public(public)
    if not isinstance(signature, bytes | bytearray) or len(signature) != SIGNATURE_BYTES:
        return False
    try:
        key.verify(bytes(signature), message)
    except InvalidSignature:
        return False
    return True


def _private(raw: bytes) -> Ed25519PrivateKey:
    if not isinstance(raw, bytes | bytearray) or len(raw) != KEY_BYTES:
        raise ValueError(f"an Ed25519 private key is {KEY_BYTES} raw bytes, got {_describe(raw)}")
    return Ed25519PrivateKey.from_private_bytes(bytes(raw))


def _public(raw: bytes) -> Ed25519PublicKey:
    if not isinstance(raw, bytes | bytearray) or len(raw) != KEY_BYTES:
        raise ValueError(f"an Ed25519 public key is {KEY_BYTES} raw bytes, got {_describe(raw)}")
    try:
        return Ed25519PublicKey.from_public_bytes(bytes(raw))
    except ValueError as exc:
        raise ValueError(f"not a valid Ed25519 public key: {exc}") from exc


def _describe(value: object) -> str:
    if isinstance(value, bytes | bytearray):
        return f"{len(value)} bytes"
    return f"a {type(value).__name__}"
