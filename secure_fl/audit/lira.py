"""Likelihood-ratio membership inference, LiRA (Carlini, Chien, Nasr, Song, Terzis, Tramèr, IEEE S&P 2022,
"Membership Inference Attacks From First Principles").

The attacker trains shadow models the way the target was trained, each on a random half of a data
population that contains the candidates (Sec. IV-B, Algorithm 1). For a candidate (x, y), the model's
confidence is logit-scaled (Sec. IV-C, eq. 4, computed stably from the logits):

    phi = log p_y - log sum_{y' != y} p_y'        (= log(p_y / (1 - p_y)))

which is close to Gaussian over training runs. From the shadows that trained on (x, y) ("in") and
those that did not ("out") LiRA fits N(mu_in, s_in^2) and N(mu_out, s_out^2) and scores the target
model's phi by

    online:  log N(phi; mu_in, s_in^2) - log N(phi; mu_out, s_out^2)     (Algorithm 1)
    offline: log P[Z <= (phi - mu_out) / s_out], Z ~ N(0, 1)             (Sec. VI-C, one-sided test)

With few shadows the per-example variances are unreliable; the paper's "fixed variance" variant
(Sec. VI-A, Fig. 6) uses one variance for all examples, which is the default here. A candidate
with no "in" (or no "out") shadow gets the mean over all candidates' in (out) values.

Evaluation (Sec. III, Sec. VI): TPR at fixed low FPR over many targets. Besides the released
model, each shadow serves as a target in turn against the other shadows (leave-one-out), which
gives the FPR resolution 0.1 % needs.

Assumption the attack rests on: the attacker knows the training algorithm (protocol, its
parameters, rounds, sites' sizes) and holds a population from the data distribution that
contains the candidates; it never sees a site's internals.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from scipy import stats
from torch import nn

from .metrics import roc_auc, roc_curve, tpr_at_fpr

__all__ = ["logit_confidence", "lira_scores", "leave_one_out", "roc_summary"]


@torch.no_grad()
def logit_confidence(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 512) -> np.ndarray:
    """phi = log p_y - log(1 - p_y) of ``model`` on every (x, y), from the logits (no overflow at p_y -> 1)."""
    model.eval()
    out = []
    for i in range(0, len(y), batch_size):
        z = model(x[i : i + batch_size]).double()
        yb = y[i : i + batch_size]
        zy = z.gather(1, yb[:, None])[:, 0]
        others = z.scatter(1, yb[:, None], float("-inf"))
        out.append(zy - torch.logsumexp(others, dim=1))
    return torch.cat(out).numpy() if out else np.empty(0)


def _fit(shadow_phi: np.ndarray, mask: np.ndarray, fixed_variance: bool) -> tuple[np.ndarray, np.ndarray]:
    count = mask.sum(axis=0)
    total = np.where(mask, shadow_phi, 0.0).sum(axis=0)
    if not mask.any():
        raise ValueError("lira_scores: no shadow model in this group (need shadows with and without candidates)")
    fallback = float(shadow_phi[mask].mean())
    mu = np.where(count > 0, total / np.maximum(count, 1), fallback)
    resid = np.where(mask, shadow_phi - mu[None, :], 0.0)
    if fixed_variance or count.max() < 2:
        sd = np.full(mu.shape, float(np.sqrt((resid**2).sum() / max(mask.sum() - 1, 1))))
    else:
        per = np.sqrt((resid**2).sum(axis=0) / np.maximum(count - 1, 1))
        sd = np.where(count >= 2, per, float(np.sqrt((resid**2).sum() / max(mask.sum() - 1, 1))))
    return mu, np.maximum(sd, 1e-6)


def lira_scores(
    target_phi: np.ndarray, shadow_phi: np.ndarray, shadow_in: np.ndarray, online: bool = True,
    fixed_variance: bool = True,
) -> np.ndarray:
    """Membership scores of the candidates under the target (higher = "member").

    ``target_phi`` [N]: the target model's :func:`logit_confidence`; ``shadow_phi`` [S, N] the shadows';
    ``shadow_in`` [S, N] whether shadow s trained on candidate n.
    """
    target_phi, shadow_phi = np.asarray(target_phi, np.float64), np.asarray(shadow_phi, np.float64)
    shadow_in = np.asarray(shadow_in, bool)
    if shadow_phi.shape != shadow_in.shape or shadow_phi.ndim != 2 or shadow_phi.shape[1] != len(target_phi):
        raise ValueError(f"lira_scores: shapes target {target_phi.shape}, shadows {shadow_phi.shape}, "
                         f"in-mask {shadow_in.shape}; expected [N], [S, N], [S, N]")
    mu_out, sd_out = _fit(shadow_phi, ~shadow_in, fixed_variance)
    if not online:
        return stats.norm.logcdf((target_phi - mu_out) / sd_out)
    mu_in, sd_in = _fit(shadow_phi, shadow_in, fixed_variance)
    return stats.norm.logpdf(target_phi, mu_in, sd_in) - stats.norm.logpdf(target_phi, mu_out, sd_out)


def leave_one_out(
    shadow_phi: np.ndarray, shadow_in: np.ndarray, online: bool = True, fixed_variance: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Each shadow as the target against the others (Carlini et al., Sec. VI): pooled (scores, labels)."""
    S = len(shadow_phi)
    if S < 3:
        raise ValueError(f"leave_one_out: need at least 3 shadow models, found {S}")
    scores, labels = [], []
    for s in range(S):
        rest = np.arange(S) != s
        scores.append(lira_scores(shadow_phi[s], shadow_phi[rest], shadow_in[rest], online, fixed_variance))
        labels.append(shadow_in[s])
    return np.concatenate(scores), np.concatenate(labels).astype(bool)


def roc_summary(scores: np.ndarray, labels: np.ndarray, fprs: tuple[float, ...] = (0.001, 0.01)) -> dict[str, Any]:
    """AUC, TPR at each FPR of ``fprs``, the smallest non-zero FPR, and the ROC on a log grid of FPRs."""
    labels = np.asarray(labels).astype(bool)
    out: dict[str, Any] = {"auc": roc_auc(scores, labels), "n_members": int(labels.sum()),
                           "n_non_members": int((~labels).sum()), "min_nonzero_fpr": 1.0 / int((~labels).sum())}
    for f in fprs:
        out[f"tpr_at_{f * 100:g}%fpr"] = tpr_at_fpr(scores, labels, f)
    fpr, tpr = roc_curve(scores, labels)
    grid = np.unique(np.r_[np.logspace(-4, 0, 41), fpr[fpr > 0][:1]])
    out["roc"] = {"fpr": grid.round(6).tolist(),
                  "tpr": [round(float(tpr[fpr <= g + 1e-12].max()), 5) for g in grid]}
    return out
