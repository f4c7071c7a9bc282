"""``mechanism = "ddg"``, ``noise = "distributed"``: the distributed discrete Gaussian over masking.

Kairouz, Liu, Steinke, "The Distributed Discrete Gaussian Mechanism for Federated Learning with
Secure Aggregation", ICML 2021 (Algorithm 1 and Theorem 1), as update-level (site-level)
DP-FedAvg with no subsampling. Per round, at each site (:meth:`Ddg.transform`):

1. clip the delta to L2 norm C (``max_grad_norm``);
2. rotate it with the public randomised Hadamard transform of the round (``rotation``);
3. scale to units of the grid γ = 2^``grid_log2`` (the secure sum's quantisation step) and
   round *conditionally* (randomised rounding until ||x~||² <= Δ², checked on integers;
   :func:`secure_fl.crypto.quantize.conditional_round`);
4. hand ``(x~ - 1/2)·γ`` to the masking sum, which quantises it exactly (a power-of-two step makes
   every float operation of :meth:`Quantizer.encode` exact) and, through
   :meth:`SecAggSum.set_integer_noise`, adds the site's share z ~ N_Z(0, σ_s²), truncated at ±B,
   in integer units before masking. SecAgg+ sums modulo 2^k; k is sized so no sum of the
   slots can wrap around (the share bound B is part of the slot bound).

The aggregator unmasks Σ x~ + Σ z (only that), :meth:`Ddg.release` rotates it back and divides
by the public number of contributors. σ_s² = (σ C/γ)² / (min_sites − colluding_sites), rounded up:
any ``min_sites`` contributors of which at most ``colluding_sites`` pool their own shares with the
aggregator leave at least the noise of ``min_sites − colluding_sites`` honest shares. The secure
sum is told to withhold any sum over fewer than ``min_sites`` contributors
(:meth:`SecureSum.require_contributors`). Accounting: :mod:`secure_fl.privacy.ddg` (their
Theorem 1, zCDP ρ; the ledger event is ``GaussianDpEvent(1/sqrt(2ρ))`` and only the RDP
accountant is sound for it, so ``accountant = "rdp"`` is required).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from dp_accounting import dp_event

from ...crypto.quantize import conditional_round
from ...errors import ProtocolError, RoundAborted, SpecError
from ...privacy.ddg import DdgParams, hadamard_rotate
from ...privacy.mechanisms import clip_l2
from ...privacy.noise import NoiseSource
from ...speccheck import build, in_range, one_of
from ..base import SecureSum, SumResult
from .mechanism import Adjacency, DpMechanism, Key

if TYPE_CHECKING:  # pragma: no cover
    from .config import PrivacyConfig
    from .layer import DpPrivacyLayer, DpSite

__all__ = ["Ddg", "ShareNoise", "check_masking_grid", "ddg_params", "site_rng", "on_grid"]

_MASKING_SUMS = ("secagg", "secagg-plus")
_ROTATION_DOMAIN = 0xDD6


def _rotation_seed(round: int) -> int:
    """Public seed of the round's rotation: the same at every site, known to everyone."""
    return int(np.random.SeedSequence([_ROTATION_DOMAIN, int(round)]).generate_state(1, np.uint64)[0])


def check_masking_grid(secure_sum: SecureSum, grid_log2: int | None, clip: float, where: str) -> None:
    """Refuse a masking sum whose quantisation step is not exactly γ = 2^grid_log2, or whose range misses C.

    With a power-of-two step every float operation of :meth:`Quantizer.encode` on ``(j - 1/2)·γ`` is
    exact, so the integers the sum carries are exactly the conditionally rounded ones.
    """
    if grid_log2 is None:
        raise SpecError(f"{where}: missing required key 'grid_log2' (γ = 2^grid_log2 must be the quantisation step "
                        "2 clip_range / (2^bits - 1) of the masking sum)")
    if getattr(secure_sum, "max_weight", None) != 1:
        raise SpecError(f"{where}: update-level DP over masking counts each site once: set [secure_sum].max_weight "
                        f"= 1, found {getattr(secure_sum, 'max_weight', None)!r}")
    bits, clip_range = secure_sum.bits, secure_sum.clip_range  # type: ignore[attr-defined]
    grid = 2.0**grid_log2
    expected = ((1 << bits) - 1) * grid / 2
    if clip_range != expected:
        raise SpecError(
            f"{where}.grid_log2: the secure sum's quantisation step 2 clip_range / (2^bits - 1) must be exactly "
            f"γ = 2^{grid_log2} (exact quantisation of the rounded integers), i.e. [secure_sum].clip_range = "
            f"{expected!r} for bits = {bits}; found clip_range = {clip_range!r}"
        )
    if (1 << (bits - 1)) * grid < clip:
        top = (1 << (bits - 1)) * grid
        raise SpecError(f"{where}.grid_log2: the secure sum's largest value 2^(bits-1)·γ = {top!r} is below "
                        f"max_grad_norm = {clip}: coordinates would be clipped; raise grid_log2 or bits")


def site_rng(source: NoiseSource) -> np.random.Generator:
    """A generator for randomised rounding, seeded from the site's noise source (secure or seeded)."""
    return np.random.default_rng(source.integers_below(np.full(4, (1 << 62) - 1, dtype=np.int64)))


def on_grid(total: np.ndarray, grid: float, offset: float, round: int) -> np.ndarray:
    """The integers ``total/grid + offset`` of a released sum; ProtocolError if it is not on the grid."""
    units = np.asarray(total, dtype=np.float64) / grid + offset
    ints = np.rint(units)
    if units.size and float(np.max(np.abs(units - ints))) > 1e-6:
        raise ProtocolError(f"round {round}: the released sum is not on the grid {grid!r} (off by "
                            f"{float(np.max(np.abs(units - ints))):.3g} units): quantiser and mechanism disagree")
    return ints.astype(np.int64)


#: DdgParams field -> the [privacy] key it comes from ("": derived from several keys)
_DDG_KEYS = {"clip": "max_grad_norm", "grid": "grid_log2", "noise_multiplier": "noise_multiplier", "min_shares": ""}


def ddg_params(cfg: "PrivacyConfig", dim: int, sigma: float | None = None) -> DdgParams:
    """The DDG parameters of a ``ddg`` config for updates of dimension ``dim`` (σ from the spec unless given)."""
    sigma = cfg.noise_multiplier if sigma is None else sigma
    if sigma is None:
        raise SpecError(f"{cfg.where}: ddg needs 'noise_multiplier' or a σ calibrated from 'target_epsilon'")
    return DdgParams(clip=cfg.max_grad_norm, grid=2.0**cfg.grid_log2, dim=dim,
                     noise_multiplier=sigma,
                     min_shares=cfg.min_sites - cfg.colluding_sites, beta=cfg.beta)


class ShareNoise:
    """The integer-noise hook handed to the masking sum: ``(dim, rng) -> int64`` share of one site.

    Draws from the OS CSPRNG when ``secure`` (``secrets``), else from the secure sum's seeded
    generator ``rng`` (reproducible tests and experiments).
    """

    def __init__(self, params: DdgParams, secure: bool) -> None:
        self.params, self.secure = params, secure

    @property
    def bound(self) -> int:
        return self.params.noise_bound

    def __call__(self, dim: int, rng: np.random.Generator) -> np.ndarray:
        source = NoiseSource.secure() if self.secure else NoiseSource.seeded(rng)
        return self.params.share(dim, source)


class Ddg(DpMechanism):
    name = "ddg"
    placements = ("distributed",)
    unit = "site"
    keys = (
        Key("min_sites", int, None, in_range(2), required="fewest contributors whose noise shares make the full noise; "
            "the secure sum withholds a sum over fewer"),
        Key("colluding_sites", int, 1, in_range(0)),
        Key("grid_log2", int, None, in_range(-60, 20), required="the grid γ = 2^grid_log2: the secure sum's "
            "quantisation step 2 clip_range / (2^bits - 1), a power of two so that quantisation is exact"),
        Key("rotation", str, "hadamard", one_of("hadamard", "none")),
        Key("beta", float, math.exp(-0.5), in_range(0, 1, hi_open=True)),
    )

    # -- spec time -------------------------------------------------------------------------

    @classmethod
    def validate(cls, cfg: "PrivacyConfig", table: Mapping[str, Any], secure_sum: SecureSum, where: str) -> None:
        kind = cfg.secure_sum_kind
        if kind not in _MASKING_SUMS:
            raise SpecError(f"{where}.mechanism: 'ddg' adds integer noise shares inside a masking secure sum "
                            f"({_MASKING_SUMS}), found [secure_sum].kind = {kind!r}")
        if cfg.noise_multiplier is None:
            raise SpecError(f"{where}.target_epsilon: mechanism 'ddg' needs 'noise_multiplier' (the share bound sizes "
                            "the modulus before the run plan is known); `secure-fl protocols` shows the ε it gives")
        if cfg.accountant != "rdp":
            raise SpecError(f"{where}.accountant: mechanism 'ddg' is charged as zCDP (Kairouz et al. 2021, Theorem 1); "
                            f"only the RDP accountant bounds it soundly, found {cfg.accountant!r}: "
                            "set accountant = 'rdp'")
        if cfg.colluding_sites >= cfg.min_sites:
            raise SpecError(f"{where}.colluding_sites: must be below min_sites = {cfg.min_sites} (at least one honest "
                            f"share), found {cfg.colluding_sites}")
        check_masking_grid(secure_sum, cfg.grid_log2, cfg.max_grad_norm, where)
        params = build(where, lambda: ddg_params(cfg, 1), _DDG_KEYS)
        noise = ShareNoise(params, cfg.secure_noise)
        try:
            secure_sum.set_integer_noise(noise, noise.bound)  # type: ignore[attr-defined]
        except ValueError as exc:  # the quantizer has no room for the noise bound
            raise SpecError(f"{where}: {exc}") from exc

    @classmethod
    def constrain(cls, cfg: "PrivacyConfig", secure_sum: SecureSum) -> None:
        # enforced where the data flows: the sum of fewer than min_sites contributors is withheld
        secure_sum.require_contributors(int(cfg.min_sites))
        noise = ShareNoise(ddg_params(cfg, 1), cfg.secure_noise)
        secure_sum.set_integer_noise(noise, noise.bound)  # type: ignore[attr-defined]

    @classmethod
    def adjacency(cls, cfg: "PrivacyConfig") -> str:
        return Adjacency.ZERO_OUT

    @classmethod
    def guarantee(cls, cfg: "PrivacyConfig") -> list[str]:
        honest = cfg.min_sites - cfg.colluding_sites
        return [
            f"site-level ({cfg.target_text()}, zero-out one site's update) for every released sum, composed over all "
            "rounds: the distributed discrete Gaussian (Kairouz, Liu, Steinke 2021, Theorem 1), charged as zCDP "
            "with the RDP accountant; the ε includes the rounding inflation of the sensitivity and the τ term",
            f"each site adds an exact discrete Gaussian share of variance (σC/γ)²/{honest} in integer units inside "
            f"SecAgg+ (mod 2^k, no wrap-around): any {cfg.min_sites} contributors of which at most "
            f"{cfg.colluding_sites} collude with the aggregator carry at least (σC/γ)²; the secure sum withholds a sum "
            f"of fewer than {cfg.min_sites} contributors",
            "assumes: a semi-honest aggregator and at most colluding_sites colluding sites (their shares count for "
            "nothing), honest sites draw shares from a secret source (secure_noise = true), the masking sum's own "
            "collusion bound holds; dataset sizes and participation are public; failure probability: shares are "
            "truncated at 2^-80 per coordinate (adds at most (1+e^ε)·rounds·sites·d·2^-80 to δ)",
        ]

    # -- run time --------------------------------------------------------------------------

    def __init__(self, layer: "DpPrivacyLayer") -> None:
        super().__init__(layer)
        self._dim: int | None = None  # known from the first update; the charge (not the pre-check) is binding

    def validate_plan(self) -> None:
        cfg = self.config
        if self.layer.weighting != "uniform":
            raise SpecError(f"{cfg.where}: update-level DP needs [aggregation].weighting = 'uniform' (each clipped "
                            f"update counts once), found {self.layer.weighting!r}")
        if cfg.min_sites > len(self.layer.site_sizes):
            raise SpecError(f"{cfg.where}.min_sites: {cfg.min_sites} exceeds the {len(self.layer.site_sizes)} sites "
                            "of this federation")

    def params(self, dim: int, sigma: float | None = None) -> DdgParams:
        return ddg_params(self.config, dim, sigma)

    def round_event(self, site_id: str, sigma: float) -> dp_event.DpEvent:
        # before the first update of a run the dimension is not known yet: the pre-check uses d = 1,
        # the charge at transform (which refuses over budget before the update leaves) uses the true d
        return self.params(self._dim or 1, sigma).event()

    def transform(self, site: "DpSite", delta: np.ndarray, n_examples: int,
                  round: int) -> tuple[np.ndarray, float, dp_event.DpEvent | None]:
        cfg = self.config
        clipped, _ = clip_l2(np.asarray(delta, dtype=np.float64), cfg.max_grad_norm)
        self._dim = clipped.shape[0]
        params = self.params(self._dim, site.noise_multiplier)
        if cfg.rotation == "hadamard":
            clipped = hadamard_rotate(clipped, _rotation_seed(round))
        grid = params.grid
        ints = conditional_round(clipped / grid, params.bound_sq, site_rng(site.source))
        # on the quantiser's grid {(q - (2^bits - 1)/2)·γ}: q = ints + (2^bits - 2)/2, exact in float64;
        # the quantiser clamps q to [0, 2^bits - 1], which only moves integers towards 0 (norm <= Δ still)
        return (ints.astype(np.float64) - 0.5) * grid, 1.0, params.event()

    def release(self, result: SumResult, round: int, contributors: list[str], expected: Sequence[str]) -> np.ndarray:
        cfg, layer = self.config, self.layer
        m = len(contributors)
        if m < cfg.min_sites:  # defence in depth: the secure sum withholds such a sum
            raise RoundAborted(f"round {round}: only {m} contributor(s), min_sites is {cfg.min_sites}: the noise of "
                               f"{cfg.min_sites - cfg.colluding_sites} honest shares is not guaranteed; not released")
        grid = 2.0**cfg.grid_log2
        ints = on_grid(result.total, grid, m / 2.0, round)
        total = ints.astype(np.float64) * grid
        if cfg.rotation == "hadamard":
            total = hadamard_rotate(total, _rotation_seed(round), inverse=True)
        params = self.params(total.shape[0], min(layer.noise_multiplier_for(s) for s in contributors))
        layer.last_release.update({"noise_std": math.sqrt(m * params.share_variance) * grid,
                                   "honest_shares_assumed": cfg.min_sites - cfg.colluding_sites,
                                   "sensitivity": params.l2 * grid})
        return total / m
