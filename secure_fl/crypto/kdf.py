"""HKDF-SHA256 (RFC 5869) on the ``cryptography`` package.

Turns a Diffie-Hellman output into uniformly random keys with domain separation: the
``info`` string names what the key is for (mask seed, share-encryption key), so one shared
secret never keys two different jobs (Bonawitz et al., CCS 2017, §4, where ``KA.agree`` is
followed by a hash before use).
"""

from __future__ import annotations

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

__all__ = ["hkdf_sha256", "MAX_OUTPUT_BYTES"]

MAX_OUTPUT_BYTES = 255 * 32  # RFC 5869 §2.3: L <= 255 * HashLen


def hkdf_sha256(ikm: bytes, length: int = 32, *, salt: bytes | None = None, info: bytes = b"") -> bytes:
    """Derive ``length`` bytes from input keying material ``ikm`` (RFC 5869, extract-then-expand)."""
    if not isinstance(length, int) or isinstance(length, bool) or not 1 <= length <= MAX_OUTPUT_BYTES:
        raise ValueError(f"HKDF output length must be an integer in [1, {MAX_OUTPUT_BYTES}], got {length!r}")
    for name, value in (("ikm", ikm), ("info", info)):
        if not isinstance(value, (bytes, bytearray)):
            raise ValueError(f"HKDF {name} must be bytes, got {type(value).__name__}")
    if salt is not None and not isinstance(salt, (bytes, bytearray)):
        raise ValueError(f"HKDF salt must be bytes or None, got {type(salt).__name__}")
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=salt, info=bytes(info)).derive(bytes(ikm))
