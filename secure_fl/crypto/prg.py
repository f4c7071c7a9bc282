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

__all__ = ["SEED_BYTES", "MAX_MODULUS_BITS", "MASK_BLOCK", "mask_dtype", "keystream", "expand_mask", "add_mask"]

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
    out = np.zeros(int(dim), dtype=dtype)
    add_mask(out, seed, modulus_bits)
    return out


#: words of keystream made at a time by :func:`add_mask` (2 MiB of uint64): a mask is never held whole
MASK_BLOCK = 1 << 18


def add_mask(target: np.ndarray, seed: bytes, modulus_bits: int, *, subtract: bool = False) -> None:
    """``target += expand_mask(seed, len(target), modulus_bits)`` (or ``-=``), in place, block by block.

    The AES-CTR keystream is produced :data:`MASK_BLOCK` words at a time into one reused buffer, so
    masking a vector of ``d`` words needs ``O(MASK_BLOCK)`` extra memory instead of a second (and, for
    the keystream's zero input, a third) vector of ``d`` words. Arithmetic wraps modulo the word size;
    the caller reduces modulo ``2**modulus_bits`` once at the end, as with whole masks.
    """
    dtype = mask_dtype(modulus_bits)
    if not isinstance(target, np.ndarray) or target.ndim != 1 or target.dtype != dtype:
        got = f"{target.dtype} {target.shape}" if isinstance(target, np.ndarray) else type(target).__name__
        raise ValueError(f"mask target must be a 1-D {dtype} vector (modulus 2^{modulus_bits}), got {got}")
    _check_seed(seed)
    enc = Cipher(algorithms.AES(bytes(seed)), modes.CTR(b"\x00" * 16)).encryptor()
    size = dtype.itemsize
    block = min(MASK_BLOCK, target.shape[0])
    zeros = bytes(block * size)
    buf = bytearray(block * size + 16)  # update_into needs room for one extra block
    low = dtype.type((1 << modulus_bits) - 1) if modulus_bits < size * 8 else None
    for start in range(0, target.shape[0], MASK_BLOCK):
        n = min(MASK_BLOCK, target.shape[0] - start)
        enc.update_into(zeros[: n * size], buf)  # CTR keeps its position across calls: one continuous stream
        words = np.frombuffer(buf, dtype=dtype.newbyteorder("<"), count=n)
        if words.dtype.byteorder not in ("=", "|") and words.dtype != dtype:  # big-endian host
            words = words.astype(dtype)
        if low is not None:
            words &= low
        part = target[start : start + n]
        if subtract:
            part -= words
        else:
            part += words


def _check_seed(seed: bytes) -> None:
    if not isinstance(seed, (bytes, bytearray)) or len(seed) != SEED_BYTES:
        got = f"{len(seed)} bytes" if isinstance(seed, (bytes, bytearray)) else type(seed).__name__
        raise ValueError(f"PRG seed must be {SEED_BYTES} bytes, got {got}")
