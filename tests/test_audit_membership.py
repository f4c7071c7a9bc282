"""Membership inference on a released model: the loss-threshold baseline (Yeom et al. 2018) and LiRA
(Carlini et al. 2022) with shadow federations trained by the tool."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from secure_fl.audit.lira import leave_one_out, lira_scores, logit_confidence, roc_summary
from secure_fl.audit.membership import loss_threshold_attack
from secure_fl.audit.metrics import roc_auc, tpr_at_fpr
from secure_fl.audit.shadows import population, train_shadows
from secure_fl.errors import SecureFLError
from secure_fl.run.experiment import parse_experiment
from secure_fl.run.federation import Federation
from secure_fl.tasks.registry import build_task
from secure_fl.training.config import TrainingConfig
from secure_fl.training.flat import load_flat
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


# -- LiRA (Carlini et al. 2022) ---------------------------------------------------------------------------------


def _gaussian_world(separation: float, S: int = 16, N: int = 400, seed: int = 0):
    """phi = per-example difficulty + separation * member + noise: the setting LiRA's Gaussian model describes."""
    rng = np.random.default_rng(seed)
    hard = rng.normal(scale=3.0, size=N)  # examples differ far more than membership moves them
    masks = rng.random((S + 1, N)) < 0.5
    phi = hard[None, :] + separation * masks + rng.normal(scale=0.3, size=(S + 1, N))
    return phi[0], masks[0], phi[1:], masks[1:]


@pytest.mark.parametrize("online", [True, False])
def test_lira_calibrates_per_example_where_a_global_threshold_cannot(online: bool) -> None:
    target_phi, target_in, shadow_phi, shadow_in = _gaussian_world(separation=1.5)
    scores = lira_scores(target_phi, shadow_phi, shadow_in, online=online)
    assert tpr_at_fpr(scores, target_in, 0.01) > 0.5
    assert roc_auc(target_phi, target_in) < 0.7  # a threshold on the confidence itself (the loss baseline)
    loo_scores, loo_labels = leave_one_out(shadow_phi, shadow_in, online=online)
    assert len(loo_scores) == shadow_phi.size and roc_auc(loo_scores, loo_labels) > 0.95


def test_lira_finds_nothing_where_membership_changes_nothing() -> None:
    target_phi, target_in, shadow_phi, shadow_in = _gaussian_world(separation=0.0)
    summary = roc_summary(*leave_one_out(shadow_phi, shadow_in))
    assert abs(summary["auc"] - 0.5) < 0.03 and summary["tpr_at_1%fpr"] < 0.03
    assert summary["roc"]["fpr"][0] == pytest.approx(1e-4) and summary["roc"]["tpr"][-1] == 1.0


def test_logit_confidence_is_the_log_odds_of_the_true_label() -> None:
    model = nn.Linear(3, 3, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.eye(3) * 40.0)  # p_y -> 1: a naive log(p / (1 - p)) overflows
    x, y = torch.eye(3), torch.tensor([0, 1, 0])
    phi = logit_confidence(model, x, y)
    assert phi[0] == pytest.approx(40.0 - np.log(2.0)) and np.isfinite(phi).all()
    assert phi[1] == pytest.approx(40.0 - np.log(2.0)) and phi[2] < -39
    with torch.no_grad():
        model.weight.mul_(0.05)  # moderate confidences: the naive formula is exact enough to compare
        p = torch.softmax(model(x).double(), 1)[torch.arange(3), y]
    assert logit_confidence(model, x, y) == pytest.approx((torch.log(p) - torch.log1p(-p)).numpy(), rel=1e-9)


def test_lira_with_shadow_federations_finds_members_of_an_overfit_release(tmp_path) -> None:
    # random labels: the released model can only memorise; shadows are real plain-fedavg runs of the same setting
    exp = parse_experiment({
        "name": "lira-small", "protocols": ["plain-fedavg"], "rounds": 2,
        "task": {"name": "synthetic-tabular", "n_sites": 2, "n_per_site": 120, "n_features": 40, "model": "mlp",
                 "test_fraction": 0.5, "seed": 1},
        "training": {"local_epochs": 15, "batch_size": 30, "lr": 0.01, "optimizer": "adam"},
    })
    task = build_task(exp.task_name, exp.task_params, "test")
    gen = torch.Generator().manual_seed(0)
    for s in task.sites:
        s.y_train = torch.randint(0, 2, s.y_train.shape, generator=gen)
        s.y_test = torch.randint(0, 2, s.y_test.shape, generator=gen)
    fed = Federation(exp, task, exp.variants[0], 0, tmp_path / "target")
    for r in range(exp.rounds):
        fed.round(r)
    model = task.make_model(0)
    load_flat(model, fed.weights)
    pop = population(task)
    phi, masks, facts = train_shadows(exp, exp.variants[0], 0, pop, 6)
    assert facts["shadows"] == 6 and phi.shape == masks.shape == (6, len(pop.y))
    assert 0.4 < masks.mean() < 0.6 and not (masks[0] == masks[1]).all()  # seeded coins, different per shadow
    released = lira_scores(logit_confidence(model, pop.x, pop.y), phi, masks)
    res = roc_summary(np.r_[released, leave_one_out(phi, masks)[0]], np.r_[pop.target_in, leave_one_out(phi, masks)[1]])
    assert res["auc"] > 0.75, res["auc"]
    assert res["tpr_at_1%fpr"] > 0.05, res["tpr_at_1%fpr"]  # random guessing: 0.01
    with pytest.raises(SecureFLError, match="at least 4"):
        train_shadows(exp, exp.variants[0], 0, pop, 2)
