"""``mechanism = "dp-fedavg"``: update-level DP-FedAvg (McMahan, Ramage, Talwar, Zhang, ICLR 2018).

Each site's delta is clipped to L2 norm C (fixed, or adaptive after Andrew et al., NeurIPS 2021,
with ``clipping = "adaptive"``).

``noise = "local"``
    Each site adds N(0, (σC)²) itself: any change to the site's data moves the clipped update
    by at most 2C, so a round is a Gaussian mechanism with multiplier σ/2, site-level (hence also
    patient-level) for what the site sends.
``noise = "central"``
    The party named by ``noise_adder`` adds N(0, (σC)²) to the sum: site-level DP (add/remove
    one site, sensitivity C) for the released models only; that party sees the sum before
    noise and, with a plain secure sum, every clipped update.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from dp_accounting import dp_event

from ...errors import SpecError
from ...privacy.accounting import gaussian_event
from ...privacy.mechanisms import AdaptiveClip, clip_l2, split_noise_multiplier
from ...speccheck import in_range, one_of
from ..base import SecureSum, SumResult, ViewKind
from .mechanism import Adjacency, DpMechanism, Key

if TYPE_CHECKING:  # pragma: no cover
    from .config import PrivacyConfig
    from .layer import DpPrivacyLayer, DpSite

__all__ = ["DpFedAvg"]

_ADAPTIVE_KEYS = ("target_quantile", "clip_learning_rate", "clip_count_stddev")


class DpFedAvg(DpMechanism):
    name = "dp-fedavg"
    placements = ("local", "central")
    unit = "site"
    keys = (
        Key("clipping", str, "fixed", one_of("fixed", "adaptive")),
        Key("target_quantile", float, 0.5, in_range(0, 1, lo_open=True, hi_open=True)),
        Key("clip_learning_rate", float, 0.2, in_range(0, lo_open=True)),
        Key("clip_count_stddev", float, None, in_range(0, lo_open=True)),
        Key("noise_adder", str, None, one_of("aggregator", "key-holders")),
    )

    # -- spec time -------------------------------------------------------------------------

    @classmethod
    def validate(cls, cfg: "PrivacyConfig", table: Mapping[str, Any], secure_sum: SecureSum, where: str) -> None:
        kind = cfg.secure_sum_kind
        view = getattr(secure_sum, "view_kind", ViewKind.PLAIN)
        if cfg.noise == "central":
            if cfg.noise_adder is None:
                raise SpecError(
                    f"{where}: central noise needs 'noise_adder' = 'aggregator' or 'key-holders': the spec must say who "
                    "adds the noise, because that party sees the sum before noise"
                )
            releases = getattr(secure_sum, "releases_to_aggregator", True)
            expected = "aggregator" if releases else "key-holders"
            if cfg.noise_adder != expected:
                raise SpecError(
                    f"{where}.noise_adder: the secure sum {kind!r} releases the sum to the {expected}, so the "
                    f"{expected} add the central noise, found {cfg.noise_adder!r}"
                )
        elif cfg.noise_adder is not None:
            raise SpecError(f"{where}.noise_adder: only for noise = 'central', found {cfg.noise_adder!r} with noise = 'local'")
        if cfg.clipping == "adaptive":
            if cfg.noise != "central":
                raise SpecError(f"{where}.clipping: 'adaptive' clipping (Andrew et al. 2021) needs noise = 'central', "
                                f"found {cfg.noise!r}")
            if view != ViewKind.PLAIN:
                raise SpecError(
                    f"{where}.clipping: 'adaptive' clipping is implemented for secure_sum.kind = 'plain' only (the clip "
                    f"bits would have to travel inside the {kind!r} sum), found {kind!r}"
                )
        else:
            for key in _ADAPTIVE_KEYS:
                if key in table:
                    raise SpecError(f"{where}.{key}: only for clipping = 'adaptive', found clipping = {cfg.clipping!r}")

    @classmethod
    def aggregator_view(cls, cfg: "PrivacyConfig") -> str:
        # central noise: the noise adder sees clipped updates before noise
        return ViewKind.NOISED.value if cfg.noise == "local" else ViewKind.PLAIN.value

    @classmethod
    def guarantee(cls, cfg: "PrivacyConfig") -> list[str]:
        target = cfg.target_text()
        if cfg.noise == "local":
            return [f"site-level ({target}) for each site's noised update, composed over all planned rounds",
                    "assumes: nothing; each site adds all of its noise itself (sensitivity 2C)"]
        return [f"site-level ({target}) for the released models (add/remove one site, sensitivity C)",
                f"assumes: the noise adder ({cfg.noise_adder}) is trusted: it sees the sum before noise"]

    # -- run time --------------------------------------------------------------------------

    def __init__(self, layer: "DpPrivacyLayer") -> None:
        super().__init__(layer)
        self.adaptive: AdaptiveClip | None = None
        self.update_sigma: float | None = None
        self._bits: dict[int, dict[str, float]] = {}

    def validate_plan(self) -> None:
        if self.layer.weighting != "uniform":
            raise SpecError(
                f"{self.config.where}: update-level DP needs [aggregation].weighting = 'uniform' (each clipped update "
                f"counts once, so one site moves the sum by at most C; McMahan et al. 2018), found {self.layer.weighting!r}"
            )

    def round_event(self, site_id: str, sigma: float) -> dp_event.DpEvent:
        # local noise -> sensitivity 2C; central -> add/remove one site, sensitivity C
        return gaussian_event(sigma / 2.0 if self.config.noise == "local" else sigma)

    def after_calibration(self) -> None:
        cfg = self.config
        if cfg.clipping != "adaptive":
            return
        sites = len(self.layer.site_sizes)
        expected = max(1, round(self.layer.plan.fraction * sites))
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
        if self.config.noise == "local":
            clipped = clipped + site.source.normal(site.noise_multiplier * clip, clipped.shape[0])
        elif self.adaptive is not None:
            # the unclipped indicator (central noise, plain sum only: the aggregator sees the clipped
            # update and could compute it itself)
            self._bits.setdefault(round, {})[site.site_id] = self.adaptive.bit(norm)
        return clipped, 1.0, site.planned_event()

    def release(self, result: SumResult, round: int, contributors: list[str], expected: Sequence[str]) -> np.ndarray:
        if self.config.noise == "local":
            return result.mean
        layer = self.layer
        sigma = self.update_sigma if self.update_sigma is not None else layer.noise_multiplier_for(contributors[0])
        clip = self.clip
        noised = result.total + layer.server_source.normal(sigma * clip, result.total.shape[0])
        # fixed denominator: the number of sites expected to report (McMahan et al. 2018, estimator f̃_f)
        denominator = max(len(expected), len(contributors))
        if self.adaptive is not None:
            bits = self._bits.pop(round, {})
            new_clip = self.adaptive.update(sum(bits.get(s, 0.0) for s in contributors), len(contributors),
                                            layer.server_source)
            layer.last_release["next_clip"] = new_clip
        layer.last_release.update({"clip": clip, "noise_std": sigma * clip})
        return noised / denominator
