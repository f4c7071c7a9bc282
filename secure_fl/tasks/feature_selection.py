"""A feature-selection layer: one learnable weight per input feature, in front of a small network.

The layer multiplies input feature ``j`` by its own weight ``w_j`` (elementwise, no mixing),
so ``|w_j|`` after training ranks the features; an L1 penalty ``λ Σ_j |w_j|`` drives the weights
of unhelpful features to exactly zero. This is the deep-feature-selection layer of Li, Chen and
Wasserman, "Deep Feature Selection: Theory and Application to Identify Enhancers and
Promoters", J. Comput. Biol. 23(5), 2016, Sec. 2 (there with an elastic-net penalty), used to
rank genes in expression data as in Mori et al., Sci. Rep. 2021.

The penalty is applied as a proximal step after every optimiser step (soft thresholding,
``w ← sign(w) · max(|w| − η λ, 0)``; Parikh and Boyd, "Proximal Algorithms", Found. Trends
Optim. 1(3), 2014, Sec. 6.5.2), not as a loss term, for two reasons: under DP-SGD the optimiser
replaces the gradient by the clipped, noised per-example sum, which would silently drop a
penalty's gradient; and the proximal step depends only on the current weights, so it is
post-processing and costs no privacy. With Adam the step ``η λ`` is the usual heuristic, not an
exact proximal map. The weights are ordinary parameters: they travel through the secure sum
like every other weight.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

__all__ = ["FeatureSelection", "FeatureSelectionNet", "feature_ranking", "jaccard", "top_k"]


class FeatureSelection(nn.Module):
    """``x ↦ x ⊙ w`` with one weight per feature, initialised to 1 (every feature passes)."""

    def __init__(self, n_features: int) -> None:
        super().__init__()
        if n_features < 1:
            raise ValueError(f"n_features must be >= 1, found {n_features}")
        self.weight = nn.Parameter(torch.ones(n_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.weight


class FeatureSelectionNet(nn.Module):
    """Feature-selection layer, then a one-hidden-layer network (``hidden = 0``: a linear head).

    ``l1`` is the penalty weight λ; :meth:`proximal_step` applies it (called by local training
    after every optimiser step, see :func:`secure_fl.training.local.train_local`).
    """

    def __init__(self, n_features: int, num_classes: int = 2, hidden: int = 16, l1: float = 1e-3) -> None:
        super().__init__()
        if hidden < 0:
            raise ValueError(f"hidden must be >= 0, found {hidden}")
        if not (l1 >= 0 and np.isfinite(l1)):
            raise ValueError(f"l1 must be a finite number >= 0, found {l1}")
        self.l1 = float(l1)
        self.select = FeatureSelection(n_features)
        if hidden == 0:
            self.head: nn.Module = nn.Linear(n_features, num_classes)
        else:
            self.head = nn.Sequential(nn.Linear(n_features, hidden), nn.ReLU(), nn.Linear(hidden, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.select(x))

    @torch.no_grad()
    def proximal_step(self, lr: float) -> None:
        """Soft-threshold the selection weights by ``lr · l1`` (the proximal map of the L1 penalty)."""
        if self.l1 > 0:
            w = self.select.weight
            w.copy_(torch.sign(w) * torch.clamp(w.abs() - lr * self.l1, min=0.0))

    def feature_scores(self) -> np.ndarray:
        """``|w_j|`` per feature: the ranking score of each input feature."""
        return self.select.weight.detach().abs().cpu().numpy().copy()


def feature_ranking(scores: np.ndarray) -> np.ndarray:
    """Feature indices from most to least important (ties by index, so the order is deterministic)."""
    scores = np.asarray(scores, dtype=np.float64)
    return np.lexsort((np.arange(len(scores)), -scores))


def top_k(scores: np.ndarray, k: int, tol: float = 0.0) -> set[int]:
    """The ``k`` highest-scoring features among those with a score above ``tol`` (default: non-zero).

    Features the L1 penalty set to zero are not selected: with fewer than ``k`` survivors the set
    is smaller (ranking zeros by index would put the same arbitrary features in every set and
    inflate the overlap of two sets). ``tol`` > 0 treats as zero what an approximate secure sum
    (CKKS adds an error of about 1e-6) leaves of a weight the penalty zeroed at every site.
    """
    if not 1 <= k <= len(scores):
        raise ValueError(f"k must be in [1, {len(scores)}], found {k}")
    scores = np.asarray(scores)
    return {int(i) for i in feature_ranking(scores)[:k] if scores[i] > tol}


def jaccard(a: Sequence[int] | set[int], b: Sequence[int] | set[int]) -> float:
    """|A ∩ B| / |A ∪ B| (1.0 for two empty sets)."""
    sa, sb = set(a), set(b)
    union = sa | sb
    return 1.0 if not union else len(sa & sb) / len(union)
