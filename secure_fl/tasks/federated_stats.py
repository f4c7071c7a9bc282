"""Federated standardisation through a protocol's secure sum: what each site puts in, and how the
released sum becomes the statistics every site applies.

With ``standardise = "federated"`` and a public ``range = [lo, hi]`` for every numeric column
(``[task.columns]``), each site's input is ``(n · v, n)`` with ``v = [mean(x'), mean(x'²)]`` over
its training rows and ``x' = (x - lo) / (hi - lo)`` in [0, 1] (ordinal columns: their positions,
bounds 0 and the last; :func:`secure_fl.tasks.tabular.bounded_moments`). A secure sum releases
``Σ n_k v_k / Σ n_k``, i.e. the pooled ``mean(x')`` and ``mean(x'²)``, from which the pooled mean
and standard deviation follow (``var = E[x'²] - E[x']²``, scaled back by ``hi - lo``).

What is revealed, and to whom, is what the protocol reveals of any sum (its ``threat_model``): to
the key holders (CKKS) or the aggregator (plain, SecAgg, SecAgg+), the pooled moments over at
least the protocol's minimum number of contributors; nothing about a single site beyond that,
under the protocol's assumptions. Quantizing sums (SecAgg/SecAgg+, 16 bits over [-1, 1]) round
each site's ``v`` to about 3·10⁻⁵ of the range; the pooled sd is then good to about 1 %, plenty to
standardise. The moments are not noised: a protocol with a DP layer is refused (the release would
not be counted in ε). The run layer drives the sum before round 0 (``secure_fl/run/standardise.py``).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..errors import DataError
from .base import SiteData, Task

__all__ = ["FederatedInputs", "restandardise"]


@dataclass
class FederatedInputs:
    """Each site's input to the secure sum of federated standardisation. In a deployment each site
    holds only its own entry; in the simulation the run layer hands each to that site's party."""

    inputs: dict[str, tuple[np.ndarray, float]]  # site -> (n · v, n)
    preprocessing: Any  # the task's Preprocessor (columns, bounds, pool_bounded)

    @property
    def dim(self) -> int:
        return int(next(iter(self.inputs.values()))[0].shape[0])

    def pooled(self, mean: np.ndarray, weight: float) -> dict[str, Any]:
        """The statistics every site applies, from the released mean of the inputs and the total weight."""
        return dict(self.preprocessing.pool_bounded(mean, weight))


def restandardise(task: Task, pooled: dict[str, Any]) -> Task:
    """A copy of ``task`` whose sites' features use ``pooled`` (mean, sd) instead of the statistics they
    were built with (``task.info["preprocessing"]["pooled"]``): ``x ↦ (x · sd₀ + mean₀ - mean) / sd``."""
    pre = task.info.get("preprocessing")
    old = pre.get("pooled") if isinstance(pre, dict) else None
    if old is None:
        raise DataError(f"task {task.name!r} was not built with federated standardisation")
    mu0, sd0 = np.array(old["mean"]), np.array(old["sd"])
    mu1, sd1 = np.array(pooled["mean"]), np.array(pooled["sd"])
    if mu1.shape != mu0.shape or sd1.shape != sd0.shape:
        raise DataError(f"federated standardisation: {mu1.shape} statistics for {mu0.shape} features")

    def remap(x: torch.Tensor) -> torch.Tensor:
        raw = x.double().numpy() * sd0 + mu0
        return torch.tensor((raw - mu1) / sd1, dtype=x.dtype)

    out = copy.copy(task)
    out.sites = [SiteData(s.name, remap(s.x_train), s.y_train, remap(s.x_test), s.y_test) for s in task.sites]
    out.info = {**task.info, "preprocessing": {**pre, "pooled": dict(pooled)}}  # type: ignore[dict-item]
    return out
