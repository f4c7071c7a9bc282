"""``mechanism = "dp-sgd"``, ``noise = "local"``: patient-level DP-SGD inside each site's training.

Abadi et al., "Deep Learning with Differential Privacy", CCS 2016 (Poisson sampling at rate
``batch_size / n``, per-example clipping to C, Gaussian noise σC per step), with Opacus
(:mod:`secure_fl.training.dp_sgd`). Everything that leaves a site is (ε, δ)-DP for each of its
patients (add/remove one patient), composed over every round the site takes part in.
Trusts nobody.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from dp_accounting import dp_event

from ...privacy.accounting import dp_sgd_event
from ..base import ViewKind
from ..pipeline import weight_for
from .mechanism import DpMechanism

if TYPE_CHECKING:  # pragma: no cover
    from .config import PrivacyConfig
    from .layer import DpSite

__all__ = ["DpSgd"]


class DpSgd(DpMechanism):
    name = "dp-sgd"
    placements = ("local",)
    unit = "patient"

    @classmethod
    def aggregator_view(cls, cfg: "PrivacyConfig") -> str:
        return ViewKind.NOISED.value

    @classmethod
    def guarantee(cls, cfg: "PrivacyConfig") -> list[str]:
        return [f"patient-level ({cfg.target_text()}) for everything that leaves each site, composed over all "
                "planned rounds",
                "assumes: nothing; every site adds all of its noise itself"]

    def rate(self, site_id: str) -> float:
        """Poisson rate of DP-SGD at a site: expected batch = ``training.batch_size``."""
        return min(1.0, self.layer.plan.training.batch_size / self.layer.site_sizes[site_id])

    def steps(self, site_id: str) -> int:
        t = self.layer.plan.training
        if t.local_steps is not None:
            return int(t.local_steps)
        return int(t.local_epochs) * max(1, round(1.0 / self.rate(site_id)))

    def round_event(self, site_id: str, sigma: float) -> dp_event.DpEvent:
        return dp_sgd_event(sigma, self.rate(site_id), self.steps(site_id))

    def training_hook(self, site: "DpSite") -> Any:
        from ...training.dp_sgd import DpSgdHook

        return DpSgdHook(noise_multiplier=site.noise_multiplier, max_grad_norm=self.config.max_grad_norm,
                         sample_rate=self.rate(site.site_id), source=site.source)

    def transform(self, site: "DpSite", delta: np.ndarray, n_examples: int,
                  round: int) -> tuple[np.ndarray, float, dp_event.DpEvent | None]:
        w = weight_for(n_examples, self.layer.weighting)
        return np.asarray(delta, dtype=np.float64) * w, w, site.training_hook().round_event()
