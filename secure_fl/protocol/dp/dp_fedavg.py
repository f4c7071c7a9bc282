"""``mechanism = "dp-fedavg"``: update-level DP-FedAvg (McMahan, Ramage, Talwar, Zhang, ICLR 2018).

Each site's delta is clipped to L2 norm C (fixed, or adaptive after Andrew et al., NeurIPS 2021,
with ``clipping = "adaptive"``) and put on the public fixed-point grid γ = 2^``grid_log2`` by
conditional randomised rounding (Kairouz, Liu, Steinke 2021, §4.1): its squared norm in grid
units is at most an integer Δ² (checked exactly), Δγ >= C. Noise is an exact discrete Gaussian
(Canonne, Kamath, Steinke 2020) added *in integers*, so every released value is γ × an integer
and its low-order bits carry nothing (no floating-point attack, Mironov 2012). The sensitivity
charged is Δγ, not C: plain stochastic rounding of a clipped update can reach C + γ√d unaccounted.

``noise = "local"``
    Each site adds N_Z(0, (σC/γ)²) grid units itself: any change to the site's data moves the
    rounded update by at most 2Δγ, so a round is ρ-zCDP with ρ = (2Δ)²/(2σ_Z²) (Canonne et al.,
    §3, multivariate discrete Gaussian), site-level (hence also patient-level) for what the site sends.
``noise = "central"``
    The party named by ``noise_adder`` adds N_Z(0, (σC/γ)²) grid units to the sum of the rounded
    updates: site-level DP (add/remove one site, sensitivity Δγ) for the released models only; that
    party sees the sum before noise and, with a plain secure sum, every clipped update. Over a
    masking sum the grid is its quantisation step (a power of two, so the sum carries exactly the
    rounded integers).

Each round is charged as ``GaussianDpEvent(σ_Z/Δ)`` (``/2`` for local noise): the same ρ, so its
Rényi curve bounds the discrete mechanism; only the RDP accountant is sound for it
(``accountant = "rdp"`` is required). The clip-count noise of adaptive clipping stays a
continuous Gaussian on one public-sized count (plain sum only).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from fractions import Fraction
from typing import TYPE_CHECKING, Any

import numpy as np
from dp_accounting import dp_event

from ...crypto.quantize import conditional_round, rounded_norm_bound_sq
from ...errors import SpecError
from ...privacy.accounting import gaussian_event
from ...privacy.discrete_gaussian import grid_gaussian, sample_discrete_gaussian, variance_at_least
from ...privacy.mechanisms import AdaptiveClip, clip_l2, split_noise_multiplier
from ...speccheck import build, in_range, one_of
from ..base import SecureSum, SumResult, ViewKind
from .ddg import check_masking_grid, on_grid, site_rng
from .mechanism import Adjacency, DpMechanism, Key

if TYPE_CHECKING:  # pragma: no cover
    from .config import PrivacyConfig
    from .layer import DpPrivacyLayer, DpSite

__all__ = ["DpFedAvg"]

_ADAPTIVE_KEYS = ("target_quantile", "clip_learning_rate", "clip_count_stddev")
#: AdaptiveClip field -> the [privacy] key it comes from
_ADAPTIVE_FIELDS = {"clip": "max_grad_norm", "target_quantile": "target_quantile",
                    "learning_rate": "clip_learning_rate", "count_stddev": "clip_count_stddev"}
_MASKING_SUMS = ("secagg", "secagg-plus")
#: default grid over a plain sum: 2^-20 of max_grad_norm, rounded down to a power of two (a rounded
#: coordinate, |j| < 2^21, is exact in the plain sum's float32 wire format; noised values are rounded
#: there, which is post-processing of the noised integer)
_GRID_BITS = 20
#: conditional rounding: a try succeeds with probability >= 1 - β (Kairouz et al. 2021, Proposition 22)
_BETA = math.exp(-0.5)


class DpFedAvg(DpMechanism):
    name = "dp-fedavg"
    placements = ("local", "central")
    unit = "site"
    keys = (
        Key("clipping", str, "fixed", one_of("fixed", "adaptive")),
        # ranges of target_quantile and clip_learning_rate: checked once, by AdaptiveClip (see validate)
        Key("target_quantile", float, 0.5),
        Key("clip_learning_rate", float, 0.2),
        Key("clip_count_stddev", float, None, in_range(0, lo_open=True)),
        Key("noise_adder", str, None, one_of("aggregator", "key-holders")),
        Key("grid_log2", int, None, in_range(-60, 20)),
    )

    # -- spec time -------------------------------------------------------------------------

    @classmethod
    def validate(cls, cfg: "PrivacyConfig", table: Mapping[str, Any], secure_sum: SecureSum, where: str) -> None:
        kind = cfg.secure_sum_kind
        view = secure_sum.view_kind
        if cfg.accountant != "rdp":
            raise SpecError(f"{where}.accountant: dp-fedavg adds exact discrete Gaussian noise on a grid, charged by "
                            "its zCDP (Canonne, Kamath, Steinke 2020, §3); only the RDP accountant bounds it "
                            f"soundly, found {cfg.accountant!r}: set accountant = 'rdp'")
        if kind in _MASKING_SUMS and cfg.noise == "central":
            check_masking_grid(secure_sum, cfg.grid_log2, cfg.max_grad_norm, where)
        if cfg.noise == "central":
            if cfg.noise_adder is None:
                raise SpecError(
                    f"{where}: central noise needs 'noise_adder' = 'aggregator' or 'key-holders': the spec must say "
                    "who adds the noise, because that party sees the sum before noise"
                )
            releases = secure_sum.releases_to_aggregator
            expected = "aggregator" if releases else "key-holders"
            if cfg.noise_adder != expected:
                raise SpecError(
                    f"{where}.noise_adder: the secure sum {kind!r} releases the sum to the {expected}, so the "
                    f"{expected} add the central noise, found {cfg.noise_adder!r}"
                )
        elif cfg.noise_adder is not None:
            raise SpecError(f"{where}.noise_adder: only for noise = 'central', found {cfg.noise_adder!r} "
                            "with noise = 'local'")
        if cfg.clipping == "adaptive":
            if cfg.noise != "central":
                raise SpecError(f"{where}.clipping: 'adaptive' clipping (Andrew et al. 2021) needs noise = 'central', "
                                f"found {cfg.noise!r}")
            if view != ViewKind.PLAIN:
                raise SpecError(
                    f"{where}.clipping: 'adaptive' clipping is implemented for secure_sum.kind = 'plain' only (the "
                    f"clip bits would have to travel inside the {kind!r} sum), found {kind!r}"
                )
            # the clip state's own validation, with the spec keys named
            stddev = cfg.clip_count_stddev if cfg.clip_count_stddev is not None else 0.0
            build(where, lambda: AdaptiveClip(cfg.max_grad_norm, cfg.target_quantile, cfg.clip_learning_rate, stddev),
                  _ADAPTIVE_FIELDS)
        else:
            for key in _ADAPTIVE_KEYS:
                if key in table:
                    raise SpecError(f"{where}.{key}: only for clipping = 'adaptive', found clipping = {cfg.clipping!r}")

    @classmethod
    def aggregator_view(cls, cfg: "PrivacyConfig") -> str:
        # central noise: the noise adder sees clipped updates before noise
        return ViewKind.NOISED.value if cfg.noise == "local" else ViewKind.PLAIN.value

    @classmethod
    def adjacency(cls, cfg: "PrivacyConfig") -> str:
        # local noise protects what one site sends: any two datasets of that site (replace one, 2C);
        # central noise protects the released sum: add/remove one site (C)
        return Adjacency.REPLACE_ONE if cfg.noise == "local" else Adjacency.ADD_REMOVE

    @classmethod
    def guarantee(cls, cfg: "PrivacyConfig") -> list[str]:
        target = cfg.target_text()
        if cfg.noise == "local":
            return [f"site-level ({target}, replace one site's data: sensitivity 2Δγ) for each site's noised update, "
                    "composed over all planned rounds (exact discrete Gaussian on the grid γ, RDP accountant); under "
                    "add/remove or zero-out one site (sensitivity Δγ) the same noise gives the ε of multiplier 2σ",
                    "assumes: nothing; each site adds all of its noise itself; which sites take part is public"]
        return [f"site-level ({target}) for the released models (add/remove one site, sensitivity Δγ >= C of the "
                "conditionally rounded update; exact discrete Gaussian noise on the grid γ, RDP accountant)",
                f"assumes: the noise adder ({cfg.noise_adder}) is trusted: it sees the sum before noise; which sites "
                "take part is public"]

    # -- run time --------------------------------------------------------------------------

    def __init__(self, layer: "DpPrivacyLayer") -> None:
        super().__init__(layer)
        self.adaptive: AdaptiveClip | None = None
        self.update_sigma: float | None = None
        self._bits: dict[int, dict[str, float]] = {}
        self.expected_count = 1
        self._dim: int | None = None  # known from the first update; the charge (not the pre-check) is binding
        cfg = self.config
        log2 = cfg.grid_log2 if cfg.grid_log2 is not None else math.floor(math.log2(cfg.max_grad_norm)) - _GRID_BITS
        self.grid = 2.0**log2
        self.masking = cfg.secure_sum_kind in _MASKING_SUMS

    def validate_plan(self) -> None:
        if self.layer.weighting != "uniform":
            raise SpecError(
                f"{self.config.where}: update-level DP needs [aggregation].weighting = 'uniform' (each clipped "
                "update counts once, so one site moves the sum by at most C; McMahan et al. 2018), "
                f"found {self.layer.weighting!r}"
            )

    def _bound_sq(self, clip: float, dim: int) -> int:
        return rounded_norm_bound_sq(clip / self.grid, dim, _BETA)

    def _variance(self, sigma: float, clip: float) -> Fraction:
        return variance_at_least((sigma * clip / self.grid) ** 2)

    def _multiplier(self, sigma: float, clip: float, dim: int) -> float:
        """σ_Z/Δ: the Gaussian multiplier with the discrete mechanism's ρ for one rounded update."""
        return math.sqrt(self._variance(sigma, clip)) / math.sqrt(self._bound_sq(clip, dim))

    def round_event(self, site_id: str, sigma: float) -> dp_event.DpEvent:
        # before the first update the dimension is unknown: the pre-check uses d = 1, the charge the true d
        dim, clip = self._dim or 1, self.clip
        if self.config.noise == "local":  # sensitivity 2Δ
            return gaussian_event(self._multiplier(sigma, clip, dim) / 2.0)
        if self.update_sigma is None or self.adaptive is None:  # add/remove one site, sensitivity Δ
            return gaussian_event(self._multiplier(sigma, clip, dim))
        # adaptive: the update's ρ plus the clip count's (Andrew et al. 2021, Theorem 1)
        z = self._multiplier(self.update_sigma, clip, dim)
        return gaussian_event((z**-2 + (2.0 * self.adaptive.count_stddev) ** -2) ** -0.5)

    def after_calibration(self) -> None:
        cfg = self.config
        if cfg.clipping != "adaptive":
            return
        sites = len(self.layer.site_sizes)
        expected = max(1, round(self.layer.plan.fraction * sites))
        self.expected_count = expected  # public: the clip-count denominator (Andrew et al. 2021, Alg. 1)
        sigma = self.layer.noise_multiplier_for(sorted(self.layer.site_sizes)[0])
        # Andrew et al. suggest m/20 for m ~ hundreds of clients; with few sites that leaves the update
        # no budget (need 2σ_b > σ), so the default also keeps σ_Δ within ~3% of σ (σ_b >= 2σ).
        stddev = cfg.clip_count_stddev if cfg.clip_count_stddev is not None else max(expected / 20.0, 2.0 * sigma)
        try:
            self.update_sigma = split_noise_multiplier(sigma, stddev)
        except ValueError as exc:
            raise SpecError(f"{cfg.where}.clip_count_stddev: {exc}") from exc
        self.adaptive = AdaptiveClip(cfg.max_grad_norm, cfg.target_quantile, cfg.clip_learning_rate, stddev)

    @property
    def clip(self) -> float:
        return self.adaptive.clip if self.adaptive is not None else self.config.max_grad_norm

    def transform(self, site: "DpSite", delta: np.ndarray, n_examples: int,
                  round: int) -> tuple[np.ndarray, float, dp_event.DpEvent | None]:
        clip = self.clip
        clipped, norm = clip_l2(delta, clip)
        self._dim = clipped.shape[0]
        if self.config.noise == "local":
            noised, _ = grid_gaussian(clipped, std=site.noise_multiplier * clip, grid=self.grid, l2_bound=clip,
                                      source=site.source, rng=site_rng(site.source), beta=_BETA)
            return noised, 1.0, site.planned_event()
        ints = conditional_round(clipped / self.grid, self._bound_sq(clip, self._dim), site_rng(site.source))
        if self.adaptive is not None:
            # the unclipped indicator (central noise, plain sum only: the aggregator sees the clipped
            # update and could compute it itself)
            self._bits.setdefault(round, {})[site.site_id] = self.adaptive.centred_bit(norm)
        # over a masking sum the quantiser's grid is {(q - (2^bits - 1)/2)·γ}: send (ints - 1/2)·γ (exact)
        values = (ints.astype(np.float64) - (0.5 if self.masking else 0.0)) * self.grid
        return values, 1.0, site.planned_event()

    def release(self, result: SumResult, round: int, contributors: list[str], expected: Sequence[str]) -> np.ndarray:
        if self.config.noise == "local":
            return result.mean
        layer = self.layer
        sigma = self.update_sigma if self.update_sigma is not None else layer.noise_multiplier_for(contributors[0])
        clip = self.clip
        m = len(contributors)
        ints = on_grid(result.total, self.grid, m / 2.0 if self.masking else 0.0, round)
        variance = self._variance(sigma, clip)
        noised = (ints + sample_discrete_gaussian(variance, ints.shape[0], layer.server_source)).astype(np.float64)
        noised *= self.grid
        # fixed denominator: the number of sites expected to report (McMahan et al. 2018, estimator f̃_f)
        denominator = max(len(expected), len(contributors))
        if self.adaptive is not None:
            bits = self._bits.pop(round, {})
            # Σ(b − ½) over contributors, normalised by the expected (public) count, never the actual one
            new_clip = self.adaptive.update(sum(bits.get(s, 0.0) for s in contributors), self.expected_count,
                                            layer.server_source)
            layer.last_release["next_clip"] = new_clip
        layer.last_release.update({"clip": clip, "noise_std": math.sqrt(variance) * self.grid,
                                   "sensitivity": math.sqrt(self._bound_sq(clip, ints.shape[0])) * self.grid})
        return noised / denominator
