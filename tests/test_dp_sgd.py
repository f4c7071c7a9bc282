"""Patient-level DP-SGD (Opacus) at a site and distributed DP-SGD under a secure sum."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from secure_fl.errors import RoundAborted, SiteRejected
from secure_fl.privacy import accounting as A
from secure_fl.privacy.ledger import PrivacyLedger
from secure_fl.privacy.noise import NoiseSource
from secure_fl.protocol.base import SumResult
from secure_fl.protocol.dp import build_privacy_layer, parse_privacy
from secure_fl.protocol.plain import PlainSum
from secure_fl.training.config import RunPlan, TrainingConfig
from secure_fl.training.dp_distributed import clipped_gradient_sum, flat_params
from secure_fl.training.dp_sgd import DpSgdHook, IncompatibleModel, check_dp_compatible

LOSS = nn.functional.cross_entropy


def _data(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=g)
    return x, (x[:, 0] + 0.5 * x[:, 1] > 0).long()


def _model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 2))


def _train(hook, model, x, y, lr=0.5, epochs=1) -> int:
    """The engine's loop (training/local.py) in miniature."""
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    loader = DataLoader(TensorDataset(x, y), batch_size=8, shuffle=True)
    wrapped, opt, loader = hook.wrap(model, opt, loader)
    steps = 0
    for _ in range(epochs):
        for xb, yb in loader:
            if len(yb) == 0:
                continue
            opt.zero_grad()
            LOSS(wrapped(xb), yb).backward()
            opt.step()
            steps += 1
    hook.after_training(wrapped, opt, steps)
    return steps


def test_one_dp_sgd_step_is_clip_sum_noise_divide():
    """With q = 1 every example is in the batch: the step is -lr (Σ clip_C(g_i) + N(0, σ²C²)) / n."""
    x, y = _data(20)
    model = _model()
    start = flat_params(model)
    sigma, clip, lr = 0.7, 0.05, 0.3
    hook = DpSgdHook(
        noise_multiplier=sigma, max_grad_norm=clip, sample_rate=1.0, source=NoiseSource.seeded(np.random.default_rng(5))
    )
    assert _train(hook, model, x, y, lr=lr) == 1
    got = flat_params(model) - start
    clipped, norms = clipped_gradient_sum(_model(), x, y, LOSS, clip)
    assert (norms > clip).all()  # every example is clipped: the test exercises clipping
    rng = np.random.default_rng(5)
    rng.random(20)  # the Poisson draw of the batch
    noise = np.concatenate([rng.normal(0.0, sigma * clip, tuple(p.shape)).ravel() for p in _model().parameters()])
    expected = -lr * (clipped + noise) / 20
    assert np.allclose(got, expected, atol=1e-6)
    assert not any(hasattr(p, "grad_sample") for p in model.parameters())  # Opacus hooks removed
    assert list(model.state_dict()) == ["0.weight", "0.bias", "2.weight", "2.bias"]


def test_batchnorm_is_refused_naming_the_layer():
    model = nn.Sequential()
    model.add_module("encoder", nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4)))
    model.add_module("head", nn.Linear(4, 2))
    with pytest.raises(IncompatibleModel) as err:
        check_dp_compatible(model)
    assert "layer 'encoder.1' (BatchNorm1d)" in str(err.value) and "GroupNorm" in str(err.value)
    hook = DpSgdHook(noise_multiplier=1.0, max_grad_norm=1.0, sample_rate=0.5, source=NoiseSource.secure())
    x, y = _data(8)
    with pytest.raises(IncompatibleModel, match="encoder.1"):
        _train(hook, model, x, y)
    check_dp_compatible(nn.Sequential(nn.Linear(4, 4), nn.GroupNorm(2, 4), nn.Linear(4, 2)))  # fine


PLAN = RunPlan(rounds=4, fraction=1.0, training=TrainingConfig(batch_size=10, lr=0.5, local_epochs=1))
SIZES = {"A": 60, "B": 40}


def _dp_sgd_layer(tmp_path, **privacy):
    table = {
        "mechanism": "dp-sgd",
        "noise": "local",
        "delta": 1e-5,
        "noise_multiplier": 1.2,
        "max_grad_norm": 1.0,
        "secure_noise": False,
        **privacy,
    }
    cfg = parse_privacy(table, "[privacy]", PlainSum())
    return build_privacy_layer(
        cfg,
        weighting="examples",
        plan=PLAN,
        site_sizes=SIZES,
        run_dir=tmp_path,
        noise_rng=np.random.default_rng(1),
        protocol_name="dp-sgd-local",
        spec_hash="h",
    )


def _site_round(layer, site, r, model, x, y):
    sp = layer.site(site)
    sp.before_round(r)
    start = flat_params(model)
    _train(sp.training_hook(), model, x, y)
    values, weight = sp.transform(flat_params(model) - start, len(y), r)
    return sp.charge(r), values, weight


def test_accountant_state_survives_rounds_and_restarts(tmp_path):
    """Opacus issue #688: a new PrivacyEngine per round restarts ε at 0. Here ε keeps growing."""
    layer = _dp_sgd_layer(tmp_path)
    x, y = _data(SIZES["A"])
    model = _model()
    eps = [_site_round(layer, "A", r, model, x, y)[0]["epsilon"] for r in range(3)]
    assert eps[0] < eps[1] < eps[2]
    sp = layer.site("A")
    hook = sp.training_hook()
    assert hook.total_steps == 3 * 6  # q = 10/60: 6 Poisson steps per epoch
    expected = A.dp_sgd_event(1.2, 10 / 60, 18)
    assert A.compose(sp.ledger.events()) == expected
    spent = sp.spent()
    assert spent["epsilon_pld"] == pytest.approx(A.epsilon(expected, 1e-5, "pld"))
    assert spent["epsilon_rdp"] == pytest.approx(A.epsilon(expected, 1e-5, "rdp"))
    # Opacus's own accountant, attached each round to a new optimizer, saw the same 18 steps
    assert sum(n for _, _, n in hook.opacus_accountant.history) == 18
    assert spent["epsilon_opacus_rdp"] == pytest.approx(spent["epsilon_rdp"], rel=5e-3)
    assert spent["epsilon_pld"] < spent["epsilon_rdp"]
    # a new process on the same run folder starts from the ledger, not from zero
    again = _dp_sgd_layer(tmp_path)
    assert again.site("A").spent()["epsilon_pld"] == pytest.approx(spent["epsilon_pld"])
    assert again.site("B").spent() == {}


def test_budget_refuses_one_site_and_the_other_carries_on(tmp_path):
    one_round = A.epsilon(A.dp_sgd_event(1.2, 10 / 40, 4), 1e-5, "pld")
    layer = _dp_sgd_layer(tmp_path, site_budgets={"B": one_round * 1.2})
    xa, ya = _data(SIZES["A"])
    xb, yb = _data(SIZES["B"], seed=1)
    ma, mb = _model(), _model()
    _site_round(layer, "A", 0, ma, xa, ya)
    _site_round(layer, "B", 0, mb, xb, yb)
    with pytest.raises(SiteRejected) as err:
        layer.site("B").before_round(1)
    assert (
        err.value.site == "B"
        and "privacy budget exhausted" in err.value.reason
        and "round 1 would cost" in err.value.reason
    )
    record, values, weight = _site_round(layer, "A", 1, ma, xa, ya)  # A is not affected
    assert weight == 60.0 and values.shape == flat_params(ma).shape
    assert len(PrivacyLedger(tmp_path / "sites" / "B" / "ledger.sqlite", "B").records()) == 1


# -- distributed DP-SGD --------------------------------------------------------------------------

DIST_PLAN = RunPlan(rounds=10, fraction=1.0, training=TrainingConfig(batch_size=10, lr=0.5))
DIST_SIZES = {"A": 80, "B": 60, "C": 70}


def _dist_layer(tmp_path, **privacy):
    from secure_fl.protocol.ckks import CkksSum

    table = {
        "mechanism": "distributed-dp-sgd",
        "noise": "distributed",
        "delta": 1e-5,
        "noise_multiplier": 1.0,
        "max_grad_norm": 0.5,
        "sample_rate": 0.25,
        "min_sites": 3,
        "secure_noise": False,
        **privacy,
    }
    cfg = parse_privacy(table, "[privacy]", CkksSum())
    return build_privacy_layer(
        cfg,
        weighting="examples",
        plan=DIST_PLAN,
        site_sizes=DIST_SIZES,
        run_dir=tmp_path,
        noise_rng=np.random.default_rng(2),
        protocol_name="dp-distributed-ckks",
        spec_hash="h",
    )


def test_clipped_gradient_sum_matches_a_per_example_loop():
    x, y = _data(30)
    model = _model()
    total, norms = clipped_gradient_sum(model, x, y, LOSS, 0.3)
    expected = np.zeros_like(total)
    for i in range(30):
        model.zero_grad()
        LOSS(model(x[i : i + 1]), y[i : i + 1]).backward()
        g = torch.cat([p.grad.reshape(-1) for p in model.parameters()]).double().numpy()
        assert norms[i] == pytest.approx(np.linalg.norm(g), rel=1e-5)
        expected += g * min(1.0, 0.3 / np.linalg.norm(g))
    assert np.allclose(total, expected, atol=1e-6)


def test_distributed_round_through_ckks(tmp_path):
    from secure_fl.engine.local import drive_round
    from secure_fl.protocol.ckks import CkksSum

    layer = _dist_layer(tmp_path)
    model = _model()
    dim = flat_params(model).size
    protocol = CkksSum()
    protocol.setup(list(DIST_SIZES), dim)
    inputs = {}
    for i, site in enumerate(DIST_SIZES):
        sp = layer.site(site)
        sp.before_round(0)
        x, y = _data(DIST_SIZES[site], seed=i)
        values, weight = sp.local_update(model, x, y, LOSS, 0)
        assert weight == DIST_SIZES[site]
        inputs[site] = sp.transform(values, weight, 0)
        sp.charge(0)
    outcome = drive_round(protocol, 0, inputs, dim)
    assert all(v.kind != "plain" for v in outcome.views if v.receiver == "aggregator")
    delta = layer.release(outcome.result, 0, list(inputs))
    plain_sum = sum(v for v, _ in inputs.values())
    assert np.allclose(delta, -plain_sum / (0.25 * 210), atol=1e-3)
    # every site's ledger holds one Poisson-sampled Gaussian step on the union
    for site in DIST_SIZES:
        assert layer.site(site).ledger.events() == [A.poisson_gaussian_event(1.0, 0.25)]


def test_distributed_noise_shares_minus_ones_own_give_the_full_noise(tmp_path):
    """Zero gradients: what the sites send is pure noise; the shares of B and C (what A sees of the
    others after subtracting its own) have std σC, each share σC/√(m−1)."""
    layer = _dist_layer(tmp_path)
    model = _model()
    x = torch.zeros(0, 4)
    y = torch.zeros(0, dtype=torch.long)
    others = np.concatenate(
        [sum(layer.site(s).local_update(model, x, y, LOSS, 0)[0] for s in ("B", "C")) for _ in range(60)]
    )
    assert others.std() == pytest.approx(1.0 * 0.5, rel=0.05)  # σC = 0.5
    one = np.concatenate([layer.site("A").local_update(model, x, y, LOSS, 0)[0] for _ in range(60)])
    assert one.std() == pytest.approx(0.5 / np.sqrt(2), rel=0.05)


def _sum_of(layer, sites, r, model):
    total = None
    for i, site in enumerate(sites):
        sp = layer.site(site)
        sp.before_round(r)
        x, y = _data(DIST_SIZES[site], seed=i)
        values, weight = sp.local_update(model, x, y, LOSS, r)
        sp.charge(r)
        total = values if total is None else total + values
    return SumResult(total, float(len(sites)), tuple(sites))


def test_too_few_noise_shares_abort(tmp_path):
    layer = _dist_layer(tmp_path)
    result = _sum_of(layer, ["A", "B"], 0, _model())
    with pytest.raises(RoundAborted, match="only 2 site\\(s\\) added noise shares, min_sites is 3"):
        layer.release(result, 0, ["A", "B", "C"])


# -- one site's failure ----------------------------------------------------------------------------


def test_a_site_failing_mid_dp_sgd_costs_only_its_own_round(tmp_path, tiny_experiment_toml):
    """A site whose DP-SGD training raises after Opacus wrapped the (shared) model must not leave Opacus's
    hooks on it: the other sites train in that round and the next, and the failing site returns next round."""
    from secure_fl.run.experiment import parse_experiment
    from secure_fl.run.federation import Federation
    from secure_fl.tasks.registry import build_task

    text = tiny_experiment_toml(protocols='["dp-sgd-local"]', rounds=2)
    exp = parse_experiment(__import__("tomllib").loads(text), "tiny.toml", tmp_path)
    task = build_task(exp.task_name, exp.task_params)
    fed = Federation(exp, task, exp.variants[0], 0, tmp_path / "run")
    names = [s.name for s in task.sites]
    victim = names[0]
    state = {"fail": False}
    real_loss, real_update = fed.loss_fn, fed._site_update

    def loss(out, y):
        if state["fail"]:
            raise RuntimeError("injected failure during local training")
        return real_loss(out, y)

    def site_update(i, r):
        state["fail"] = names[i] == victim and r == 0
        return real_update(i, r)

    fed.loss_fn = loss
    fed._site_update = site_update
    first, second = fed.round(0), fed.round(1)
    assert victim in first["dropped"]  # the reason itself stays at the site:
    assert "injected failure" in fed.site_records[victim][0]["dropped"]
    assert not any("hooks twice" in str(rec["dropped"]) for recs in fed.site_records.values() for rec in recs)
    assert sorted(first["participants"]) == sorted(names[1:]) and first["applied"]
    assert sorted(second["participants"]) == sorted(names) and second["applied"] and not second["dropped"]
    # nothing of Opacus is left on the shared model: no hooks, no activations of a forward pass without backward
    assert not any({"autograd_grad_sample_hooks", "activations"} & set(m.__dict__) for m in fed.model.modules())
    # the failed attempt released nothing: the victim's ledger holds round 1 only, and Opacus counted the same steps
    victim_site = fed.privacy.site(victim)
    assert [r.round for r in victim_site.ledger.records()] == [1]
    hook = victim_site.training_hook()
    assert sum(n for _, _, n in hook.opacus_accountant.history) == hook.total_steps == hook.round_steps
