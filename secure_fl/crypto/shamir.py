"""Shamir t-of-n secret sharing of byte strings over the prime field GF(2^256 + 297).

Shamir, "How to share a secret", CACM 1979. A secret is cut into 32-byte chunks; each chunk
is an integer below 2^256 < p, the constant term of a random polynomial of degree t - 1
whose other coefficients are drawn with :func:`secrets.randbelow`. Share ``i`` (x = 1..n)
holds the polynomial values at x = i. Any t shares give the chunks back by Lagrange
interpolation at 0; t - 1 shares are independent of the secret (perfect secrecy).

p = 2^256 + 297 is the smallest prime above 2^256 (checked in the tests), so a 32-byte seed
or X25519 private key is one field element and a share costs 2 + 33 bytes.

Wire format of a share: ``x (u16 little-endian) || y_1 || ... || y_c`` with each ``y_j``
33 bytes big-endian, c = number of chunks.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = [
    "PRIME",
    "CHUNK_BYTES",
    "ELEMENT_BYTES",
    "MAX_SHARES",
    "Share",
    "split",
    "combine",
    "interpolate_at_zero",
    "share_bytes",
]

PRIME = 2**256 + 297
CHUNK_BYTES = 32
ELEMENT_BYTES = 33
MAX_SHARES = 2**16 - 1


@dataclass(frozen=True)
class Share:
    """Point ``x`` of the sharing polynomials and their values ``ys`` (one per 32-byte chunk)."""

    x: int
    ys: tuple[int, ...]

    def to_bytes(self) -> bytes:
        return self.x.to_bytes(2, "little") + b"".join(y.to_bytes(ELEMENT_BYTES, "big") for y in self.ys)

    @classmethod
    def from_bytes(cls, raw: bytes) -> "Share":
        if len(raw) < 2 + ELEMENT_BYTES or (len(raw) - 2) % ELEMENT_BYTES:
            raise ValueError(f"a share is 2 + 33*c bytes, got {len(raw)} bytes")
        x = int.from_bytes(raw[:2], "little")
        ys = tuple(int.from_bytes(raw[i : i + ELEMENT_BYTES], "big") for i in range(2, len(raw), ELEMENT_BYTES))
        if x == 0:
            raise ValueError("a share at x = 0 would be the secret itself; shares start at x = 1")
        if any(y >= PRIME for y in ys):
            raise ValueError("a share value is not a field element (>= p)")
        return cls(x, ys)


def share_bytes(secret_len: int) -> int:
    """Bytes of one serialized share of a ``secret_len``-byte secret."""
    return 2 + ELEMENT_BYTES * _chunks(secret_len)


def split(secret: bytes, threshold: int, n: int) -> list[Share]:
    """Cut ``secret`` into ``n`` shares, any ``threshold`` of which reconstruct it."""
    if not isinstance(secret, (bytes, bytearray)) or len(secret) == 0:
        raise ValueError("the secret must be non-empty bytes")
    _check_int("n", n, 1, MAX_SHARES)
    _check_int("threshold", threshold, 1, n)
    ys: list[list[int]] = [[] for _ in range(n)]
    for start in range(0, len(secret), CHUNK_BYTES):
        coeffs = [int.from_bytes(secret[start : start + CHUNK_BYTES], "big")]
        coeffs += [secrets.randbelow(PRIME) for _ in range(threshold - 1)]
        for i in range(n):
            x, acc = i + 1, 0
            for c in reversed(coeffs):  # Horner
                acc = (acc * x + c) % PRIME
            ys[i].append(acc)
    return [Share(i + 1, tuple(y)) for i, y in enumerate(ys)]


def combine(shares: Sequence[Share], threshold: int, secret_len: int) -> bytes:
    """The ``secret_len``-byte secret from at least ``threshold`` shares with distinct x.

    Uses the first ``threshold`` shares (in the given order). Fewer than ``threshold``
    distinct shares is refused: they carry no information about the secret.
    """
    _check_int("threshold", threshold, 1, MAX_SHARES)
    distinct: dict[int, Share] = {}
    for s in shares:
        if s.x in distinct and distinct[s.x] != s:
            raise ValueError(f"two different shares claim x = {s.x}")
        distinct.setdefault(s.x, s)
    if len(distinct) < threshold:
        raise ValueError(f"need {threshold} distinct shares to reconstruct, got {len(distinct)}")
    chosen = list(distinct.values())[:threshold]
    n_chunks = _chunks(secret_len)
    if any(len(s.ys) != n_chunks for s in chosen):
        raise ValueError(f"shares do not all have {n_chunks} chunk(s) for a {secret_len}-byte secret")
    out = bytearray()
    lambdas = _lagrange_at_zero([s.x for s in chosen])
    for j in range(n_chunks):
        value = sum(lam * s.ys[j] for lam, s in zip(lambdas, chosen)) % PRIME
        size = min(CHUNK_BYTES, secret_len - j * CHUNK_BYTES)
        if value >= 1 << (8 * size):
            raise ValueError("reconstructed value does not fit the secret length: shares are inconsistent or tampered")
        out += value.to_bytes(size, "big")
    return bytes(out)


def interpolate_at_zero(points: Sequence[tuple[int, int]]) -> int:
    """The value at 0 of the lowest-degree polynomial through ``points`` (x, y) in GF(p)."""
    lambdas = _lagrange_at_zero([x for x, _ in points])
    return sum(lam * y for lam, (_, y) in zip(lambdas, points)) % PRIME


def _lagrange_at_zero(xs: Sequence[int]) -> list[int]:
    if len(set(xs)) != len(xs):
        raise ValueError(f"interpolation points must be distinct, got x = {list(xs)}")
    lambdas = []
    for j, xj in enumerate(xs):
        num, den = 1, 1
        for m, xm in enumerate(xs):
            if m != j:
                num = num * xm % PRIME
                den = den * (xm - xj) % PRIME
        lambdas.append(num * pow(den, -1, PRIME) % PRIME)
    return lambdas


def _chunks(secret_len: int) -> int:
    if not isinstance(secret_len, int) or secret_len < 1:
        raise ValueError(f"secret length must be a positive integer, got {secret_len!r}")
    return -(-secret_len // CHUNK_BYTES)


def _check_int(name: str, value: object, lo: int, hi: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
        raise ValueError(f"{name} must be an integer in [{lo}, {hi}], got {value!r}")
