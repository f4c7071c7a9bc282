"""Clipping and Gaussian noise: the pure math of DP-FedAvg and of distributed noise.

References:

* McMahan, Ramage, Talwar, Zhang, "Learning Differentially Private Recurrent Language
  Models", ICLR 2018 (DP-FedAvg: clip each update to an L2 bound, add Gaussian noise to the
  sum, divide by a fixed denominator).
* Andrew, Thakkar, McMahan, Ramaswamy, "Differentially Private Learning with Adaptive
  Clipping", NeurIPS 2021 (Algorithm 1: geometric update of the clip norm towards a target
  quantile of update norms, from a noised count of unclipped updates; Theorem 1: how the
  noise multiplier is split between the update and the count).
* Kairouz, Liu, Steinke, "The Distributed Discrete Gaussian Mechanism for Federated
  Learning with Secure Aggregation", ICML 2021 (each of n sites adds a share of the noise
  variance so that the *sum* carries the full noise; discrete noise for integer secure
  sums). Here the shares are ``1/(m−1)`` of the variance, so that the sum minus one curious
  site's own share still carries the full noise (:func:`share_std`).

Nothing here knows about sites, rounds or transports (docs/architecture.md, "Math is separate").
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..errors import InvalidParameter
from .noise import NoiseSource

__all__ = [
    "clip_l2",
    "gaussian_noise",
    "share_std",
    "effective_noise_multiplier",
    "split_noise_multiplier",
    "AdaptiveClip",
]


def _positive(name: str, value: float, key: str = "") -> None:
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
        raise InvalidParameter(key, f"{name} must be a finite number > 0", value)


def clip_l2(vector: np.ndarray, bound: float) -> tuple[np.ndarray, float]:
    """Scale ``vector`` so its L2 norm is at most ``bound``; return it with the norm *before* clipping.

    ``x · min(1, C / ||x||)``: the clipped vector lies in the ball of radius C, so changing
    one contributor changes a sum of clipped vectors by at most C (add/remove) or 2C
    (replace). A non-finite vector is refused rather than silently clipped to NaN.
    """
    _positive("clip bound", bound)
    v = np.asarray(vector, dtype=np.float64)
    if not np.all(np.isfinite(v)):
        raise ValueError("cannot clip a vector with non-finite entries")
    norm = float(np.linalg.norm(v))
    if norm <= bound:
        return v.copy(), norm
    return v * (bound / norm), norm


def gaussian_noise(source: NoiseSource, std: float, dim: int) -> np.ndarray:
    """``dim`` independent N(0, std²) draws from ``source`` (see :mod:`.noise` for which source when)."""
    return source.normal(std, dim)


def _min_sites(min_sites: int) -> None:
    if isinstance(min_sites, bool) or not isinstance(min_sites, int) or min_sites < 2:
        raise ValueError(f"min_sites must be an integer >= 2 (a site knows its own share, so one share protects "
                         f"no one), found {min_sites!r}")


def share_std(noise_multiplier: float, clip: float, min_sites: int) -> float:
    """Standard deviation of one site's share of distributed Gaussian noise: ``σ·C/√(m−1)``.

    Whoever opens the sum may be a contributing site, and it knows (and can subtract) its own
    share. With shares of variance ``(σC)²/(m−1)``, any ``k ≥ m = min_sites`` honest shares
    minus the curious site's own still carry ``(k−1)(σC)²/(m−1) ≥ (σC)²``: the noise of a
    central Gaussian mechanism with multiplier σ and sensitivity C (Kairouz, Liu, Steinke 2021,
    §3, continuous analogue, whose shares ``1/n`` assume the decryptor holds no share). Assumes
    no two decrypting sites pool their shares. One share alone is weak noise: it must only
    ever be seen inside a secure sum.
    """
    _positive("noise multiplier", noise_multiplier)
    _positive("clip bound", clip)
    _min_sites(min_sites)
    return noise_multiplier * clip / math.sqrt(min_sites - 1)


def effective_noise_multiplier(noise_multiplier: float, contributors: int, min_sites: int,
                               known_shares: int = 1) -> float:
    """Noise multiplier protecting the others' patients when ``contributors`` shares of
    :func:`share_std` were added and the observer knows ``known_shares`` of them.

    ``σ·√((k − known)/(m − 1))``: a contributing site (``known = 1``) gets exactly σ when
    ``k = m`` and more noise when ``k > m``; the public or a non-contributing key holder
    (``known = 0``) gets ``σ·√(k/(m−1))``. With ``k ≤ known`` there is no noise left (0).
    """
    _positive("noise multiplier", noise_multiplier)
    _min_sites(min_sites)
    if contributors < 0 or known_shares < 0:
        raise ValueError(f"need contributors >= 0 and known_shares >= 0, found {contributors} and {known_shares}")
    return noise_multiplier * math.sqrt(max(contributors - known_shares, 0) / (min_sites - 1))


def split_noise_multiplier(noise_multiplier: float, count_stddev: float) -> float:
    """Noise multiplier left for the update when the clip count is also noised (Andrew et al. 2021, Thm 1).

    Releasing the noised update sum (sensitivity 1 in units of C, multiplier ``z_Δ``) and the
    noised count of centred bits ``b - 1/2`` (sensitivity 1/2, std ``σ_b``) together is as
    private as one Gaussian with multiplier ``z`` where ``z⁻² = z_Δ⁻² + (2σ_b)⁻²``.
    """
    _positive("noise multiplier", noise_multiplier)
    _positive("clip count stddev", count_stddev)
    rest = noise_multiplier**-2 - (2.0 * count_stddev) ** -2
    if rest <= 0:
        raise ValueError(
            f"clip count stddev {count_stddev} is too small for noise multiplier {noise_multiplier}: "
            f"need 2*stddev > {noise_multiplier} so that the update keeps some of the budget"
        )
    return float(rest**-0.5)


@dataclass
class AdaptiveClip:
    """Quantile-tracking clip norm (Andrew et al. 2021, Algorithm 1, geometric update).

    Each round every contributor reports its *centred* clip indicator ``b − 1/2`` with
    ``b = 1[||Δ|| ≤ C]`` (:meth:`centred_bit`); the server adds N(0, σ_b²) to their sum,
    divides by the *expected* number of contributors ``m`` (public, data-independent) and
    estimates the unclipped fraction ``b̄ = (Σ(b − ½) + N(0, σ_b²)) / m + ½``, then sets
    ``C ← C · exp(-η (b̄ − γ))`` so that C moves towards the γ-quantile of update norms.

    Centring is what makes the count's sensitivity 1/2 under add/remove of one contributor,
    the assumption of :func:`split_noise_multiplier` (Andrew et al. 2021, §3 and Thm 1; as in
    TF-Privacy's ``QuantileEstimatorQuery``, which sums ``below − 0.5`` and normalises by
    ``expected_num_records``). Dividing by the actual count would make the scale depend on who
    took part; with raw {0, 1} bits the sensitivity is 1 and the count costs 4× the privacy.
    """

    clip: float
    target_quantile: float = 0.5
    learning_rate: float = 0.2
    count_stddev: float = 0.0

    def __post_init__(self) -> None:
        """The one validation of the parameters (:class:`~secure_fl.errors.InvalidParameter` naming the field)."""
        _positive("initial clip", self.clip, "clip")
        if not 0.0 < self.target_quantile < 1.0:
            raise InvalidParameter("target_quantile", "target quantile must be in (0, 1)", self.target_quantile)
        _positive("clip learning rate", self.learning_rate, "learning_rate")
        if not self.count_stddev >= 0:
            raise InvalidParameter("count_stddev", "clip count stddev must be >= 0", self.count_stddev)

    def bit(self, norm: float) -> float:
        """The clip indicator ``1[norm ≤ C]`` of an update of L2 norm ``norm``."""
        return 1.0 if norm <= self.clip else 0.0

    def centred_bit(self, norm: float) -> float:
        """What a contributor reports: ``bit − 1/2``, in {−½, +½} (sensitivity ½ under add/remove)."""
        return self.bit(norm) - 0.5

    def update(self, centred_sum: float, expected_count: float, source: NoiseSource) -> float:
        """Move the clip norm from the noised sum of centred bits; return the new norm.

        ``expected_count`` is the public number of contributors expected per round (not the
        number that reported).
        """
        _positive("expected count", expected_count)
        noise = float(source.normal(self.count_stddev, 1)[0]) if self.count_stddev > 0 else 0.0
        fraction = (centred_sum + noise) / expected_count + 0.5
        self.clip = self.clip * math.exp(-self.learning_rate * (fraction - self.target_quantile))
        return self.clip
