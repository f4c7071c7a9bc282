"""AES-256-GCM authenticated encryption for the secret shares sites send each other.

Sites have no direct channel: a share travels site -> aggregator -> site, so it is
encrypted under a key only the two sites can derive (Bonawitz et al., CCS 2017, §4,
``AE.enc``). The associated data binds the ciphertext to its context (protocol, round,
sender, receiver): a share replayed from another round, redirected to another site, or
relabelled with another sender fails authentication, as does any truncated or altered byte.

Wire format of a sealed message: ``nonce (12 bytes) || ciphertext || tag (16 bytes)``.
Nonces are 96 random bits from :func:`os.urandom`.
"""

from __future__ import annotations

import os
import struct

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

__all__ = [
    "KEY_BYTES",
    "NONCE_BYTES",
    "TAG_BYTES",
    "OVERHEAD",
    "AuthenticationError",
    "seal",
    "open_sealed",
    "associated_data",
]

KEY_BYTES = 32
NONCE_BYTES = 12
TAG_BYTES = 16
OVERHEAD = NONCE_BYTES + TAG_BYTES


class AuthenticationError(ValueError):
    """A sealed message failed authentication: wrong key, wrong context, truncated or altered."""


def seal(key: bytes, plaintext: bytes, associated: bytes, nonce: bytes | None = None) -> bytes:
    """Encrypt and authenticate ``plaintext``; ``associated`` is authenticated, not sent.

    ``nonce`` is for known-answer tests only; leave it ``None`` so a fresh random one is used.
    """
    _check_key(key)
    if nonce is None:
        nonce = os.urandom(NONCE_BYTES)
    elif len(nonce) != NONCE_BYTES:
        raise ValueError(f"AES-GCM nonce must be {NONCE_BYTES} bytes, got {len(nonce)}")
    return nonce + AESGCM(key).encrypt(nonce, plaintext, associated)


def open_sealed(key: bytes, sealed: bytes, associated: bytes) -> bytes:
    """Decrypt a message made by :func:`seal`; raise :class:`AuthenticationError` saying why not."""
    _check_key(key)
    if len(sealed) < OVERHEAD:
        raise AuthenticationError(
            f"sealed message is {len(sealed)} bytes, shorter than the {OVERHEAD}-byte nonce and tag (truncated)"
        )
    try:
        return AESGCM(key).decrypt(sealed[:NONCE_BYTES], sealed[NONCE_BYTES:], associated)
    except InvalidTag:
        raise AuthenticationError(
            "authentication tag mismatch: the message was altered or truncated, or belongs to another "
            "round, sender or receiver (replayed or redirected)"
        ) from None


def associated_data(*fields: bytes | str | int) -> bytes:
    """Unambiguous encoding of context fields: each is length-prefixed (u32), ints as u64."""
    out = bytearray()
    for f in fields:
        if isinstance(f, bool):
            raise ValueError("associated-data fields are bytes, str or int, not bool")
        if isinstance(f, int):
            if not 0 <= f < 2**64:
                raise ValueError(f"associated-data integer {f} is outside [0, 2^64)")
            raw = struct.pack("<Q", f)
        elif isinstance(f, str):
            raw = f.encode("utf-8")
        elif isinstance(f, (bytes, bytearray)):
            raw = bytes(f)
        else:
            raise ValueError(f"associated-data fields are bytes, str or int, got {type(f).__name__}")
        out += struct.pack("<I", len(raw)) + raw
    return bytes(out)


def _check_key(key: bytes) -> None:
    if not isinstance(key, (bytes, bytearray)) or len(key) != KEY_BYTES:
        got = f"{len(key)} bytes" if isinstance(key, (bytes, bytearray)) else type(key).__name__
        raise ValueError(f"AES-256-GCM key must be {KEY_BYTES} bytes, got {got}")
