"""Per-round secrets of pairwise masking and the keys derived from them (Bonawitz et al. 2017, §4).

b_u (self-mask seed) and s_sk_u (mask key) are 32 bytes each from the OS CSPRNG; everything
else is derived with HKDF-SHA256, domain-separated and bound to protocol, round and parties.
"""

from __future__ import annotations

import hashlib

from ...crypto import aead, kex, shamir
from ...crypto.kdf import hkdf_sha256

__all__ = ["SECRET", "SHARE", "SEALED", "seed_commitment", "share_key", "share_ad", "pair_seed", "self_seed"]

SECRET = 32  # bytes of b_u and of s_sk_u
SHARE = shamir.share_bytes(SECRET)
SEALED = aead.OVERHEAD + 2 * SHARE


def seed_commitment(seed: bytes) -> bytes:
    """SHA-256 commitment to a self-mask seed (hiding: the seed is 256 uniform bits)."""
    return hashlib.sha256(b"secure-fl/secagg/self-seed-commitment/v1" + seed).digest()


def share_key(c_sk: bytes, peer_c_pk: bytes, protocol: str, round: int) -> bytes:
    """AES-256-GCM key sealing the shares between two neighbours."""
    info = aead.associated_data("secure-fl/secagg/share-key/v1", protocol, round)
    return hkdf_sha256(kex.exchange(c_sk, peer_c_pk), info=info)


def share_ad(protocol: str, round: int, sender: str, receiver: str) -> bytes:
    return aead.associated_data("secure-fl/secagg/share/v1", protocol, round, sender, receiver)


def pair_seed(s_sk: bytes, peer_s_pk: bytes, round: int, a: str, b: str) -> bytes:
    """The PRG seed of the pairwise mask between sites ``a`` and ``b`` (symmetric in a, b)."""
    lo, hi = sorted((a, b))
    info = aead.associated_data("secure-fl/secagg/pairwise-mask/v1", round, lo, hi)
    return hkdf_sha256(kex.exchange(s_sk, peer_s_pk), info=info)


def self_seed(b: bytes, round: int) -> bytes:
    return hkdf_sha256(b, info=aead.associated_data("secure-fl/secagg/self-mask/v1", round))
