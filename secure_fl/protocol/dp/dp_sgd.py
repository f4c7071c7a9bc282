"""``mechanism = "dp-sgd"``, ``noise = "local"``: patient-level DP-SGD inside each site's training.

Abadi et al., "Deep Learning with Differential Privacy", CCS 2016 (Poisson sampling at rate
``batch_size / n``, per-example clipping to C, Gaussian noise σC per step), with Opacus
(:mod:`secure_fl.training.dp_sgd`). Everything that leaves a site is (ε, δ)-DP for each of its
patients (add/remove one patient), composed over every round the site takes part in.
Trusts nobody.

``unit = "person"`` (``[privacy]``; default ``"example"``): user-level DP-SGD (McMahan et al. 2018,
"Learning Differentially Private Recurrent Language Models", Alg. 1, with a person's examples as
one unit): Poisson sampling of *people* at rate q, each sampled person's summed gradient clipped
to C (:class:`secure_fl.training.dp_sgd.PersonDPOptimizer`). The same sampled-Gaussian accountant
then bounds add/remove of one *person*, whatever their number of examples. Assumption: the
task's person ids are correct and complete (:meth:`secure_fl.tasks.base.SiteData.person_ids`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from dp_accounting import dp_event

from ...privacy.accounting import dp_sgd_event
from ...speccheck import one_of
from ..base import ViewKind
from ..pipeline import weight_for
from .mechanism import DpMechanism, Key

if TYPE_CHECKING:  # pragma: no cover
    from .config import PrivacyConfig
    from .layer import DpSite

__all__ = ["DpSgd"]


class DpSgd(DpMechanism):
    name = "dp-sgd"
    placements = ("local",)
    unit = "patient"
    keys = (Key("unit", str, "example", one_of("example", "person")),)

    @classmethod
    def unit_for(cls, cfg: "PrivacyConfig") -> str:
        return "person" if cfg.options.get("unit") == "person" else "patient"

    @classmethod
    def aggregator_view(cls, cfg: "PrivacyConfig") -> str:
        return ViewKind.NOISED.value

    @classmethod
    def guarantee(cls, cfg: "PrivacyConfig") -> list[str]:
        if cls.unit_for(cfg) == "person":
            return [f"person-level ({cfg.target_text()}, add/remove one person with ALL of their examples at the "
                    "site) for everything that leaves each site, composed over all planned rounds: people are "
                    "Poisson-sampled and each person's summed gradient is clipped to C",
                    "assumes: the task's person ids are correct and complete (one person under two ids gets only "
                    "group privacy over them); a person with examples at k sites gets k-fold composition (each "
                    "site's ε once per site); each site's dataset size and which sites take part are public"]
        return [f"patient-level ({cfg.target_text()}, add/remove one patient) for everything that leaves each site, "
                "composed over all planned rounds",
                "assumes: nothing; every site adds all of its noise itself; each site's dataset size (the Poisson rate "
                "batch_size/n and the update's weight) and which sites take part are public"]

    def rate(self, site_id: str) -> float:
        """Poisson rate of DP-SGD at a site: expected batch = ``training.batch_size`` examples (with
        ``unit = "person"`` the rate at which each *person* is sampled, with all their examples)."""
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
                         sample_rate=self.rate(site.site_id), source=site.source,
                         unit=str(self.config.options.get("unit", "example")))

    def transform(self, site: "DpSite", delta: np.ndarray, n_examples: int,
                  round: int) -> tuple[np.ndarray, float, dp_event.DpEvent | None]:
        w = weight_for(n_examples, self.layer.weighting)
        return np.asarray(delta, dtype=np.float64) * w, w, site.training_hook().round_event()
