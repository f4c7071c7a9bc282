"""The update pipeline around the secure sum: what a site does to its delta before it
leaves, and what happens to the released sum before the server step.

docs/architecture.md, "The one flow", step 2 (update transforms) and the hand-over to step 4. The engine calls, per
round and per participating site, in this order::

    privacy = layer.site(site_id)             # persistent across rounds (accountant, ledger)
    privacy.before_round(round)               # may raise SiteRejected (budget exhausted)
    hook = privacy.training_hook()            # DP-SGD wrapper for local training, or None
    ... local training ...
    values, weight = privacy.transform(delta, n_examples, round)   # clip, noise share, weight
    privacy.charge(round)                     # ledger entry BEFORE the update leaves the site
    ... secure sum ...
    mean = layer.release(result, round)       # central noise / min_sites check, then mean

Without a ``[privacy]`` table the plain :class:`NoPrivacy` layer below is used: it only
weights the delta (by example count or uniformly).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np

from .base import SumResult

__all__ = ["TrainingHook", "SitePrivacy", "PrivacyLayer", "NoPrivacy", "weight_for"]


class TrainingHook(Protocol):
    """Wraps local training (e.g. Opacus DP-SGD). See :mod:`secure_fl.training.local`.

    A hook may also define ``abort_training(model, optimizer)``: local training calls it instead of
    ``after_training`` when training raises, and it must leave the model as ``wrap`` found it.
    """

    def wrap(self, model: Any, optimizer: Any, loader: Any) -> tuple[Any, Any, Any]: ...

    def after_training(self, model: Any, optimizer: Any, steps: int) -> None: ...


class SitePrivacy(Protocol):
    def before_round(self, round: int) -> None: ...

    def training_hook(self) -> TrainingHook | None: ...

    def transform(self, delta: np.ndarray, n_examples: int, round: int) -> tuple[np.ndarray, float]: ...

    def charge(self, round: int) -> dict[str, Any]: ...

    def spent(self) -> dict[str, Any]: ...


class PrivacyLayer(Protocol):
    def site(self, site_id: str) -> SitePrivacy: ...

    def release(self, result: SumResult, round: int, expected_sites: Sequence[str]) -> np.ndarray: ...


def weight_for(n_examples: int, weighting: str) -> float:
    if weighting == "examples":
        return float(n_examples)
    if weighting == "uniform":
        return 1.0
    raise ValueError(f"unknown weighting {weighting!r}; expected 'examples' or 'uniform'")


class _PlainSite:
    def __init__(self, weighting: str) -> None:
        self.weighting = weighting

    def before_round(self, round: int) -> None:
        return None

    def training_hook(self) -> None:
        return None

    def transform(self, delta: np.ndarray, n_examples: int, round: int) -> tuple[np.ndarray, float]:
        w = weight_for(n_examples, self.weighting)
        return delta.astype(np.float64) * w, w

    def charge(self, round: int) -> dict[str, Any]:
        return {}

    def spent(self) -> dict[str, Any]:
        return {}


class NoPrivacy:
    """No DP: sites send their weighted delta; the released mean is used as is."""

    def __init__(self, weighting: str = "examples") -> None:
        self.weighting = weighting
        self._sites: dict[str, _PlainSite] = {}

    def site(self, site_id: str) -> _PlainSite:
        return self._sites.setdefault(site_id, _PlainSite(self.weighting))

    def release(self, result: SumResult, round: int, expected_sites: Sequence[str]) -> np.ndarray:
        return result.mean
