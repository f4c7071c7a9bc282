"""What the DP specs promise, checked where it is enforced (issue 8, items 1, 6, 10 and the DP part of 12)."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import tomllib

from secure_fl.errors import RoundAborted, SpecError
from secure_fl.privacy import accounting as A
from secure_fl.privacy.noise import NoiseSource
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


# -- item 6: adaptive clipping charges what it spends -----------------------------------------

class _KnownNoise:
    """A stand-in for the server's NoiseSource: each draw is ``std · z`` (z chosen by the test),
    and the std asked for is recorded, so the mechanism's noise scale can be read off exactly."""

    def __init__(self, z_count: float) -> None:
        self.z_count, self.asked = z_count, []
        self._real = NoiseSource.seeded(np.random.default_rng(0))  # the update's discrete Gaussian draws

    def __getattr__(self, name):
        return getattr(self._real, name)

    def normal(self, std, shape):
        self.asked.append((std, shape))
        n = shape if isinstance(shape, int) else int(np.prod(shape))
        return np.full(n, std * (self.z_count if n == 1 else 0.0))


def _adaptive_layer(tmp_path, sigma=1.0, rounds=30):
    from secure_fl.protocol.plain import PlainSum

    table = {"mechanism": "dp-fedavg", "noise": "central", "noise_adder": "aggregator", "delta": 1e-5,
             "noise_multiplier": sigma, "max_grad_norm": 1.0, "clipping": "adaptive", "clip_learning_rate": 0.3,
             "target_quantile": 0.5, "secure_noise": False, "accountant": "rdp"}
    plan = RunPlan(rounds=rounds, fraction=1.0, training=TrainingConfig())
    return build_privacy_layer(parse_privacy(table, "[privacy]", PlainSum()), weighting="uniform", plan=plan,
                               site_sizes={"A": 10, "B": 20, "C": 30}, run_dir=tmp_path,
                               noise_rng=np.random.default_rng(0), protocol_name="p", spec_hash="h")


def _released_fraction(tmp_path, sites: tuple[str, ...], c_norm: float, z: float) -> tuple[float, float, float]:
    """(the unclipped-fraction estimate the clip update released, update noise std / C, count-noise slope)."""
    layer = _adaptive_layer(tmp_path)
    source = _KnownNoise(z)
    layer.server_source = source
    norms = {"A": 0.2, "B": 5.0, "C": c_norm}  # A unclipped, B clipped, C either
    total = np.zeros(4)
    for s in sites:
        values, _ = layer.site(s).transform(np.full(4, norms[s] / 2.0), 1, 0)
        total += values
    old = layer.clip
    layer.release(SumResult(total, float(len(sites)), sites), 0, list(sites))
    eta, gamma = 0.3, 0.5
    fraction = gamma - math.log(layer.last_release["next_clip"] / old) / eta  # C_new = C·exp(-η(b̄ − γ))
    # the update's exact discrete Gaussian, in units of the sensitivity Δγ of a conditionally rounded update
    update_multiplier = layer.last_release["noise_std"] / layer.last_release["sensitivity"]
    return fraction, update_multiplier, source.asked[-1][0]


def test_adaptive_clipping_charges_what_it_spends(tmp_path):
    """Add/remove one site (C). The released fraction is an affine function of the count noise;
    in units of that noise, C moves it by at most Δ, so the count is a Gaussian mechanism with
    multiplier 1/Δ. Composed with the update's Gaussian, ε spent (recomputed with dp_accounting)
    must equal the ε charged to each ledger (Andrew et al. 2021, Thm 1)."""
    worst = 0.0
    for i, c_norm in enumerate((0.1, 9.0)):  # C unclipped / clipped
        units = []
        for j, sites in enumerate((("A", "B", "C"), ("A", "B"))):
            d = tmp_path / f"{i}{j}"
            f0, sigma_update, _ = _released_fraction(d / "0", sites, c_norm, 0.0)
            f1, _, _ = _released_fraction(d / "1", sites, c_norm, 1.0)
            units.append(f0 / (f1 - f0))  # the released statistic in units of its noise std
        worst = max(worst, abs(units[0] - units[1]))
    from dp_accounting import dp_event

    spent_round = dp_event.ComposedDpEvent([A.gaussian_event(sigma_update), A.gaussian_event(1.0 / worst)])
    layer = _adaptive_layer(tmp_path / "charged")
    spent = dp_event.SelfComposedDpEvent(spent_round, 30)
    charged = dp_event.SelfComposedDpEvent(layer.site("A").planned_event(), 30)
    # RDP only: the update's discrete Gaussian is charged by its zCDP, which PLD does not bound
    assert A.epsilon(spent, 1e-5, "rdp") == pytest.approx(A.epsilon(charged, 1e-5, "rdp"), rel=1e-6)


# -- item 10: the neighbouring relation and what is public ------------------------------------

@pytest.mark.parametrize(
    ("name", "adjacency"),
    [("dp-sgd-local", "add/remove one patient"), ("dp-fedavg-central", "add/remove one site"),
     ("dp-fedavg-secagg", "add/remove one site"), ("dp-distributed-ckks", "add/remove one patient")],
)
def test_each_dp_spec_states_its_adjacency_and_what_is_public(name, adjacency):
    from secure_fl.protocol.spec import load_protocol

    spec = load_protocol(name)
    assert spec.privacy.adjacency == adjacency
    text = " ".join(spec.threat_model.assumptions + spec.threat_model.guarantees)
    assert f"adjacency: {adjacency}" in text or adjacency in " ".join(spec.privacy.guarantee())
    assert "public" in text and "took part" in text
    assert adjacency in " ".join(spec.privacy.guarantee())


def test_local_update_level_noise_is_replace_one_and_says_so(tmp_path):
    """Local DP-FedAvg protects what a site sends against any change of its data (2C): its ε is
    not comparable with an add/remove ε without saying so; the ledger summary carries the relation."""
    from secure_fl.protocol.plain import PlainSum

    table = {"mechanism": "dp-fedavg", "noise": "local", "delta": 1e-5, "noise_multiplier": 2.0,
             "max_grad_norm": 1.0, "secure_noise": False, "accountant": "rdp"}
    cfg = parse_privacy(table, "[privacy]", PlainSum())
    assert cfg.adjacency == "replace one site"
    layer = build_privacy_layer(cfg, weighting="uniform", plan=RunPlan(1, 1.0, TrainingConfig()), site_sizes={"A": 3},
                                run_dir=tmp_path, noise_rng=np.random.default_rng(0), protocol_name="p", spec_hash="h")
    sp = layer.site("A")
    sp.before_round(0)
    sp.transform(np.ones(3), 3, 0)
    assert sp.charge(0)["adjacency"] == "replace one site"
    (event,) = sp.ledger.events()  # σ/2 against sensitivity 2Δγ (Δγ >= C: the rounding allowance)
    assert 0.9 < event.noise_multiplier <= 1.0


def test_compare_table_says_which_relation_each_epsilon_is_for():
    from types import SimpleNamespace

    from secure_fl.run.compare import table_rows
    from secure_fl.run.federation import RunSummary

    def run(label, spent):
        return RunSummary(label, 0, "finished", 1, metrics={"pooled/auc": 0.8}, epsilon=spent)

    runs = [run("dp-sgd-local", {"A": {"epsilon": 4.0, "adjacency": "add/remove one patient"}}),
            run("dp-fedavg-local", {"A": {"epsilon": 4.0, "adjacency": "replace one site"}}),
            run("plain-fedavg", {})]
    variants = [SimpleNamespace(label=r.variant, reference=None) for r in runs]
    result = SimpleNamespace(task=SimpleNamespace(primary_metric="auc"), runs=runs,
                             experiment=SimpleNamespace(variants=variants))
    header, rows = table_rows(result)
    col = header.index("ε for")
    assert header[col - 1] == "ε per site"
    assert [r[col] for r in rows] == ["add/remove one patient", "replace one site", "–"]


# -- item 12 (DP part): what a site's privacy layer hands out is noised, public or kept -------

@pytest.mark.parametrize("name", ["dp-sgd-local", "dp-fedavg-central", "dp-distributed-ckks"])
def test_site_outputs_beyond_the_update_do_not_depend_on_private_data(tmp_path, name):
    """Two sites of the same (public) size with different private data: the weight they send, the
    spend summary that goes into run records and the releasable metrics are identical; training
    loss stays at the site."""
    import torch
    from torch import nn

    from secure_fl.training.local import train_local

    data = copy.deepcopy(_raw(name))
    data["privacy"].pop("target_epsilon")
    data["privacy"].update(noise_multiplier=1.0, secure_noise=False)  # no calibration: keeps the test fast
    cfg = parse_protocol(data, "x.toml").privacy
    weighting = "uniform" if cfg.mechanism == "dp-fedavg" else "examples"
    plan = RunPlan(rounds=2, fraction=1.0, training=TrainingConfig(batch_size=8, local_steps=2))
    layer = build_privacy_layer(cfg, weighting=weighting, plan=plan, site_sizes={"A": 30, "B": 30, "C": 30},
                                run_dir=tmp_path, noise_rng=np.random.default_rng(0), protocol_name=name,
                                spec_hash="h")
    loss_fn = nn.functional.cross_entropy
    outputs = []
    for site, seed in (("A", 1), ("B", 2)):
        g = torch.Generator().manual_seed(seed)
        x = torch.randn(30, 4, generator=g) * seed
        y = (x[:, 0] > 0).long()
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(4, 2))
        sp = layer.site(site)
        sp.before_round(0)
        out = sp.local_update(model, x, y, loss_fn, 0)
        if out is None:
            res = train_local(model, x, y, plan.training, loss_fn, seed, sp.training_hook())
            assert "train_loss" in res.metrics and sp.public_metrics(res.metrics) == {}
            out = sp.transform(res.delta, res.n_examples, 0)
        _, weight = out
        outputs.append((weight, sp.charge(0), sp.public_metrics({"train_loss": 0.3})))
    assert outputs[0] == outputs[1]


def test_distributed_dp_over_ckks_sends_no_magnitude_histogram(tmp_path, tiny_experiment_toml):
    """Item 12: under distributed DP the CKKS sum uses public bounds (clip x largest site + the noise
    share's tail), so the per-site histogram of magnitude exponents never travels."""
    import tomllib

    from secure_fl.run.compare import run_experiment
    from secure_fl.run.experiment import parse_experiment

    task = 'name = "synthetic-tabular"\nn_sites = 3\nn_per_site = 40'
    text = tiny_experiment_toml(protocols='["dp-distributed-ckks"]', rounds=1, task=task,
                                extra='[sweep]\n"privacy.secure_noise" = [false]')
    run = run_experiment(parse_experiment(tomllib.loads(text), "tiny.toml"), tmp_path, show_progress=False).runs[0]
    import json
    from pathlib import Path

    views = [json.loads(line) for line in (Path(run.path) / "views.jsonl").read_text().splitlines()]
    stages = {v["stage"] for v in views}
    assert "bounds" not in stages and "bounds_sum" not in stages, stages
    record = json.loads((Path(run.path) / "rounds.jsonl").read_text().splitlines()[0])
    assert record["applied"], record
