"""``mechanism = "distributed-dp-sgd"``, ``noise = "distributed"``: patient-level DP under a secure sum.

Each round every site Poisson-samples its patients at rate q, sums clipped per-example gradients
and adds a share of the Gaussian noise (:mod:`secure_fl.training.dp_distributed`). A round is one
Poisson-subsampled Gaussian step on the union of all sites' patients (Abadi et al. 2016; noise
distributed as in Kairouz, Liu, Steinke, ICML 2021, continuous analogue), provided enough sites
added honest shares and nobody sees a single share (the secure sum). There is no local training:
the release is the noisy mean gradient's descent direction and the server step is the optimiser
(step size ``[aggregation].server_lr``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from dp_accounting import dp_event

from ...errors import RoundAborted, SpecError
from ...privacy.accounting import poisson_gaussian_event
from ...privacy.mechanisms import effective_noise_multiplier
from ...speccheck import in_range
from ..base import SecureSum, SumResult, ViewKind
from .mechanism import DpMechanism, Key

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from .config import PrivacyConfig
    from .layer import DpSite

__all__ = ["DistributedDpSgd"]

_MASKING_SUMS = ("secagg", "secagg-plus")


def _on_too_few(value: str) -> str | None:
    if value == "charge_weaker":
        return ("'charge_weaker' was removed: the sites decrypt the sum inside the secure sum, before the release "
                "step, so charging a weaker ε afterwards protects no one; a sum over fewer than min_sites "
                "contributors is never opened (the secure sum's min_contributors), so only 'abort' remains; "
                "expected one of ['abort']")
    return None if value == "abort" else "expected one of ['abort']"


class DistributedDpSgd(DpMechanism):
    name = "distributed-dp-sgd"
    placements = ("distributed",)
    unit = "patient"
    keys = (
        Key("sample_rate", float, None, in_range(0, 1, lo_open=True),
            required="Poisson rate at which every site samples its patients"),
        Key("min_sites", int, 2, in_range(2), required="fewest contributors whose noise shares, minus one curious "
            "site's own, make the full noise; the secure sum refuses to open a sum over fewer"),
        Key("on_too_few", str, "abort", _on_too_few),
    )

    # -- spec time -------------------------------------------------------------------------

    @classmethod
    def validate(cls, cfg: "PrivacyConfig", table: Mapping[str, Any], secure_sum: SecureSum, where: str) -> None:
        kind = cfg.secure_sum_kind
        view = secure_sum.view_kind
        if view == ViewKind.PLAIN:
            raise SpecError(
                f"{where}.noise: 'distributed' noise needs a secure sum, but [secure_sum].kind = {kind!r}: the "
                f"aggregator would see each site's share, which carries only 1/{cfg.min_sites - 1} of the "
                "noise variance; use kind = 'ckks'"
            )
        if kind in _MASKING_SUMS or view == ViewKind.MASKED:
            raise SpecError(
                f"{where}.mechanism: 'distributed-dp-sgd' adds continuous Gaussian shares, which a masking sum "
                f"({kind}) "
                "cannot carry; over masking use mechanism = 'ddg' (distributed discrete Gaussian, Kairouz, "
                "Liu, Steinke "
                "2021; site-level), see protocols/dp-distributed-secagg.toml"
            )

    @classmethod
    def constrain(cls, cfg: "PrivacyConfig", secure_sum: SecureSum) -> None:
        # enforced where the data flows: the aggregator withholds, and every key holder refuses to
        # open, a sum with fewer than min_sites contributors (Kairouz et al.'s precondition)
        secure_sum.require_contributors(int(cfg.min_sites))

    @classmethod
    def guarantee(cls, cfg: "PrivacyConfig") -> list[str]:
        m = cfg.min_sites
        return [
            f"patient-level ({cfg.target_text()}, add/remove one patient) for the released aggregates, one "
            "Poisson-sampled Gaussian step per round on the union of all sites' patients, against the public and "
            "against any one curious contributing site (its own noise share subtracted)",
            f"each site adds noise of variance (σC)²/{m - 1}: any k >= {m} contributors minus one carry at least "
            "(σC)²; the secure sum never opens a sum of fewer than min_sites contributors",
            f"assumes: at least {m} sites add honest noise shares from a secret source, nobody sees a single share "
            f"(secure sum {cfg.secure_sum_kind!r}) and no two key holders pool their shares; dataset sizes and "
            "participation are public",
        ]

    # -- run time --------------------------------------------------------------------------

    def validate_plan(self) -> None:
        cfg = self.config
        if cfg.min_sites > len(self.layer.site_sizes):
            raise SpecError(
                f"{cfg.where}.min_sites: {cfg.min_sites} exceeds the {len(self.layer.site_sizes)} sites "
                "of this federation"
            )
        training = getattr(self.layer.plan, "training", None)
        if training is not None and getattr(training, "augment", None) is not None:
            # one noisy gradient of the whole site's data per round, no local training: augmentation (and its
            # multiplicity) would be silently ignored, so the run is refused instead
            raise SpecError(
                f"{cfg.where}: distributed DP computes one noisy gradient per round without local training, "
                "so [training].augment has no effect here; remove it or use dp-sgd (local DP-SGD)"
            )

    def round_event(self, site_id: str, sigma: float) -> dp_event.DpEvent:
        return poisson_gaussian_event(sigma, self.config.sample_rate)

    def public_bounds(self) -> tuple[float, float]:
        """Public bounds on what a site hands the secure sum, so that no data-dependent magnitude
        (e.g. CKKS's histogram of exponents) has to travel: every coordinate of a clipped-gradient sum
        is at most C times the site's size, plus the noise share's tail at 12 standard deviations
        (exceeded with probability < 1e-32 per coordinate); the weight is the site's size."""
        from ...privacy.mechanisms import share_std

        cfg = self.config
        largest = max(self.layer.site_sizes.values())
        sigma = max(self.layer.noise_multiplier_for(s) for s in self.layer.site_sizes)
        tail = 12.0 * share_std(sigma, cfg.max_grad_norm, int(cfg.min_sites))
        return cfg.max_grad_norm * largest + tail, float(largest)

    def local_update(
        self, site: "DpSite", model: "torch.nn.Module", x: "torch.Tensor", y: "torch.Tensor", loss_fn: Any, round: int
    ) -> tuple[np.ndarray, float, dp_event.DpEvent] | None:
        """This site's clipped gradient sum plus its noise share."""
        from ...training.dp_distributed import distributed_share

        cfg = self.config
        values, _ = distributed_share(
            model,
            x,
            y,
            loss_fn,
            sample_rate=cfg.sample_rate,
            clip=cfg.max_grad_norm,
            noise_multiplier=site.noise_multiplier,
            min_sites=cfg.min_sites,
            source=site.source,
        )
        # the weight is the site's size: public, data-independent (the Poisson batch size is not sent)
        return values, float(site.n_examples), site.planned_event()

    def transform(
        self, site: "DpSite", delta: np.ndarray, n_examples: int, round: int
    ) -> tuple[np.ndarray, float, dp_event.DpEvent | None]:
        # local_update already made the final contribution
        return np.asarray(delta, dtype=np.float64), float(n_examples), None

    def release(self, result: SumResult, round: int, contributors: list[str], expected: Sequence[str]) -> np.ndarray:
        cfg, layer = self.config, self.layer
        k = len(contributors)
        sigma = min(layer.noise_multiplier_for(s) for s in contributors)
        if k < cfg.min_sites:  # defence in depth: the secure sum already refused to open this sum
            weak = effective_noise_multiplier(sigma, k, cfg.min_sites)
            raise RoundAborted(
                f"round {round}: only {k} site(s) added noise shares, min_sites is {cfg.min_sites}; without its own "
                f"share a contributor would see noise multiplier {weak:.3g} instead of {sigma:.3g}, so it is not "
                "released"
            )
        # what the other sites' patients actually get (the ledger holds σ, the k = min_sites worst case)
        layer.last_release["noise_multiplier_vs_contributor"] = effective_noise_multiplier(sigma, k, cfg.min_sites, 1)
        layer.last_release["noise_multiplier_vs_public"] = effective_noise_multiplier(sigma, k, cfg.min_sites, 0)
        expected_batch = cfg.sample_rate * sum(layer.site_sizes[s] for s in contributors)
        layer.last_release.update({"expected_batch": expected_batch})
        # the descent direction on the union, -(Σ clipped grads + noise) / (q · N); the server step
        # ([aggregation].server, server_lr) is the optimiser: FedAvg = DP-SGD, FedAdam = DP-Adam
        return -result.total / expected_batch
