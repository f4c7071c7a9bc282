"""CKKS parameter presets for a secure *sum*, checked against the HE security standard.

Aggregation needs additions only (no multiplicative depth), so a preset needs a single
data prime ``q0`` wide enough for the encoded sum plus its noise, and the special prime
that TenSEAL always reserves for key switching. A fresh ciphertext lives at the first data
level (every prime except the last), so its size is ``2 polynomials x N coefficients x
Σ bits(data primes)`` before compression: the bytes per parameter depend on the data
primes only, not on ``N`` (``N/2`` slots per ciphertext).

Security: the total coefficient modulus ``log2 Q`` must not exceed the bound of the
HomomorphicEncryption.org standard (Albrecht et al., "Homomorphic Encryption Security
Standard", 2018, Table 1, ternary secret, classical attacks), reproduced below. A preset
above the 128-bit bound is refused with the numbers in the message.

Precision: values are normalised by public powers of two so that the encoded sum lies in
``[-1, 1]`` (see :mod:`secure_fl.protocol.ckks`), encoded at scale ``2**scale_bits`` with
``scale_bits <= bits(q0) - 2`` (one bit of sign, one of headroom for the noise). The
decryption error of a fresh symmetric encryption has, per slot, a standard deviation of
about ``sigma * sqrt(N / 2)`` in scaled units (``sigma = 3.2``, the RLWE error of SEAL),
it grows as ``sqrt(n)`` over a sum of ``n`` ciphertexts (independent errors), and
public-key encryption adds ``e*u + e1 + e2*s`` and the rounding of the division by the
special prime (Cheon, Kim, Kim, Song, "Homomorphic Encryption for Arithmetic of
Approximate Numbers", ASIACRYPT 2017, Lemma 1 bounds the fresh error; measured here the
public-key error is about 12x the symmetric one, ``benchmarks/ckks_table.py``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from ..errors import SpecError

__all__ = [
    "HE_STANDARD_MAX_LOG_Q",
    "CkksParamError",
    "CkksPreset",
    "PRESETS",
    "DEFAULT_PRESET",
    "REFERENCE_PRESET",
    "security_bits",
    "check_parameters",
    "get_preset",
    "noise_std",
    "error_bound",
    "flooding_std",
]

#: max log2(Q) per polynomial degree N, per security level, HE standard (2018) Table 1,
#: uniform ternary secret, classical. The same table SEAL enforces (``hestdparms.h``).
HE_STANDARD_MAX_LOG_Q: dict[int, dict[int, int]] = {
    128: {1024: 27, 2048: 54, 4096: 109, 8192: 218, 16384: 438, 32768: 881},
    192: {1024: 19, 2048: 37, 4096: 75, 8192: 152, 16384: 305, 32768: 611},
    256: {1024: 14, 2048: 29, 4096: 58, 8192: 118, 16384: 237, 32768: 476},
}

#: RLWE error standard deviation of SEAL
RLWE_SIGMA = 3.2
#: measured ratio of public-key to symmetric fresh decryption error (benchmarks/ckks_table.py)
PUBLIC_KEY_NOISE_FACTOR = 12.0

Encryption = Literal["symmetric", "public-key"]


class CkksParamError(SpecError):
    """A CKKS parameter set is refused (insecure, malformed, or unusable for a sum)."""


def security_bits(poly_degree: int, total_bits: int) -> int | None:
    """The highest level in {256, 192, 128} whose bound ``total_bits`` meets, else ``None``."""
    for level in (256, 192, 128):
        bound = HE_STANDARD_MAX_LOG_Q[level].get(poly_degree)
        if bound is not None and total_bits <= bound:
            return level
    return None


def check_parameters(
    poly_degree: int, coeff_mod_bit_sizes: tuple[int, ...] | list[int], scale_bits: int, where: str = "ckks"
) -> None:
    """Refuse a parameter set that is insecure or cannot hold a normalised sum.

    Raises :class:`CkksParamError` naming ``where`` and the numbers.
    """
    table = HE_STANDARD_MAX_LOG_Q[128]
    if poly_degree not in table:
        raise CkksParamError(
            f"{where}: poly_degree {poly_degree} is not in the HE standard table; expected one of {sorted(table)}"
        )
    bits = list(coeff_mod_bit_sizes)
    if len(bits) < 2:
        raise CkksParamError(
            f"{where}: coeff_mod_bit_sizes {bits} needs at least 2 primes (one data prime and the special prime "
            "TenSEAL reserves for key switching)"
        )
    for b in bits:
        if not isinstance(b, int) or isinstance(b, bool) or not 17 <= b <= 60:
            raise CkksParamError(
                f"{where}: every prime of coeff_mod_bit_sizes must be an integer of 17..60 bits (SEAL's limit), "
                f"found {b!r} in {bits}"
            )
    total = sum(bits)
    if total > table[poly_degree]:
        raise CkksParamError(
            f"{where}: log2(Q) = sum{bits} = {total} bits exceeds {table[poly_degree]}, the HomomorphicEncryption.org "
            f"standard's maximum for 128-bit security at N = {poly_degree}; use fewer/smaller primes or N = "
            f"{_next_degree(total)}"
        )
    level_bits = sum(bits[:-1])
    if not isinstance(scale_bits, int) or isinstance(scale_bits, bool) or not 10 <= scale_bits <= level_bits - 2:
        raise CkksParamError(
            f"{where}: scale_bits must be an integer in [10, {level_bits - 2}] (data primes {bits[:-1]} hold "
            f"{level_bits} bits; "
            f"one bit of sign and one of headroom are needed), found {scale_bits!r}"
        )


def _next_degree(total_bits: int) -> int | str:
    for n, bound in sorted(HE_STANDARD_MAX_LOG_Q[128].items()):
        if total_bits <= bound:
            return n
    return "none (too many bits for any N)"


@dataclass(frozen=True)
class CkksPreset:
    """A named CKKS parameter set for summing encrypted updates.

    ``scale_bits`` defaults to ``bits(data primes) - 2``: the widest scale a normalised sum
    in ``[-1, 1]`` can use. ``encryption`` is ``"symmetric"`` when sites (the key holders)
    encrypt with the secret key, which is about twice as fast and ten times less noisy.
    """

    name: str
    poly_degree: int
    coeff_mod_bit_sizes: tuple[int, ...]
    encryption: Encryption = "symmetric"
    scale_bits: int | None = None
    note: str = ""

    def __post_init__(self) -> None:
        if self.encryption not in ("symmetric", "public-key"):
            raise CkksParamError(
                f"preset {self.name!r}: encryption must be 'symmetric' or 'public-key', found {self.encryption!r}"
            )
        if self.scale_bits is None:
            object.__setattr__(self, "scale_bits", max(10, sum(self.coeff_mod_bit_sizes[:-1]) - 2))
        check_parameters(self.poly_degree, self.coeff_mod_bit_sizes, self.scale, where=f"preset {self.name!r}")

    @property
    def scale(self) -> int:
        return int(self.scale_bits)  # type: ignore[arg-type]

    @property
    def slots(self) -> int:
        return self.poly_degree // 2

    @property
    def total_bits(self) -> int:
        return sum(self.coeff_mod_bit_sizes)

    @property
    def data_bits(self) -> int:
        """Bits of the primes a fresh ciphertext carries (all but the special prime)."""
        return sum(self.coeff_mod_bit_sizes[:-1])

    @property
    def security(self) -> int:
        level = security_bits(self.poly_degree, self.total_bits)
        assert level is not None  # checked in __post_init__
        return level

    def describe(self) -> dict[str, object]:
        return {
            "preset": self.name,
            "poly_degree": self.poly_degree,
            "coeff_mod_bit_sizes": list(self.coeff_mod_bit_sizes),
            "scale_bits": self.scale,
            "encryption": self.encryption,
            "security_bits": self.security,
        }


def noise_std(preset: CkksPreset, n_summed: int) -> float:
    """Estimated per-slot std of the decryption error of a sum of ``n_summed`` fresh
    ciphertexts, in *scaled* units (divide by ``2**scale_bits`` for value units).
    See the module docstring; checked against measurement in ``tests/test_ckks_crypto.py``.
    """
    base = RLWE_SIGMA * math.sqrt(preset.poly_degree / 2)
    if preset.encryption == "public-key":
        base *= PUBLIC_KEY_NOISE_FACTOR
    return base * math.sqrt(max(1, n_summed))


def error_bound(preset: CkksPreset, n_summed: int, n_values: int, statistical_security: int) -> float:
    """High-probability bound ``B`` on every one of ``n_values`` decryption errors of sums of
    ``n_summed`` fresh ciphertexts, in scaled units: ``P(max |e_j| > B) <= 2**-statistical_security``.

    Assumption: each slot's error is a centred Gaussian of std :func:`noise_std` (the fresh
    error is a sum of many small independent terms, and the estimate is checked against
    measurement in ``tests/test_ckks_crypto.py``). Gaussian tail and a union bound over the
    values: ``P(|e| > B) <= 2 exp(-B²/2s²)``, so ``B = s·sqrt(2·(σ_stat·ln 2 + ln(2·n_values)))``.
    """
    if n_values < 1:
        raise ValueError(f"number of released values must be >= 1, found {n_values}")
    std = noise_std(preset, n_summed)
    return std * math.sqrt(2.0 * (statistical_security * math.log(2.0) + math.log(2.0 * n_values)))


def flooding_std(preset: CkksPreset, n_summed: int, n_values: int, statistical_security: int = 40) -> float:
    """Std of the Gaussian noise that floods ``n_values`` released decryptions (scaled units).

    Li, Micciancio, Schultz, Sorrell, "Securing Approximate Homomorphic Encryption Using
    Differential Privacy", CRYPTO 2022 (ePrint 2022/816), Sections 4-5: post-processing CKKS
    decryption with Gaussian noise gives IND-CPA^D security with ``s`` bits of statistical
    security against ``q`` released decryptions when ``σ >= sqrt(64·q)·2**(s/2)·E``, where
    ``E`` bounds the (ℓ2) norm of the decryption error of one query with high probability.
    Here a query is one released value (its error is bounded by :func:`error_bound` for all
    ``n_values`` of them at once), so ``σ = 8·sqrt(n_values)·2**(s/2)·B``; counting one
    query per released vector of ``m`` values with ``E = sqrt(m)·B`` gives the same σ.
    ``n_values`` must count every value released under the key set over its lifetime
    (values per round x rounds released): the guarantee holds for that many and no more.
    """
    if not isinstance(statistical_security, int) or statistical_security < 1:
        raise ValueError(f"statistical security must be a positive integer of bits, found {statistical_security!r}")
    bound = error_bound(preset, n_summed, n_values, statistical_security)
    return float(math.sqrt(64.0 * n_values) * 2.0 ** (statistical_security / 2) * bound)


PRESETS: dict[str, CkksPreset] = {
    p.name: p
    for p in (
        CkksPreset(
            "nvflare",
            8192,
            (60, 40, 40),
            encryption="public-key",
            scale_bits=40,
            note="NVFlare's HE parameters (reference point): public-key encryption, scale 2^40",
        ),
        CkksPreset(
            "compact",
            8192,
            (38, 38),
            note="one 38-bit data prime; 256-bit secure; the default",
        ),
        CkksPreset(
            "small",
            4096,
            (32, 32),
            note="one 32-bit data prime: zstd packs it in 4 bytes; 192-bit secure; coarser precision",
        ),
        CkksPreset(
            "wide",
            8192,
            (60, 40),
            note="one 60-bit data prime: room for noise flooding when the sum is released to the aggregator",
        ),
    )
}

DEFAULT_PRESET = "compact"
REFERENCE_PRESET = "nvflare"


def get_preset(name: str, where: str = "preset") -> CkksPreset:
    """Look a preset up by name; unknown names fail with the list of known ones."""
    try:
        return PRESETS[name]
    except KeyError:
        raise CkksParamError(f"{where}: unknown CKKS preset {name!r}; known presets are {sorted(PRESETS)}") from None
