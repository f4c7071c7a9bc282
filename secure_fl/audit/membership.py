"""Membership inference on a released model: the loss-threshold baseline (Yeom, Giacomelli,
Fredrikson, Jha, CSF 2018, Sec. 3.2, "Adversary 1" with a sweep over the threshold).

Score of an example = minus its loss under the released model; members are the sites' training
examples, non-members their test examples. It is a *baseline*: it uses no shadow models and so
no per-example calibration (LiRA, Carlini et al. 2022, is stronger, especially at low FPR).
Results are reported as TPR at fixed low FPR and ROC AUC (Carlini et al. 2022, Sec. 3).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from ..tasks.base import Task
from .metrics import roc_auc, roc_curve, tpr_at_fpr

__all__ = ["per_example_loss", "loss_threshold_attack"]


@torch.no_grad()
def per_example_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 512) -> np.ndarray:
    model.eval()
    out = []
    for i in range(0, len(y), batch_size):
        logits = model(x[i : i + batch_size])
        out.append(nn.functional.cross_entropy(logits, y[i : i + batch_size], reduction="none"))
    return torch.cat(out).double().numpy() if out else np.empty(0)


def loss_threshold_attack(model: nn.Module, task: Task, fprs: tuple[float, ...] = (0.001, 0.01)) -> dict[str, Any]:
    """Members = every site's training set, non-members = every site's test set."""
    members = np.concatenate([per_example_loss(model, s.x_train, s.y_train) for s in task.sites])
    non = np.concatenate([per_example_loss(model, s.x_test, s.y_test) for s in task.sites if s.n_test])
    scores = -np.concatenate([members, non])
    labels = np.r_[np.ones(len(members)), np.zeros(len(non))]
    fpr, tpr = roc_curve(scores, labels)
    out: dict[str, Any] = {
        "attack": "loss threshold (Yeom et al. 2018), a baseline without shadow models",
        "auc": roc_auc(scores, labels),
        "n_members": int(len(members)), "n_non_members": int(len(non)),
        "min_nonzero_fpr": 1.0 / len(non),
        "member_loss_mean": float(members.mean()), "non_member_loss_mean": float(non.mean()),
    }
    for f in fprs:
        out[f"tpr_at_{f * 100:g}%fpr"] = tpr_at_fpr(scores, labels, f)
    keep = np.unique(np.linspace(0, len(fpr) - 1, min(len(fpr), 200)).astype(int))
    out["roc"] = {"fpr": fpr[keep].round(5).tolist(), "tpr": tpr[keep].round(5).tolist()}
    return out
