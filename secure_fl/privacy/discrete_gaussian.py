"""Exact sampling of the discrete Gaussian, and the Gaussian mechanism on a public grid.

Canonne, Kamath, Steinke, "The Discrete Gaussian for Differential Privacy", NeurIPS 2020
(arXiv:2004.00010), §5: the discrete Gaussian ``N_Z(0, σ²)`` has ``P[X = x] ∝ exp(-x²/(2σ²))``
on the integers, and can be sampled *exactly* from uniform integers with rational
arithmetic only, so no floating-point value ever decides an outcome:

* Algorithm 1, :func:`bernoulli_exp`: Bernoulli(exp(-γ)) for a rational γ = num/den >= 0.
  For γ <= 1 draw A_k ~ Bernoulli(γ/k) for k = 1, 2, ... until the first A_k = 0 and return
  whether that k is odd (P = Σ_j (-γ)^j / j! = e^-γ); for γ > 1 multiply ⌊γ⌋ independent
  Bernoulli(e^-1) draws by one Bernoulli(e^-(γ-⌊γ⌋)). Bernoulli(γ/k) is drawn as
  Bernoulli(num/den) AND Bernoulli(1/k) (a product of independent events), so every uniform
  integer has a bound below den or k and the arithmetic stays within int64.
* Algorithm 2, :func:`discrete_laplace`: ``P[Y = y] ∝ exp(-|y|/t)`` for an integer t >= 1
  (their s = 1): U uniform in [0, t) kept with probability e^(-U/t), V the number of
  Bernoulli(e^-1) successes before the first failure, a fair sign, rejecting "-0".
* Algorithm 3, :func:`sample_discrete_gaussian`: Y from the discrete Laplace of scale t,
  accepted with probability exp(-(|Y| - σ²/t)² / (2σ²)). The accepted Y has
  ``P ∝ exp(-|y|/t - (|y| - σ²/t)²/(2σ²)) ∝ exp(-y²/(2σ²))`` for *any* integer t >= 1
  (they take t = ⌊σ⌋ + 1 for speed; so do we, or a power of two in (σ, 2σ] for large σ).

The lanes of a batch run the same loops in parallel (numpy masks over the lanes still
undecided); every decision compares a uniform integer from :meth:`NoiseSource.integers_below`
with an integer, so the output distribution is exactly ``N_Z(0, σ²)`` given a uniform source.
Randomness comes from an injected :class:`~secure_fl.privacy.noise.NoiseSource`: the OS
CSPRNG (``secrets``) in production, a seeded generator in tests. σ² is a rational
(:class:`fractions.Fraction`); :func:`variance_at_least` turns a float σ² into the nearest
rational *at or above* it with a small denominator, so a mechanism never adds less noise than
it accounts for. The sampler is not constant-time (timing side channels are out of scope).

:func:`grid_gaussian` is the Gaussian mechanism without floating-point noise (the fix of
Mironov, CCS 2012, "On significance of the least significant bits for DP", and Jin et al.,
S&P 2022): the input is put on the public grid ``grid · Z^d`` by conditional randomised
rounding (Kairouz, Liu, Steinke 2021, §4.1; :func:`secure_fl.crypto.quantize.conditional_round`),
discrete Gaussian noise is added *in integers*, and the result is ``grid × integer``, exact in
float64. The output is a function of the noisy integer vector only: its low-order bits
carry nothing. Privacy: ρ-zCDP with ρ = Δ²/(2σ²) in grid units (Canonne et al., §3, the
multivariate discrete Gaussian), Δ the rounded-norm bound that the rounding enforces exactly.
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np

from .noise import NoiseSource

__all__ = [
    "bernoulli_exp",
    "discrete_laplace",
    "sample_discrete_gaussian",
    "discrete_gaussian_pmf",
    "variance_at_least",
    "tail_bound",
    "grid_gaussian",
]

#: largest denominator of σ² that :func:`variance_at_least` produces (keeps 2 σ² den t² < 2^62)
_VARIANCE_DENOMINATOR = 1 << 8
_INT64_SAFE = 1 << 62


def _as_int64(values: object, name: str) -> np.ndarray:
    arr = np.asarray(values)
    if not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"{name} must be integers, found dtype {arr.dtype}")
    return arr.astype(np.int64)


def _bernoulli_ratio(num: np.ndarray, den: np.ndarray, source: NoiseSource) -> np.ndarray:
    """Bernoulli(num/den) per lane, 0 <= num <= den < 2^62: a uniform integer below den compared with num."""
    return source.integers_below(den) < num


def _bernoulli_exp_fraction(num: np.ndarray, den: np.ndarray, source: NoiseSource) -> np.ndarray:
    """Bernoulli(exp(-num/den)) for 0 <= num <= den (Canonne et al., Algorithm 1, γ in [0, 1])."""
    n = num.shape[0]
    out = np.empty(n, dtype=bool)
    k = np.ones(n, dtype=np.int64)
    lanes = np.arange(n)
    while lanes.size:
        # A_k ~ Bernoulli(γ/k) = Bernoulli(num/den) AND Bernoulli(1/k)
        a = _bernoulli_ratio(num[lanes], den[lanes], source)
        kl = k[lanes]
        more = kl > 1
        if np.any(more):
            a[more] &= source.integers_below(kl[more]) == 0
        stop = ~a
        out[lanes[stop]] = (kl[stop] & 1) == 1
        lanes = lanes[a]
        k[lanes] += 1
    return out


def bernoulli_exp(num: np.ndarray, den: np.ndarray, source: NoiseSource) -> np.ndarray:
    """Exact Bernoulli(exp(-num/den)) per lane, for integers num >= 0 and 1 <= den < 2^62.

    Canonne, Kamath, Steinke 2020, Algorithm 1 (see the module docstring).
    """
    num, den = _as_int64(num, "num").reshape(-1), _as_int64(den, "den").reshape(-1)
    if num.shape != den.shape:
        raise ValueError(f"num and den must have the same shape, found {num.shape} and {den.shape}")
    if num.size and (int(num.min()) < 0 or int(den.min()) < 1 or int(den.max()) >= _INT64_SAFE):
        raise ValueError(f"need num >= 0 and 1 <= den < 2^62, found num min {int(num.min())}, den in "
                         f"[{int(den.min())}, {int(den.max())}]")
    whole, frac = np.divmod(num, den)
    return _bernoulli_exp_split(whole, frac, den, source)


def _bernoulli_exp_split(whole: np.ndarray, frac: np.ndarray, den: np.ndarray, source: NoiseSource) -> np.ndarray:
    """Bernoulli(exp(-(whole + frac/den))) per lane, 0 <= frac < den (int64 arrays)."""
    out = np.ones(whole.shape[0], dtype=bool)
    lanes = np.nonzero(whole > 0)[0]
    left = whole[lanes]
    while lanes.size:  # ⌊γ⌋ Bernoulli(e^-1) draws; a lane stops at its first failure
        ones = np.ones(lanes.size, dtype=np.int64)
        ok = _bernoulli_exp_fraction(ones, ones, source)
        out[lanes[~ok]] = False
        lanes, left = lanes[ok], left[ok] - 1
        keep = left > 0
        lanes, left = lanes[keep], left[keep]
    alive = np.nonzero(out)[0]
    out[alive] = _bernoulli_exp_fraction(frac[alive], den[alive], source)
    return out


def _bernoulli_exp_scalar(num: int, den: int, source: NoiseSource) -> bool:
    """Bernoulli(exp(-num/den)) for Python integers of any size (the rare lanes that overflow int64)."""
    whole, frac = divmod(num, den)
    for _ in range(whole):
        if not bool(bernoulli_exp(np.ones(1, np.int64), np.ones(1, np.int64), source)[0]):
            return False
    if frac == 0:
        return True
    # reduce frac/den to a denominator below 2^62 without changing the probability: exact while den < 2^62
    g = math.gcd(frac, den)
    frac, den = frac // g, den // g
    if den >= _INT64_SAFE:
        raise ValueError(f"rational exponent {frac}/{den} needs a denominator below 2^62")
    return bool(bernoulli_exp(np.array([frac], np.int64), np.array([den], np.int64), source)[0])


def discrete_laplace(t: int, size: int, source: NoiseSource) -> np.ndarray:
    """Exact samples of ``P[Y = y] ∝ exp(-|y|/t)`` on the integers (Canonne et al., Algorithm 2, s = 1)."""
    if isinstance(t, bool) or not isinstance(t, int) or not 1 <= t < 1 << 31:
        raise ValueError(f"discrete Laplace scale t must be an integer in [1, 2^31), found {t!r}")
    out = np.empty(size, dtype=np.int64)
    todo = np.arange(size)
    while todo.size:
        m = todo.size
        u = source.integers_below(np.full(m, t, dtype=np.int64))
        keep = bernoulli_exp(u, np.full(m, t, dtype=np.int64), source)
        idx = np.nonzero(keep)[0]
        # V = number of Bernoulli(e^-1) successes before the first failure
        v = np.zeros(idx.size, dtype=np.int64)
        lanes = np.arange(idx.size)
        one = np.ones(1, dtype=np.int64)
        while lanes.size:
            ok = bernoulli_exp(np.repeat(one, lanes.size), np.repeat(one, lanes.size), source)
            lanes = lanes[ok]
            v[lanes] += 1
        x = u[idx] + t * v
        negative = source.integers_below(np.full(idx.size, 2, dtype=np.int64)) == 1
        good = ~(negative & (x == 0))
        out[todo[idx[good]]] = np.where(negative, -x, x)[good]
        done = np.zeros(m, dtype=bool)
        done[idx[good]] = True
        todo = todo[~done]
    return out


def _check_variance(sigma2: Fraction | int) -> Fraction:
    if isinstance(sigma2, bool) or not isinstance(sigma2, (int, Fraction)):
        raise ValueError(f"σ² must be an int or a fractions.Fraction (exact), found {type(sigma2).__name__} "
                         f"{sigma2!r}; use variance_at_least(float) to round a float up")
    s = Fraction(sigma2)
    if s <= 0:
        raise ValueError(f"σ² must be > 0, found {s}")
    return s


def sample_discrete_gaussian(sigma2: Fraction | int, size: int, source: NoiseSource) -> np.ndarray:
    """``size`` exact samples of the discrete Gaussian ``N_Z(0, σ²)`` as int64 (Canonne et al., Algorithm 3).

    ``sigma2`` is exact (int or Fraction). The acceptance exponent is the rational
    ``(μd|Y| - μn)² · sd/g / (2 sn μd² / g)`` with μ = σ²/t = μn/μd reduced; its denominator must
    stay below 2^62. :func:`variance_at_least` produces values for which it does at every σ up to
    ~10^9: small σ² with denominator 256, large σ² = 2^k·m with 2^k the scale t (then μd = 1).
    """
    s = _check_variance(sigma2)
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 0:
        raise ValueError(f"size must be an integer >= 0, found {size!r}")
    sn, sd = s.numerator, s.denominator
    floor_sigma = math.isqrt(sn // sd)
    t = floor_sigma + 1  # Canonne et al.'s choice; any integer t >= 1 is exact
    if sd == 1 and sn % (1 << floor_sigma.bit_length()) == 0:
        t = 1 << floor_sigma.bit_length()  # in (σ, 2σ]: μ = σ²/t is an integer and the exponent stays small
    mu = Fraction(sn, sd * t)
    mn, md = mu.numerator, mu.denominator
    g = math.gcd(sd, 2 * md * md)
    den, mult = 2 * sn * md * md // g, sd // g
    if den >= _INT64_SAFE:
        raise ValueError(f"σ² = {sn}/{sd} is too large or too finely given for exact int64 sampling "
                         f"(exponent denominator {den} >= 2^62); round it with variance_at_least")
    out = np.empty(int(size), dtype=np.int64)
    todo = np.arange(int(size))
    while todo.size:
        y = discrete_laplace(t, todo.size, source)
        # γ = (|Y| - μ)² / (2σ²) = a²·mult / den with a = μd·|Y| - μn; a² may exceed int64, so the
        # split into ⌊γ⌋ and (a² mult mod den) / den is done on Python integers (exact)
        a = md * np.abs(y).astype(object) - mn
        sq = a * a * mult
        whole, frac = sq // den, sq % den
        small = np.array([w < _INT64_SAFE for w in whole], dtype=bool)
        accept = np.zeros(todo.size, dtype=bool)
        if np.any(small):
            accept[small] = _bernoulli_exp_split(whole[small].astype(np.int64), frac[small].astype(np.int64),
                                                 np.full(int(small.sum()), den, dtype=np.int64), source)
        for i in np.nonzero(~small)[0]:  # γ >= 2^62: needs that many Bernoulli(e^-1) successes
            accept[i] = _bernoulli_exp_scalar(int(a[i]) * int(a[i]) * mult, den, source)
        out[todo[accept]] = y[accept]
        todo = todo[~accept]
    return out


def discrete_gaussian_pmf(sigma2: float, support: np.ndarray) -> np.ndarray:
    """``P[X = x]`` of ``N_Z(0, σ²)`` at the integers ``support`` (float64; the normaliser summed to 40σ)."""
    s2 = float(sigma2)
    reach = int(40 * math.sqrt(s2)) + 40
    grid = np.arange(-reach, reach + 1, dtype=np.float64)
    z = float(np.exp(-grid * grid / (2 * s2)).sum())
    x = np.asarray(support, dtype=np.float64)
    return np.exp(-x * x / (2 * s2)) / z


def variance_at_least(sigma2: float, denominator: int = _VARIANCE_DENOMINATOR) -> Fraction:
    """An exact σ'² >= the float ``sigma2`` (exact comparison) that :func:`sample_discrete_gaussian` handles.

    Up to 2^22: the smallest multiple of 1/``denominator`` (relative excess < 2^-8/σ²). Above: the
    smallest 2^k·m >= σ² with 2^k the power of two in (σ', 2σ'] (relative excess < 2/σ < 2^-10).
    A mechanism that accounts for σ² samples with this value, so it never adds less noise
    than it charges for.
    """
    if not (isinstance(sigma2, (int, float)) and math.isfinite(sigma2) and sigma2 > 0):
        raise ValueError(f"σ² must be a finite number > 0, found {sigma2!r}")
    exact = Fraction(sigma2)  # the float's exact value
    if exact <= 1 << 22:
        return Fraction(math.ceil(exact * denominator), denominator)
    k = math.isqrt(math.ceil(exact)).bit_length()
    while True:
        value = (1 << k) * math.ceil(exact / (1 << k))
        if math.isqrt(value).bit_length() == k:
            return Fraction(value)
        k += 1


def tail_bound(sigma: float, log2_failure: float = 60.0) -> int:
    """An integer B with ``P[|X| > B] <= 2^-log2_failure`` for X ~ N_Z(0, σ²).

    The discrete Gaussian is sub-Gaussian with parameter σ (Canonne et al. 2020, §2:
    ``E[e^(λX)] <= e^(λ²σ²/2)``), hence ``P[X >= t] <= exp(-t²/(2σ²))``, so both tails together are below
    ``2 exp(-B²/(2σ²))``.
    """
    if not (math.isfinite(sigma) and sigma > 0):
        raise ValueError(f"σ must be finite and > 0, found {sigma!r}")
    return math.ceil(sigma * math.sqrt(2.0 * (log2_failure + 1.0) * math.log(2.0)))


def grid_gaussian(
    values: np.ndarray,
    *,
    std: float,
    grid: float,
    l2_bound: float,
    source: NoiseSource,
    rng: np.random.Generator,
    beta: float = math.exp(-0.5),
) -> tuple[np.ndarray, float]:
    """The Gaussian mechanism on the public grid ``grid · Z^d``, with no floating-point noise.

    ``values`` (L2 norm at most ``l2_bound`` by the caller's clipping) is divided by ``grid``
    and conditionally rounded to integers of squared norm at most ``Δ²`` (Kairouz et al. 2021,
    §4.1 and Proposition 22; :func:`secure_fl.crypto.quantize.conditional_round`), then integer noise
    ``N_Z(0, σ²)`` with ``σ² >= (std/grid)²`` (exact, :func:`sample_discrete_gaussian`) is
    added *in integers*. Returns ``(grid · noisy integers, Δ·grid)``: the output is a multiple of
    the grid (exact in float64 while |integers| < 2^53, checked), and ``Δ·grid`` is the L2
    sensitivity the caller must charge (≥ ``l2_bound``; zero-out adjacency, the zero update
    rounds to zero). Randomised rounding draws from ``rng`` (it needs no secrecy: the bound
    holds for every outcome); the noise from ``source``.
    """
    from ..crypto.quantize import conditional_round, rounded_norm_bound_sq

    if not (math.isfinite(grid) and grid > 0):
        raise ValueError(f"grid must be a finite number > 0, found {grid!r}")
    if not (math.isfinite(std) and std > 0):
        raise ValueError(f"noise std must be a finite number > 0, found {std!r}")
    x = np.asarray(values, dtype=np.float64)
    bound_sq = rounded_norm_bound_sq(l2_bound / grid, x.shape[0], beta)
    ints = conditional_round(x / grid, bound_sq, rng)
    noisy = ints + sample_discrete_gaussian(variance_at_least((std / grid) ** 2), x.shape[0], source)
    if noisy.size and int(np.max(np.abs(noisy))) >= 1 << 53:
        raise ValueError(f"noisy integers reach {int(np.max(np.abs(noisy)))} >= 2^53: the grid {grid} is too fine")
    return noisy.astype(np.float64) * grid, math.sqrt(bound_sq) * grid
