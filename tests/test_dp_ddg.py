"""The distributed discrete Gaussian over SecAgg+ (mechanism "ddg", protocols/dp-distributed-secagg.toml)."""

from __future__ import annotations

import copy
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import tomllib
from dp_accounting import dp_event
from dp_accounting.rdp import rdp_privacy_accountant

from secure_fl.errors import RoundAborted, SpecError
from secure_fl.privacy.ddg import DdgParams
from secure_fl.privacy.ledger import PrivacyLedger
from secure_fl.protocol.base import SumResult
from secure_fl.protocol.spec import PROTOCOLS_DIR, parse_protocol
from secure_fl.run.compare import run_experiment
from secure_fl.run.experiment import parse_experiment
from secure_fl.run.records import read_rounds


def _raw(name: str = "dp-distributed-secagg") -> dict:
    return tomllib.loads((PROTOCOLS_DIR / f"{name}.toml").read_text())


def test_spec_pushes_min_contributors_and_integer_noise_into_the_secure_sum():
    spec = parse_protocol(_raw(), "x.toml")
    ss = spec.build_secure_sum()
    assert ss.min_contributors == 3
    cfg = spec.privacy
    params = DdgParams(clip=0.5, grid=2.0**-15, dim=1, noise_multiplier=cfg.noise_multiplier, min_shares=2)
    assert ss.noise_bound == params.noise_bound and ss.integer_noise is not None
    z = ss.integer_noise(1000, np.random.default_rng(0))
    assert z.dtype == np.int64 and z.shape == (1000,) and int(np.abs(z).max()) <= ss.noise_bound
    assert abs(float(z.std()) / params.share_sigma - 1) < 0.1
    assert cfg.adjacency == "zero-out one site"


@pytest.mark.parametrize(
    ("section", "change", "message"),
    [
        ("secure_sum", {"clip_range": 1.0}, "quantisation step 2 clip_range / (2^bits - 1) must be exactly"),
        ("privacy", {"accountant": "pld"}, "only the RDP accountant bounds it soundly"),
        ("privacy", {"noise_multiplier": None, "target_epsilon": 4.0}, "needs 'noise_multiplier'"),
        ("privacy", {"colluding_sites": 3}, "must be below min_sites = 3"),
        ("privacy", {"min_sites": None}, "missing required key 'min_sites'"),
        ("secure_sum", {"max_weight": 5}, "set [secure_sum].max_weight = 1"),
    ],
)
def test_bad_specs_are_refused_with_the_key(section, change, message):
    data = copy.deepcopy(_raw())
    for k, v in change.items():
        if v is None:
            data[section].pop(k)
        else:
            data[section][k] = v
    with pytest.raises(SpecError, match=re.escape(message)):
        parse_protocol(data, "x.toml")


def test_ddg_over_plain_or_ckks_is_refused():
    data = copy.deepcopy(_raw())
    data["secure_sum"] = _raw("plain-fedavg")["secure_sum"]
    data["threat_model"]["aggregator_sees"] = "plain"
    with pytest.raises(SpecError, match="adds integer noise shares inside a masking secure sum"):
        parse_protocol(data, "x.toml")


def _experiment(tmp_path: Path, protocol_file: Path, rounds: int = 2, extra: str = ""):
    text = f"""
name = "tiny-ddg"
protocols = ["{protocol_file}"]
seeds = [0]
rounds = {rounds}
[task]
name = "synthetic-tabular"
n_sites = 4
n_per_site = 40
[training]
local_epochs = 1
batch_size = 16
lr = 0.1
{extra}
"""
    return parse_experiment(tomllib.loads(text), "tiny.toml")


def _spec_file(tmp_path: Path, **privacy) -> Path:
    data = _raw()
    data["privacy"].update(privacy)
    data["privacy"]["secure_noise"] = False  # reproducible shares from the secure sum's seeded generator
    lines = []
    for section, table in data.items():
        if isinstance(table, dict):
            continue
        lines.append(f"{section} = {json.dumps(table)}")
    for section, table in data.items():
        if not isinstance(table, dict):
            continue
        lines.append(f"[{section}]")
        for k, v in table.items():
            lines.append(f"{k} = {json.dumps(v)}")
    path = tmp_path / "ddg.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_federation_releases_noised_sums_and_the_ledger_matches_an_independent_epsilon(tmp_path):
    exp = _experiment(tmp_path, _spec_file(tmp_path), rounds=2)
    run = run_experiment(exp, tmp_path / "runs", show_progress=False).runs[0]
    assert run.status == "finished", run.status
    rounds = read_rounds(Path(run.path))
    assert all(r["applied"] for r in rounds)
    # the aggregator only ever carried masked site inputs, and every sum had >= min_sites contributors
    views = [json.loads(line) for line in (Path(run.path) / "views.jsonl").read_text().splitlines()]
    kinds = {v["kind"] for v in views if v["sender"] != "aggregator"}
    assert "masked" in kinds and kinds <= {"masked", "public", "ciphertext"}
    assert all(len(r["participants"]) >= 3 for r in rounds)
    # ledger: one GaussianDpEvent per round whose σ is 1/sqrt(2ρ) of the DDG with the model's dimension
    d = _model_dim()
    for site in ("site1", "site2", "site3", "site4"):
        ledger = PrivacyLedger(Path(run.path) / "sites" / site / "ledger.sqlite", site)
        events = ledger.events()
        assert len(events) == 2 and all(isinstance(e, dp_event.GaussianDpEvent) for e in events)
        rho = sum(1.0 / (2.0 * e.noise_multiplier**2) for e in events)
        sigma = _raw()["privacy"]["noise_multiplier"]
        expected = DdgParams(clip=0.5, grid=2.0**-15, dim=d, noise_multiplier=sigma, min_shares=2)
        assert rho == pytest.approx(2 * expected.rho, rel=1e-12)
        # ε recomputed independently: zCDP ρ -> RDP curve αρ -> ε, dp_accounting's conversion
        orders = np.array(rdp_privacy_accountant.DEFAULT_RDP_ORDERS)
        eps = rdp_privacy_accountant.compute_epsilon(orders, orders * rho, 1e-5)[0]
        assert ledger.records()[-1].epsilon_rdp == pytest.approx(eps, abs=1e-3)
        assert rounds[-1]["privacy_spent"][site]["epsilon"] == pytest.approx(eps, abs=1e-3)


def _model_dim() -> int:
    from secure_fl.tasks.registry import build_task

    model = build_task("synthetic-tabular", {"n_sites": 4, "n_per_site": 40}).make_model(0)
    return int(sum(p.numel() for p in model.parameters()))


def test_release_refuses_too_few_contributors_and_rotates_back(tmp_path):
    from secure_fl.privacy.ddg import hadamard_rotate
    from secure_fl.protocol.dp import build_privacy_layer
    from secure_fl.protocol.dp.ddg import _rotation_seed
    from secure_fl.training.config import RunPlan, TrainingConfig

    spec = parse_protocol(_raw(), "x.toml")
    layer = build_privacy_layer(spec.privacy, weighting="uniform", plan=RunPlan(2, 1.0, TrainingConfig()),
                                site_sizes={"A": 10, "B": 10, "C": 10}, run_dir=tmp_path,
                                noise_rng=np.random.default_rng(0), protocol_name="p", spec_hash="h")
    grid = 2.0**-15
    ints = np.array([5, -3, 0, 7], dtype=np.int64)
    total = (ints - 0.5 * 2) * grid  # two contributors' offsets of 1/2 each
    with pytest.raises(RoundAborted, match="only 2 contributor"):
        layer.release(SumResult(total, 2.0, ("A", "B")), 0, ["A", "B", "C"])
    total3 = (ints - 0.5 * 3) * grid
    out = layer.release(SumResult(total3, 3.0, ("A", "B", "C")), 0, ["A", "B", "C"])
    assert np.allclose(out, hadamard_rotate(ints * grid, _rotation_seed(0), inverse=True) / 3)


def test_site_update_is_on_the_grid_and_within_the_charged_norm(tmp_path):
    from secure_fl.protocol.dp import build_privacy_layer
    from secure_fl.training.config import RunPlan, TrainingConfig

    data = _raw()
    data["privacy"]["secure_noise"] = False
    spec = parse_protocol(data, "x.toml")
    layer = build_privacy_layer(spec.privacy, weighting="uniform", plan=RunPlan(2, 1.0, TrainingConfig()),
                                site_sizes={"A": 10, "B": 10, "C": 10}, run_dir=tmp_path,
                                noise_rng=np.random.default_rng(0), protocol_name="p", spec_hash="h")
    site = layer.site("A")
    site.before_round(0)
    delta = np.random.default_rng(1).normal(size=300)
    values, weight = site.transform(delta, 10, 0)
    grid = 2.0**-15
    units = values / grid + 0.5
    assert weight == 1.0 and np.array_equal(units, np.round(units))
    p = DdgParams(clip=0.5, grid=grid, dim=300, noise_multiplier=1.0, min_shares=2)
    assert int((units.astype(np.int64) ** 2).sum()) <= p.bound_sq
    rec = site.charge(0)
    assert rec["epsilon"] == pytest.approx(rec["epsilon_rdp"])
    # exact through the quantiser: the secure sum's encoding has integers q = units + (2^16 - 2)/2
    ss = spec.build_secure_sum()
    ss.set_integer_noise(None, 0)
    ss.setup(["A", "B", "C"], 300)
    q = ss.quantizer.encode(values, 1.0, np.random.default_rng(2))[:-1].astype(np.int64)
    assert np.array_equal(q, units.astype(np.int64) + (2**16 - 2) // 2)


def test_dp_fedavg_secagg_charges_the_norm_its_quantised_update_can_have(tmp_path):
    """Issue 8 item 11: stochastic rounding after clipping raised ||x|| to C + step·sqrt(d) while C was
    charged. Now the update is conditionally rounded on the quantiser's grid: what the sum carries for a
    site has norm <= Δγ, and Δγ is the sensitivity the ledger event is computed with."""
    from secure_fl.protocol.dp import build_privacy_layer
    from secure_fl.training.config import RunPlan, TrainingConfig

    data = _raw("dp-fedavg-secagg")
    data["privacy"]["secure_noise"] = False
    spec = parse_protocol(data, "x.toml")
    layer = build_privacy_layer(spec.privacy, weighting="uniform", plan=RunPlan(3, 1.0, TrainingConfig()),
                                site_sizes={"A": 10, "B": 10, "C": 10}, run_dir=tmp_path,
                                noise_rng=np.random.default_rng(0), protocol_name="p", spec_hash="h")
    d, clip, grid = 4000, 0.5, 2.0**-16
    ss = spec.build_secure_sum()
    ss.setup(["A", "B", "C"], d)
    site = layer.site("A")
    worst = 0.0
    for r in range(3):
        site.before_round(r)
        delta = np.full(d, 2 * clip / math.sqrt(d)) + grid * 0.5  # clipped to C, every coordinate between two levels
        values, _ = site.transform(delta, 10, r)
        q = ss.quantizer.encode(values, 1.0, np.random.default_rng(r))[:-1].astype(np.float64)
        carried = (q - (2**16 - 2) / 2) * grid  # j·γ: the site's contribution once the release removes the 1/2 offset
        worst = max(worst, float(np.linalg.norm(carried)))
        site.charge(r)
    sensitivity = layer.last_release.get("sensitivity") or math.sqrt(
        layer.mechanism._bound_sq(clip, d)) * grid
    assert worst <= sensitivity
    # the event charged is σ_Z / Δ: the Gaussian with the discrete mechanism's ρ at sensitivity Δγ
    event = site.ledger.events()[-1]
    sigma = layer.noise_multiplier_for("A")
    sigma_z = math.sqrt(layer.mechanism._variance(sigma, clip))
    assert event.noise_multiplier == pytest.approx(sigma_z / (sensitivity / grid))
    # plain stochastic rounding of the same clipped update exceeds C by far more than the rounding bound allows
    plain = ss.quantizer.encode(np.full(d, clip / math.sqrt(d)) + grid * 0.5, 1.0, np.random.default_rng(9))[:-1]
    assert np.linalg.norm((plain.astype(np.float64) - (2**16 - 1) / 2) * grid) > clip
