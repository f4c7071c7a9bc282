"""The distributed discrete Gaussian (DDG): parameters, accounting and the public rotation.

Kairouz, Liu, Steinke, "The Distributed Discrete Gaussian Mechanism for Federated Learning
with Secure Aggregation", ICML 2021 (arXiv:2102.06387). Each site clips its update to L2
norm C, rotates it with a public random rotation, scales it to units of the grid γ,
rounds it *conditionally* (randomised rounding repeated until the squared norm is at most
Δ², §4.1; :func:`secure_fl.crypto.quantize.conditional_round`), adds an integer noise share
``N_Z(0, σ_s²)`` and sends the result into an integer secure sum (SecAgg+ modulo 2^k). The
sum of the honest shares is *not* a discrete Gaussian; their Theorem 1 bounds how far it is:

    for n independent shares of N_Z(0, σ_s²) and integer vectors at L2 distance <= Δ2 and
    L1 distance <= Δ1, the sum is (½ ε²)-concentrated DP (zCDP) with
        ε = min( sqrt(Δ2²/(nσ_s²) + 2τ Δ1/(sqrt(n) σ_s) + τ² d),  Δ2/(sqrt(n) σ_s) + τ sqrt(d) ),
        τ = 10 Σ_{k=1}^{n-1} exp(-2π² σ_s² k/(k+1))

(the two pure-zCDP branches of their Proposition 14 / Eq. 17; the third branch, with an
additive τd, is not of the form αρ and is not used). Integer vectors give Δ1 <= min(√d Δ2,
Δ2²). Hence :func:`ddg_rho` = ε²/2, and :func:`ddg_event` describes one release as
``GaussianDpEvent(1/sqrt(2ρ))``: that event's Rényi curve is exactly αρ, so it bounds the
DDG at every order and dp_accounting's RDP accountant gives a valid ε. The PLD accountant
would compute the *continuous* Gaussian's privacy profile, which ρ-zCDP does not imply: use
``accountant = "rdp"`` for this event (the mechanism enforces it).

Assumptions the guarantee rests on: at least ``n`` honest sites each add their share (the
shares of colluding sites are known to the adversary and count for nothing); the rounded
vector of the one differing site has ||x~||² <= Δ² (enforced exactly on integers); the
adjacency is *zero-out* (one site's update replaced by zero, which rounds to zero), the
number of contributors being public. Shares are truncated at ±B (:func:`secure_fl.privacy.
discrete_gaussian.tail_bound`) so the sum fits the modulus; the truncated shares are at total
variation <= d·2^-80 each from the analysed ones, which adds at most
``(1 + e^ε) · rounds · sites · d · 2^-80`` to δ.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from fractions import Fraction

import numpy as np
from dp_accounting import dp_event

from ..crypto.quantize import rounded_norm_bound_sq
from ..errors import InvalidParameter
from .discrete_gaussian import sample_discrete_gaussian, tail_bound, variance_at_least
from .noise import NoiseSource

__all__ = ["TRUNCATION_LOG2", "ddg_tau", "ddg_rho", "ddg_event", "DdgParams", "hadamard_rotate"]

#: per-coordinate probability 2^-80 that a share is beyond its truncation bound
TRUNCATION_LOG2 = 80.0


def ddg_tau(share_sigma: float, n: int) -> float:
    """τ = 10 Σ_{k=1}^{n-1} exp(-2π² σ_s² k/(k+1)) (Kairouz et al. 2021, Theorem 1)."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"number of honest shares must be an integer >= 1, found {n!r}")
    if not (math.isfinite(share_sigma) and share_sigma >= 0.5):
        raise ValueError(f"share standard deviation must be >= 1/2 (Theorem 1 of Kairouz et al.), "
                         f"found {share_sigma!r}")
    return 10.0 * sum(math.exp(-2.0 * math.pi**2 * share_sigma**2 * k / (k + 1)) for k in range(1, n))


def ddg_rho(l2: float, l1: float, share_sigma: float, n: int, dim: int) -> float:
    """zCDP ρ of one release of the sum of ``n`` shares N_Z(0, σ_s²) (integer units; see module doc)."""
    for name, v in (("l2", l2), ("l1", l1)):
        if not (math.isfinite(v) and v > 0):
            raise ValueError(f"{name} sensitivity must be a finite number > 0, found {v!r}")
    if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
        raise ValueError(f"dimension must be an integer >= 1, found {dim!r}")
    tau = ddg_tau(share_sigma, n)
    total = math.sqrt(n) * share_sigma
    a, b = l2 / total, l1 / total
    eps_sq = min(a * a + 2.0 * tau * b + tau * tau * dim, (a + tau * math.sqrt(dim)) ** 2)
    return 0.5 * eps_sq


def ddg_event(rho: float) -> dp_event.DpEvent:
    """``GaussianDpEvent`` with the same zCDP ρ: noise multiplier 1/sqrt(2ρ) (valid under the RDP accountant)."""
    if not (math.isfinite(rho) and rho > 0):
        raise ValueError(f"ρ must be a finite number > 0, found {rho!r}")
    return dp_event.GaussianDpEvent(1.0 / math.sqrt(2.0 * rho))


@dataclass(frozen=True)
class DdgParams:
    """One site's DDG parameters for a release of dimension ``dim`` on the grid ``grid``.

    ``noise_multiplier`` σ sets the total noise of ``min_shares`` honest shares to σC (float
    units), so the shares have variance ``(σ C/γ)² / n`` in grid units, rounded *up* to a
    rational (:func:`variance_at_least`). ``beta`` is the conditional-rounding parameter.
    """

    clip: float
    grid: float
    dim: int
    noise_multiplier: float
    min_shares: int
    beta: float = math.exp(-0.5)
    share_variance: Fraction = field(init=False)
    bound_sq: int = field(init=False)

    def __post_init__(self) -> None:
        """The one validation of the parameters (:class:`~secure_fl.errors.InvalidParameter` naming the field;
        the spec layer maps fields to its keys with :func:`secure_fl.speccheck.build`)."""
        for name in ("clip", "grid", "noise_multiplier"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not (math.isfinite(v) and v > 0):
                raise InvalidParameter(name, f"{name} must be a finite number > 0", v)
        if isinstance(self.min_shares, bool) or not isinstance(self.min_shares, int) or self.min_shares < 1:
            raise InvalidParameter("min_shares", "min_shares must be an integer >= 1", self.min_shares)
        target = (self.noise_multiplier * self.clip / self.grid) ** 2 / self.min_shares
        if target < 0.25:
            raise InvalidParameter(
                "",
                f"each share would have σ_s = {math.sqrt(target):.3g} < 1/2 grid unit: use a finer grid "
                "(more bits or a smaller clip_range) or more noise",
            )
        object.__setattr__(self, "share_variance", variance_at_least(target))
        object.__setattr__(self, "bound_sq", rounded_norm_bound_sq(self.clip / self.grid, self.dim, self.beta))

    @property
    def share_sigma(self) -> float:
        return math.sqrt(self.share_variance)

    @property
    def l2(self) -> float:
        """L2 sensitivity in grid units: sqrt of the enforced squared-norm bound."""
        return math.sqrt(self.bound_sq)

    @property
    def l1(self) -> float:
        """L1 sensitivity of an integer vector with ||v||² <= Δ²: min(√d Δ, Δ²)."""
        return min(math.sqrt(self.dim) * self.l2, float(self.bound_sq))

    @property
    def noise_bound(self) -> int:
        """Truncation bound B of one share: P[|z| > B] <= 2^-80 per coordinate."""
        return tail_bound(self.share_sigma, TRUNCATION_LOG2)

    @property
    def rho(self) -> float:
        return ddg_rho(self.l2, self.l1, self.share_sigma, self.min_shares, self.dim)

    def event(self) -> dp_event.DpEvent:
        """The dp_accounting event of one release (zero-out adjacency, one site)."""
        return ddg_event(self.rho)

    @property
    def effective_noise_multiplier(self) -> float:
        """1/sqrt(2ρ): the continuous-Gaussian noise multiplier with the same ρ (a little below σ: Δ >= C/γ, τ > 0)."""
        return 1.0 / math.sqrt(2.0 * self.rho)

    def share(self, dim: int, source: NoiseSource) -> np.ndarray:
        """One site's noise share: N_Z(0, σ_s²) per coordinate, resampled beyond ±B (int64)."""
        z = sample_discrete_gaussian(self.share_variance, dim, source)
        b = self.noise_bound
        out = np.abs(z) > b
        while np.any(out):  # probability <= d·2^-80: the truncated share of the module docstring
            z[out] = sample_discrete_gaussian(self.share_variance, int(out.sum()), source)
            out = np.abs(z) > b
        return z


def _fwht(block: np.ndarray) -> np.ndarray:
    """Orthonormal Walsh–Hadamard transform of the last axis (length a power of two)."""
    n = block.shape[-1]
    a = block.astype(np.float64, copy=True)
    h = 1
    while h < n:
        v = a.reshape(-1, 2, h)
        a = np.stack((v[:, 0, :] + v[:, 1, :], v[:, 0, :] - v[:, 1, :]), axis=1).reshape(n)
        h *= 2
    return a / math.sqrt(n)


def hadamard_rotate(x: np.ndarray, seed: int, *, inverse: bool = False) -> np.ndarray:
    """Randomised Hadamard rotation ``H D x`` with public random signs D (Kairouz et al. 2021, §4.2).

    Works for any dimension: the vector is cut into blocks whose sizes are the powers of two
    of d's binary expansion, each block rotated on its own (block-diagonal, still orthogonal,
    so norms are preserved exactly up to float error; the conditional rounding after it
    enforces the bound on integers anyway). The seed is public and the same at every site
    of a round, so the released sum can be rotated back (``inverse=True``: ``D H y``).
    """
    v = np.asarray(x, dtype=np.float64)
    if v.ndim != 1:
        raise ValueError(f"rotation needs a 1-D vector, found shape {v.shape}")
    d = v.shape[0]
    signs = np.where(np.random.default_rng(np.random.SeedSequence([int(seed), d])).random(d) < 0.5, -1.0, 1.0)
    out = np.empty(d, dtype=np.float64)
    start = 0
    for bit in reversed(range(d.bit_length())):
        size = 1 << bit
        if not d & size:
            continue
        part = slice(start, start + size)
        out[part] = signs[part] * _fwht(v[part]) if inverse else _fwht(signs[part] * v[part])
        start += size
    return out
