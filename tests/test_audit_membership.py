"""Loss-threshold membership inference (Yeom et al. 2018) on a released model."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from secure_fl.audit.membership import loss_threshold_attack
from secure_fl.audit.metrics import roc_auc, tpr_at_fpr
from secure_fl.tasks.registry import build_task
from secure_fl.training.config import TrainingConfig
from secure_fl.training.local import train_local


def test_overfit_model_leaks_membership_above_random_guessing() -> None:
    # random labels: nothing to generalise, so the trained model only memorises its 100 members
    task = build_task("synthetic-tabular", {"n_sites": 1, "n_per_site": 500, "n_features": 60, "model": "mlp",
                                            "test_fraction": 0.8, "seed": 1})
    site = task.sites[0]
    gen = torch.Generator().manual_seed(0)
    site.y_train = torch.randint(0, 2, site.y_train.shape, generator=gen)
    site.y_test = torch.randint(0, 2, site.y_test.shape, generator=gen)
    model = task.make_model(0)
    before = loss_threshold_attack(model, task)
    cfg = TrainingConfig(local_epochs=100, batch_size=100, lr=0.01, optimizer="adam")
    train_local(model, site.x_train, site.y_train, cfg, task.loss_fn(), seed=0)
    res = loss_threshold_attack(model, task)
    assert res["n_non_members"] == 400 and res["member_loss_mean"] < res["non_member_loss_mean"]
    assert res["auc"] > 0.8, res["auc"]
    assert res["tpr_at_1%fpr"] >= 0.04, res["tpr_at_1%fpr"]  # random guessing: 0.01
    assert before["auc"] < 0.6  # the untrained model leaks (almost) nothing


def test_roc_metrics_known_values() -> None:
    labels = np.array([1, 1, 0, 0])
    assert roc_auc(np.array([4.0, 3.0, 2.0, 1.0]), labels) == pytest.approx(1.0)
    assert roc_auc(np.array([1.0, 2.0, 3.0, 4.0]), labels) == pytest.approx(0.0)
    assert roc_auc(np.array([1.0, 1.0, 1.0, 1.0]), labels) == pytest.approx(0.5)
    assert tpr_at_fpr(np.array([4.0, 2.5, 3.0, 1.0]), labels, 0.0) == pytest.approx(0.5)
