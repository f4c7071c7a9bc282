"""What the DP specs promise, checked where it is enforced (issue 8, items 1, 6, 10 and the DP part of 12)."""

from __future__ import annotations

import copy
import math
import tomllib

import numpy as np
import pytest

from secure_fl.errors import RoundAborted, SpecError
from secure_fl.privacy import accounting as A
from secure_fl.protocol.base import SumResult
from secure_fl.protocol.ckks import CkksSum
from secure_fl.protocol.dp import build_privacy_layer, parse_privacy
from secure_fl.protocol.spec import PROTOCOLS_DIR, parse_protocol
from secure_fl.training.config import RunPlan, TrainingConfig


def _raw(name: str) -> dict:
    return tomllib.loads((PROTOCOLS_DIR / f"{name}.toml").read_text())


# -- item 1: distributed noise, too few shares -------------------------------------------------

def test_min_sites_is_enforced_inside_the_secure_sum():
    """The privacy layer raises the secure sum's min_contributors: the sum (not a later release
    step) refuses to open with fewer noise shares than min_sites."""
    data = copy.deepcopy(_raw("dp-distributed-ckks"))
    data["privacy"]["min_sites"] = 5
    spec = parse_protocol(data, "x.toml")
    assert spec.build_secure_sum().min_contributors == 5  # the run's secure sum
    ckks = CkksSum()
    parse_privacy(data["privacy"], "[privacy]", ckks)
    assert ckks.min_contributors == 5  # the parse-time one as well


def test_charge_weaker_is_refused_with_the_reason():
    data = copy.deepcopy(_raw("dp-distributed-ckks"))
    data["privacy"]["on_too_few"] = "charge_weaker"
    with pytest.raises(SpecError) as err:
        parse_protocol(data, "x.toml")
    msg = str(err.value)
    assert msg.startswith("x.toml [privacy].on_too_few: 'charge_weaker' was removed")
    assert "protects no one" in msg and "found 'charge_weaker'" in msg


def _dist_layer(tmp_path, min_sites=3):
    table = {"mechanism": "distributed-dp-sgd", "noise": "distributed", "delta": 1e-5, "noise_multiplier": 1.0,
             "max_grad_norm": 0.5, "sample_rate": 0.25, "min_sites": min_sites, "secure_noise": False}
    cfg = parse_privacy(table, "[privacy]", CkksSum())
    plan = RunPlan(rounds=4, fraction=1.0, training=TrainingConfig())
    return build_privacy_layer(cfg, weighting="examples", plan=plan, site_sizes={"A": 40, "B": 50, "C": 60, "D": 70},
                               run_dir=tmp_path, noise_rng=np.random.default_rng(1), protocol_name="p", spec_hash="h")


def test_release_still_refuses_too_few_contributors(tmp_path):
    """Defence in depth: a sum that reached the release with < min_sites contributors is not used."""
    layer = _dist_layer(tmp_path)
    with pytest.raises(RoundAborted, match=r"only 2 site\(s\) added noise shares, min_sites is 3"):
        layer.release(SumResult(np.zeros(4), 2.0, ("A", "B")), 0, ["A", "B", "C"])


def test_noise_against_a_curious_contributor_meets_the_target_for_every_k(tmp_path):
    """Each share has variance (σC)²/(m−1): for k = m, m+1 contributors, a contributor that removes
    its own share is left with at least (σC)² of noise, which the release reports; the ledger
    charge (σ) is never less private than what the others' patients get."""
    import torch
    from torch import nn

    layer = _dist_layer(tmp_path)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 2))
    x, y = torch.zeros(0, 3), torch.zeros(0, dtype=torch.long)
    loss = nn.functional.cross_entropy
    for k in (3, 4):
        sites = ("A", "B", "C", "D")[:k]
        draws = [[layer.site(s).local_update(model, x, y, loss, 0)[0] for s in sites] for _ in range(200)]
        seen_by_a = np.concatenate([sum(d[1:]) for d in draws])  # A subtracts its own share
        expected = 0.5 * math.sqrt((k - 1) / 2)  # σC √((k−1)/(m−1))
        assert seen_by_a.std() == pytest.approx(expected, rel=0.03)
        assert seen_by_a.std() >= 0.97 * 0.5  # never below the target σC
        layer.release(SumResult(sum(draws[0]), float(k), sites), 0, list(sites))
        assert layer.last_release["noise_multiplier_vs_contributor"] == pytest.approx(math.sqrt((k - 1) / 2))
        assert layer.last_release["noise_multiplier_vs_public"] == pytest.approx(math.sqrt(k / 2))
    assert layer.site("A").planned_event() == A.poisson_gaussian_event(1.0, 0.25)
