"""X25519 Diffie-Hellman key agreement (RFC 7748) on the ``cryptography`` package.

Used by pairwise masking (Bonawitz et al., CCS 2017, §4: ``KA.gen`` / ``KA.agree``): every
party generates fresh key pairs per round, publishes the 32-byte public keys, and derives a
shared secret with each peer. Private keys come from the OS CSPRNG (OpenSSL's generator
seeded by the OS, or :func:`os.urandom` for raw key bytes).
"""

from __future__ import annotations

import os

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

__all__ = ["KEY_BYTES", "KeyPair", "generate_keypair", "private_from_bytes", "public_bytes", "exchange"]

KEY_BYTES = 32


class KeyPair:
    """A private scalar (32 raw bytes) and its public key (32 bytes)."""

    __slots__ = ("private", "public")

    def __init__(self, private: bytes, public: bytes) -> None:
        self.private = private
        self.public = public

    def __repr__(self) -> str:  # never print the private key
        return f"KeyPair(public={self.public.hex()[:16]}..., private=<hidden>)"


def generate_keypair() -> KeyPair:
    """A fresh X25519 key pair; the private bytes are drawn from :func:`os.urandom`."""
    raw = os.urandom(KEY_BYTES)
    return KeyPair(raw, public_bytes(raw))


def private_from_bytes(raw: bytes) -> X25519PrivateKey:
    """Load a private key from 32 raw bytes (RFC 7748 clamping is applied by X25519 itself)."""
    if not isinstance(raw, (bytes, bytearray)) or len(raw) != KEY_BYTES:
        raise ValueError(f"an X25519 private key is {KEY_BYTES} bytes, got {_describe(raw)}")
    return X25519PrivateKey.from_private_bytes(bytes(raw))


def public_bytes(private: bytes) -> bytes:
    """The 32-byte public key of a raw private key."""
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    return private_from_bytes(private).public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def exchange(private: bytes, peer_public: bytes) -> bytes:
    """The 32-byte X25519 shared secret of ``private`` and ``peer_public``.

    Raises ``ValueError`` for a malformed public key or a low-order point (all-zero output),
    which an honest peer never sends.
    """
    if not isinstance(peer_public, (bytes, bytearray)) or len(peer_public) != KEY_BYTES:
        raise ValueError(f"an X25519 public key is {KEY_BYTES} bytes, got {_describe(peer_public)}")
    peer = X25519PublicKey.from_public_bytes(bytes(peer_public))
    try:
        return private_from_bytes(private).exchange(peer)
    except ValueError as exc:  # cryptography refuses an all-zero shared secret
        raise ValueError(f"X25519 exchange refused the peer public key {bytes(peer_public).hex()}: {exc}") from exc


def _describe(value: object) -> str:
    if isinstance(value, (bytes, bytearray)):
        return f"{len(value)} bytes"
    return f"a {type(value).__name__}"
