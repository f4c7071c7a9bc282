"""A keyed pseudo-random generator that expands a 32-byte seed into a mask modulo 2^k.

Masks are the AES-256-CTR keystream under the seed as key (Bonawitz et al., CCS 2017, §4:
``PRG(b_u)`` and ``PRG(s_{u,v})``), read as little-endian 32- or 64-bit words and reduced
modulo 2^k by dropping the high bits (exact, because 2^k divides 2^32 or 2^64, so each
word is uniform modulo 2^k). The counter starts at ``nonce`` (zero by default): each seed
is derived fresh for one round and one purpose, so one key never encrypts two streams.

Unlike a seed folded to 32 bits and fed to ``np.random.RandomState`` (Flower
``secaggplus_utils.pseudo_rand_gen``), the mask keeps the full 256-bit seed strength.
"""

from __future__ import annotations

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

__all__ = ["SEED_BYTES", "MAX_MODULUS_BITS", "mask_dtype", "keystream", "expand_mask"]

SEED_BYTES = 32
#: largest modulus 2^k of the masking sums, the one limit for masks (here) and quantised sums
#: (:mod:`secure_fl.crypto.quantize`): sums are handled as uint64 and decoded through int64, so k stays
#: below 63 bits
MAX_MODULUS_BITS = 62


def mask_dtype(modulus_bits: int) -> np.dtype:
    """The unsigned word that holds values modulo 2^k: uint32 up to k = 32, else uint64."""
    if not isinstance(modulus_bits, int) or isinstance(modulus_bits, bool) or not 1 <= modulus_bits <= MAX_MODULUS_BITS:
        raise ValueError(f"modulus_bits must be an integer in [1, {MAX_MODULUS_BITS}], got {modulus_bits!r}")
    return np.dtype(np.uint32) if modulus_bits <= 32 else np.dtype(np.uint64)


def keystream(seed: bytes, nbytes: int, nonce: bytes = b"\x00" * 16) -> bytes:
    """``nbytes`` of AES-256-CTR keystream under key ``seed`` from initial counter block ``nonce``."""
    _check_seed(seed)
    if len(nonce) != 16:
        raise ValueError(f"AES-CTR initial counter block must be 16 bytes, got {len(nonce)}")
    if nbytes < 0:
        raise ValueError(f"keystream length must be >= 0, got {nbytes}")
    enc = Cipher(algorithms.AES(bytes(seed)), modes.CTR(nonce)).encryptor()
    return enc.update(bytes(nbytes)) + enc.finalize()


def expand_mask(seed: bytes, dim: int, modulus_bits: int) -> np.ndarray:
    """A vector of ``dim`` words uniform modulo ``2**modulus_bits``, determined by ``seed``."""
    dtype = mask_dtype(modulus_bits)
    if not isinstance(dim, (int, np.integer)) or dim < 0:
        raise ValueError(f"mask dimension must be an integer >= 0, got {dim!r}")
    nbytes = int(dim) * dtype.itemsize
    _check_seed(seed)
    enc = Cipher(algorithms.AES(bytes(seed)), modes.CTR(b"\x00" * 16)).encryptor()
    buf = bytearray(nbytes + 16)  # update_into needs room for one extra block
    enc.update_into(bytes(nbytes), buf)
    words = np.frombuffer(buf, dtype=dtype.newbyteorder("<"), count=int(dim))
    if words.dtype.byteorder not in ("=", "|") and words.dtype != dtype:  # big-endian host
        words = words.astype(dtype)
    if modulus_bits < dtype.itemsize * 8:
        words &= dtype.type((1 << modulus_bits) - 1)
    return words


def _check_seed(seed: bytes) -> None:
    if not isinstance(seed, (bytes, bytearray)) or len(seed) != SEED_BYTES:
        got = f"{len(seed)} bytes" if isinstance(seed, (bytes, bytearray)) else type(seed).__name__
        raise ValueError(f"PRG seed must be {SEED_BYTES} bytes, got {got}")
