"""Fixed-point encoding of weighted updates for a secure sum modulo 2^k.

Masking works on integers modulo 2^k (Bonawitz et al., CCS 2017, §3), so a site's float
update is turned into integers whose sum over all sites can never wrap around 2^k.

Encoding of one site (``values = weight * delta``, ``weight`` an integer count):

1. ``delta = values / weight`` is clipped per coordinate to ``[-clip_range, clip_range]``
   (the clipping range bounds the *unweighted* update, so it does not depend on how many
   examples a site holds);
2. ``q = round_stochastic((delta + clip_range) / step)`` with ``step = 2 clip_range / (2^bits - 1)``,
   so ``q`` is in ``[0, 2^bits - 1]`` and ``E[q * step - clip_range] = delta`` (unbiased
   stochastic rounding, Suresh et al., ICML 2017; the randomness comes from an injected
   ``np.random.Generator``: it is noise, not a secret);
3. the slot sent for each coordinate is ``weight * q + noise_bound + z`` where ``z`` is the
   optional integer noise of the DP layer (``|z| <= noise_bound``), and one extra slot
   carries ``weight`` exactly.

A site whose weight exceeds ``max_weight`` or is not an integer is refused, so every slot
is at most ``max_weight * (2^bits - 1) + 2 noise_bound`` and the sum of ``n_sites`` slots is
below ``2^k`` with ``k = ceil(log2(n_sites * slot_max + 1))``. A configuration needing
``k > 62`` is refused with its numbers (Fed-BioMed issue #1210 silently overflowed at 10
nodes); so is a zero clipping range (Flower issue #7633 divided by it).

Decoding the sum of ``m`` sites' slots ``S`` and weights ``W``:
``total = step * (S - m * noise_bound) - clip_range * W`` — the weighted sum of the
dequantized deltas (plus the DP noise times ``step``).

Distributed DP hook (Kairouz, Liu, Steinke, ICML 2021, "The distributed discrete Gaussian
mechanism"): a DP layer that wants each site to add its share of discrete noise passes
``add_integer_noise(dim, rng) -> int64 array`` to :meth:`Quantizer.encode` and declares
the bound ``noise_bound`` on ``|z|`` when building the :class:`Quantizer` (so k has room
for it). The noise is in units of ``step``; noise beyond the bound is refused, not wrapped.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from .prg import MAX_MODULUS_BITS, mask_dtype

__all__ = [
    "MAX_MODULUS_BITS",
    "MAX_BITS",
    "IntegerNoise",
    "Quantizer",
    "clip",
    "stochastic_round",
    "conditional_round",
    "rounded_norm_bound_sq",
    "to_wire",
    "from_wire",
    "wire_bytes_per_value",
]

MAX_BITS = 32

#: ``(dim, rng) -> int64 noise of shape (dim,)``, each entry within ``noise_bound``
IntegerNoise = Callable[[int, np.random.Generator], np.ndarray]


def clip(values: np.ndarray, clip_range: float) -> np.ndarray:
    """Clip every coordinate to ``[-clip_range, clip_range]``."""
    if not (isinstance(clip_range, (int, float)) and math.isfinite(clip_range) and clip_range > 0):
        raise ValueError(f"clip_range must be a finite number > 0, got {clip_range!r}")
    return np.clip(np.asarray(values, dtype=np.float64), -clip_range, clip_range)


def stochastic_round(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Round each entry up with probability equal to its fractional part (unbiased), as int64."""
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")
    x = np.asarray(x, dtype=np.float64)
    low = np.floor(x)
    up = rng.random(x.shape) < (x - low)
    out: np.ndarray = low.astype(np.int64)
    out += up
    return out


def rounded_norm_bound_sq(norm: float, dim: int, beta: float) -> int:
    """Integer bound on ``||round(x)||²`` for ``||x|| <= norm`` (grid units) under conditional rounding.

    Kairouz, Liu, Steinke, ICML 2021 ("The distributed discrete Gaussian mechanism", §4.1,
    Proposition 22): unbiased randomised rounding of ``x`` in ``R^d`` satisfies
    ``||x~||² <= norm² + d/4 + sqrt(2 ln(1/β)) (norm + sqrt(d)/2)`` with probability at least
    ``1 - β``, and always ``||x~|| <= norm + sqrt(d)``. Returns ⌊min of the two⌋ (``β = 0``: the
    second only). Squared norms of integer vectors are integers, so comparing with this
    integer is exact; the accountant charges ``sqrt`` of it.
    """
    if not (math.isfinite(norm) and norm >= 0):
        raise ValueError(f"norm must be a finite number >= 0, got {norm!r}")
    _int_in("dim", dim, 1, 2**40)
    if not (isinstance(beta, (int, float)) and 0 <= beta < 1):
        raise ValueError(f"beta must be in [0, 1), got {beta!r}")
    always = (norm + math.sqrt(dim)) ** 2
    if beta == 0:
        return math.floor(always)
    likely = norm**2 + dim / 4.0 + math.sqrt(2.0 * math.log(1.0 / beta)) * (norm + math.sqrt(dim) / 2.0)
    return math.floor(min(always, likely))


def conditional_round(x: np.ndarray, bound_sq: int, rng: np.random.Generator, max_tries: int = 1000) -> np.ndarray:
    """Unbiased randomised rounding to ``Z^d``, repeated until ``||result||² <= bound_sq`` (int64).

    Conditional randomised rounding of Kairouz, Liu, Steinke, ICML 2021, §4.1: the L2 bound
    that DP needs holds *exactly* for every released vector (checked on integers), whatever
    the float error of the scaling before it; plain :func:`stochastic_round` of a vector of
    norm C can reach ``C + sqrt(d)`` grid units. With ``bound_sq`` from
    :func:`rounded_norm_bound_sq` one try succeeds with probability ``>= 1 - β``. Raises
    ``ValueError`` after ``max_tries`` failures (the input norm exceeds what the bound was
    computed for). The rounding randomness needs no secrecy: the bound holds for every outcome.
    """
    if isinstance(bound_sq, bool) or not isinstance(bound_sq, (int, np.integer)) or bound_sq < 0:
        raise ValueError(f"bound_sq must be an integer >= 0, got {bound_sq!r}")
    v = np.asarray(x, dtype=np.float64)
    if not np.all(np.isfinite(v)):
        raise ValueError(f"values contain {int(np.sum(~np.isfinite(v)))} non-finite entries")
    if v.size and float(np.max(np.abs(v))) >= 2.0**52:
        raise ValueError(f"values reach {float(np.max(np.abs(v)))} >= 2^52 grid units: the grid is too fine")
    for _ in range(max_tries):
        r = stochastic_round(v, rng)
        top = int(np.max(np.abs(r))) if r.size else 0
        if (int(np.dot(r, r)) if top * top * r.size < 1 << 62 else _sq(r)) <= bound_sq:
            return r
    raise ValueError(
        f"conditional rounding: no rounding of a vector of norm {float(np.linalg.norm(v)):.6g} (grid units) met "
        f"||x||^2 <= {bound_sq} in {max_tries} tries"
    )


def _sq(r: np.ndarray) -> int:
    """Exact squared norm of an integer vector (Python integers, no int64 overflow)."""
    return sum(int(a) * int(a) for a in r.tolist())


def wire_bytes_per_value(modulus_bits: int) -> int:
    """Bytes per value on the wire: ceil(k / 8)."""
    return -(-modulus_bits // 8)


def to_wire(words: np.ndarray, modulus_bits: int) -> bytes:
    """Little-endian ``ceil(k/8)``-byte packing of words modulo 2^k."""
    dtype = mask_dtype(modulus_bits)
    width = wire_bytes_per_value(modulus_bits)
    arr = np.ascontiguousarray(words, dtype=dtype.newbyteorder("<"))
    if width == dtype.itemsize:
        return arr.tobytes()
    return arr.view(np.uint8).reshape(-1, dtype.itemsize)[:, :width].tobytes()


def from_wire(payload: bytes, modulus_bits: int, dim: int) -> np.ndarray:
    """Inverse of :func:`to_wire`; refuses a payload of the wrong length or with bits above k."""
    dtype = mask_dtype(modulus_bits)
    width = wire_bytes_per_value(modulus_bits)
    if len(payload) != width * dim:
        raise ValueError(
            f"packed vector has {len(payload)} bytes, expected {width * dim} ({dim} values x {width} bytes)"
        )
    raw = np.frombuffer(payload, dtype=np.uint8).reshape(dim, width)
    full = np.zeros((dim, dtype.itemsize), dtype=np.uint8)
    full[:, :width] = raw
    words = full.reshape(-1).view(dtype.newbyteorder("<")).astype(dtype)
    if modulus_bits < dtype.itemsize * 8 and np.any(words >> dtype.type(modulus_bits)):
        raise ValueError(f"packed vector has values at or above 2^{modulus_bits}")
    return words


@dataclass(frozen=True)
class Quantizer:
    """Encoder of weighted updates into integers modulo ``2**modulus_bits`` (see module doc)."""

    bits: int
    clip_range: float
    max_weight: int
    n_sites: int
    noise_bound: int = 0
    modulus_bits: int = field(init=False)

    def __post_init__(self) -> None:
        _int_in("bits", self.bits, 1, MAX_BITS)
        if (
            isinstance(self.clip_range, bool)
            or not isinstance(self.clip_range, (int, float))
            or not math.isfinite(self.clip_range)
        ):
            raise ValueError(f"clip_range must be a finite number > 0, got {self.clip_range!r}")
        if self.clip_range <= 0:
            raise ValueError(f"clip_range must be > 0 (a zero range would divide by zero), got {self.clip_range!r}")
        _int_in("max_weight", self.max_weight, 1, 2**62)
        _int_in("n_sites", self.n_sites, 1, 2**31)
        _int_in("noise_bound", self.noise_bound, 0, 2**62)
        total_max = self.n_sites * max(self.slot_max, self.max_weight)
        k = max(1, total_max.bit_length())  # smallest k with total_max < 2^k
        if k > MAX_MODULUS_BITS:
            raise ValueError(
                f"the sum cannot fit a modulus of at most 2^{MAX_MODULUS_BITS}: n_sites={self.n_sites} x "
                f"(max_weight={self.max_weight} x (2^bits - 1 = {self.levels}) + 2 x noise_bound={self.noise_bound}) "
                f"= {total_max} needs k = {k} bits; lower bits, max_weight or the number of sites"
            )
        object.__setattr__(self, "modulus_bits", k)

    @property
    def levels(self) -> int:
        """Largest quantized unweighted value, 2^bits - 1."""
        return (1 << self.bits) - 1

    @property
    def step(self) -> float:
        """Float value of one quantization level."""
        return 2.0 * self.clip_range / self.levels

    @property
    def slot_max(self) -> int:
        """Largest value one site may put in one coordinate slot."""
        return self.max_weight * self.levels + 2 * self.noise_bound

    @property
    def dtype(self) -> np.dtype:
        return mask_dtype(self.modulus_bits)

    @property
    def modulus_mask(self) -> int:
        return (1 << self.modulus_bits) - 1

    def check_weight(self, weight: float) -> int:
        """The weight as an exact integer in ``[0, max_weight]``; ``ValueError`` naming it otherwise."""
        if isinstance(weight, bool) or not isinstance(weight, (int, float, np.integer, np.floating)):
            raise ValueError(f"weight must be a number, got {type(weight).__name__}")
        w = float(weight)
        if not math.isfinite(w) or w < 0:
            raise ValueError(f"weight must be finite and >= 0, got {weight!r}")
        if w != round(w):
            raise ValueError(f"weight must be an integer count (examples, or 1 for uniform weighting), got {weight!r}")
        if w > self.max_weight:
            raise ValueError(f"weight {int(w)} exceeds max_weight = {self.max_weight}")
        return int(w)

    def check(self, values: np.ndarray, weight: float, dim: int | None = None) -> None:
        """What :meth:`encode` would refuse in ``values`` and ``weight`` (shape, non-finite entries, weight),
        without encoding: ``ValueError`` naming it. ``dim``: the number of values the run expects."""
        self.check_weight(weight)
        shape = np.shape(values)
        if len(shape) != 1:
            raise ValueError(f"values must be a 1-D vector, got shape {shape}")
        if dim is not None and shape[0] != dim:
            raise ValueError(f"update has {shape[0]} values, the run expects dim = {dim}")
        bad = int(np.count_nonzero(~np.isfinite(values)))
        if bad:
            raise ValueError(f"values contain {bad} non-finite entries")

    def encode(
        self,
        values: np.ndarray,
        weight: float,
        rng: np.random.Generator,
        add_integer_noise: IntegerNoise | None = None,
    ) -> np.ndarray:
        """Slots of one site: ``dim`` coordinates then the weight, as words modulo 2^k."""
        w = self.check_weight(weight)
        x = np.asarray(values, dtype=np.float64)
        if x.ndim != 1:
            raise ValueError(f"values must be a 1-D vector, got shape {x.shape}")
        if not np.all(np.isfinite(x)):
            raise ValueError(f"values contain {int(np.sum(~np.isfinite(x)))} non-finite entries")
        scaled = clip(x / w, self.clip_range) if w > 0 else np.zeros_like(x)
        scaled += self.clip_range
        scaled *= 1.0 / self.step
        q = stochastic_round(scaled, rng)
        np.clip(q, 0, self.levels, out=q)  # float error at the top edge cannot leave the range
        if w != 1:
            q *= w
        slots = q + self.noise_bound if self.noise_bound else q
        if add_integer_noise is not None:
            z = np.asarray(add_integer_noise(x.shape[0], rng))
            if z.shape != x.shape or not np.issubdtype(z.dtype, np.integer):
                raise ValueError(f"integer noise must be an integer array of shape {x.shape}, got {z.dtype} {z.shape}")
            worst = int(np.max(np.abs(z))) if z.size else 0
            if worst > self.noise_bound:
                raise ValueError(f"integer noise reaches {worst}, beyond noise_bound = {self.noise_bound}")
            slots = slots + z.astype(np.int64)
        out = np.empty(x.shape[0] + 1, dtype=self.dtype)
        out[:-1] = slots
        out[-1] = w
        return out

    def decode(self, total: np.ndarray, n_contributors: int) -> tuple[np.ndarray, int]:
        """Weighted float sum and integer total weight from the slot sum of ``n_contributors`` sites."""
        _int_in("n_contributors", n_contributors, 0, self.n_sites)
        t = np.asarray(total)
        if t.ndim != 1 or t.shape[0] < 1:
            raise ValueError(f"slot sum must be a 1-D vector with the weight slot last, got shape {t.shape}")
        weight = int(t[-1])
        if weight > n_contributors * self.max_weight:
            raise ValueError(f"decoded weight {weight} exceeds {n_contributors} x max_weight: the sum is corrupt")
        s = t[:-1].astype(np.int64) - n_contributors * self.noise_bound
        return s.astype(np.float64) * self.step - self.clip_range * weight, weight


def _int_in(name: str, value: object, lo: int, hi: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not lo <= value <= hi:
        raise ValueError(f"{name} must be an integer in [{lo}, {hi}], got {value!r}")
