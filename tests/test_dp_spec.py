"""Validation of the [privacy] table against the secure sum, and the dp-* protocol specs."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import tomllib

from secure_fl.errors import SpecError
from secure_fl.protocol.dp import PrivacyConfig, build_privacy_layer, parse_privacy
from secure_fl.protocol.plain import PlainSum
from secure_fl.protocol.spec import PROTOCOLS_DIR, load_protocol, parse_protocol
from secure_fl.training.config import RunPlan, TrainingConfig

DP_PROTOCOLS = ["dp-sgd-local", "dp-fedavg-central", "dp-distributed-ckks"]


def _raw(name: str) -> dict:
    return tomllib.loads((PROTOCOLS_DIR / f"{name}.toml").read_text())


def _with(name: str, **privacy) -> dict:
    data = copy.deepcopy(_raw(name))
    for key, value in privacy.items():
        if value is None:
            data["privacy"].pop(key, None)
        else:
            data["privacy"][key] = value
    return data


@pytest.mark.parametrize("name", DP_PROTOCOLS)
def test_catalogue_specs_load_and_state_their_guarantee(name):
    spec = load_protocol(name)
    cfg = spec.privacy
    assert isinstance(cfg, PrivacyConfig)
    assert spec.threat_model.guarantees and spec.threat_model.assumptions and spec.threat_model.not_protected
    assert cfg.guarantee() and cfg.secure_noise  # production specs draw noise from the CSPRNG


def test_aggregator_views_per_mechanism():
    assert load_protocol("dp-sgd-local").privacy.aggregator_view == "noised"
    assert load_protocol("dp-fedavg-central").privacy.aggregator_view == "plain"  # sees clipped updates before noise
    spec = load_protocol("dp-distributed-ckks")
    assert spec.build_secure_sum().view_kind.value == spec.threat_model.aggregator_sees == "ciphertext"


def test_distributed_noise_without_a_secure_sum_is_refused():
    data = _raw("dp-distributed-ckks")
    data["secure_sum"] = {"kind": "plain"}
    data["threat_model"]["aggregator_sees"] = "plain"
    with pytest.raises(SpecError) as err:
        parse_protocol(data, "x.toml")
    msg = str(err.value)
    assert msg.startswith("x.toml [privacy].noise: 'distributed' noise needs a secure sum")
    assert "kind = 'plain'" in msg and "1/2 of the noise" in msg


@pytest.mark.parametrize("masking", ["secagg-fedavg", "secagg-plus-fedavg"])
def test_continuous_distributed_noise_under_masking_points_to_ddg(masking):
    data = _raw("dp-distributed-ckks")
    data["secure_sum"] = _raw(masking)["secure_sum"]
    data["threat_model"]["aggregator_sees"] = "masked"
    with pytest.raises(SpecError) as err:
        parse_protocol(data, "x.toml")
    kind = data["secure_sum"]["kind"]
    assert str(err.value).startswith(
        f"x.toml [privacy].mechanism: 'distributed-dp-sgd' adds continuous Gaussian shares, which a masking sum "
        f"({kind})"
    )
    assert "use mechanism = 'ddg'" in str(err.value)


@pytest.mark.parametrize(
    ("name", "change", "message"),
    [
        ("dp-sgd-local", {"epsilon": 3.0}, "[privacy]: unknown key(s) ['epsilon']"),
        ("dp-sgd-local", {"min_sites": 3}, "[privacy]: key(s) ['min_sites'] do not apply to mechanism 'dp-sgd'"),
        ("dp-sgd-local", {"mechanism": "dpsgd"}, "[privacy].mechanism: expected one of"),
        ("dp-sgd-local", {"noise": "central"}, "[privacy].noise: expected one of ['local'], found 'central'"),
        ("dp-sgd-local", {"delta": 1.5}, "[privacy].delta: must be < 1, found 1.5"),
        ("dp-sgd-local", {"delta": "1e-5"}, "[privacy].delta: expected a number, found '1e-5'"),
        ("dp-sgd-local", {"max_grad_norm": 0}, "[privacy].max_grad_norm: must be > 0, found 0.0"),
        ("dp-sgd-local", {"noise_multiplier": 1.0}, "give exactly one of 'noise_multiplier' or 'target_epsilon'"),
        ("dp-sgd-local", {"target_epsilon": None}, "give exactly one of 'noise_multiplier' or 'target_epsilon'"),
        ("dp-sgd-local", {"secure_noise": "yes"}, "[privacy].secure_noise: expected a boolean, found 'yes'"),
        ("dp-sgd-local", {"accountant": "gdp"}, "[privacy].accountant: expected one of ['rdp', 'pld'], found 'gdp'"),
        ("dp-sgd-local", {"site_budgets": {"A": -1}}, "[privacy].site_budgets.A: expected a number > 0, found -1"),
        ("dp-fedavg-central", {"noise_adder": None}, "central noise needs 'noise_adder'"),
        ("dp-fedavg-central", {"noise": "local"}, "[privacy].noise_adder: only for noise = 'central'"),
        ("dp-fedavg-central", {"target_quantile": 0.5}, "[privacy].target_quantile: only for clipping = 'adaptive'"),
        ("dp-distributed-ckks", {"sample_rate": None}, "missing required key 'sample_rate'"),
        ("dp-distributed-ckks", {"min_sites": 1}, "[privacy].min_sites: must be >= 2, found 1"),
        ("dp-distributed-ckks", {"on_too_few": "ignore"}, "[privacy].on_too_few: expected one of ['abort']"),
    ],
)
def test_bad_privacy_tables_name_key_and_value(name, change, message):
    with pytest.raises(SpecError) as err:
        parse_protocol(_with(name, **change), "x.toml")
    assert message in str(err.value)


def test_adaptive_clipping_needs_central_noise():
    table = {
        "mechanism": "dp-fedavg",
        "noise": "local",
        "delta": 1e-5,
        "noise_multiplier": 1.0,
        "max_grad_norm": 1.0,
        "clipping": "adaptive",
        "accountant": "rdp",
    }
    with pytest.raises(SpecError, match=r"\[privacy\].clipping: 'adaptive' clipping .* needs noise = 'central'"):
        parse_privacy(table, "[privacy]", PlainSum())


def test_central_noise_adder_must_match_who_gets_the_sum():
    data = _with("dp-fedavg-central")
    data["secure_sum"] = {"kind": "ckks", "release": "sites"}
    data["threat_model"]["aggregator_sees"] = "ciphertext"
    with pytest.raises(SpecError, match="releases the sum to the key-holders"):
        parse_protocol(data, "x.toml")
    data["privacy"]["noise_adder"] = "key-holders"
    assert parse_protocol(data, "x.toml").privacy.noise_adder == "key-holders"


def test_threat_model_cannot_claim_less_than_the_layer_shows():
    data = _raw("dp-fedavg-central")
    data["threat_model"]["aggregator_sees"] = "noised"  # central noise: the aggregator sees updates before noise
    with pytest.raises(
        SpecError, match="aggregator_sees: the spec says 'noised' but its layers show the aggregator 'plain'"
    ):
        parse_protocol(data, "x.toml")


PLAN = RunPlan(rounds=5, fraction=1.0, training=TrainingConfig(batch_size=10, lr=0.1))


def _layer(cfg, tmp_path, **kw):
    args = dict(
        weighting="uniform",
        plan=PLAN,
        site_sizes={"A": 100, "B": 50, "C": 80},
        run_dir=tmp_path,
        noise_rng=np.random.default_rng(0),
        protocol_name="p",
        spec_hash="h",
    )
    args.update(kw)
    return build_privacy_layer(cfg, **args)


def test_build_refuses_example_weighting_for_update_level_dp(tmp_path):
    cfg = load_protocol("dp-fedavg-central").privacy
    with pytest.raises(
        SpecError, match="update-level DP needs \\[aggregation\\].weighting = 'uniform'.*found 'examples'"
    ):
        _layer(cfg, tmp_path, weighting="examples")


def test_build_refuses_more_min_sites_than_sites(tmp_path):
    cfg = load_protocol("dp-distributed-ckks").privacy
    with pytest.raises(SpecError, match="min_sites: 3 exceeds the 2 sites"):
        _layer(cfg, tmp_path, site_sizes={"A": 10, "B": 10})


def test_calibrated_noise_meets_the_target_over_the_planned_rounds(tmp_path):
    from secure_fl.privacy.accounting import compose, epsilon

    cfg = load_protocol("dp-sgd-local").privacy
    layer = _layer(cfg, tmp_path)
    for site in ("A", "B", "C"):
        sigma = layer.noise_multiplier_for(site)
        total = compose([layer.round_event(site, sigma)] * PLAN.rounds)
        assert epsilon(total, cfg.delta, "rdp") <= cfg.target_epsilon
        assert epsilon(total, cfg.delta, "rdp") > 0.95 * cfg.target_epsilon
    # the smaller site samples a larger fraction per step (q = 10/50), so it needs more noise
    assert layer.noise_multiplier_for("B") > layer.noise_multiplier_for("A")
    with pytest.raises(KeyError, match="unknown site 'Z'"):
        layer.site("Z")


def test_secure_noise_picks_the_csprng_and_seeded_noise_is_reproducible(tmp_path):
    secure = _layer(load_protocol("dp-sgd-local").privacy, tmp_path / "s", weighting="examples")
    assert secure.site("A").source.is_secure and secure.site("A").training_hook().source.is_secure
    assert secure.server_source.is_secure
    table = dict(_raw("dp-sgd-local")["privacy"], secure_noise=False)
    cfg = parse_privacy(table, "[privacy]", PlainSum())
    a = _layer(cfg, tmp_path / "a", weighting="examples", noise_rng=np.random.default_rng(9))
    b = _layer(cfg, tmp_path / "b", weighting="examples", noise_rng=np.random.default_rng(9))
    assert not a.site("A").source.is_secure
    assert np.array_equal(a.site("A").source.normal(1.0, 5), b.site("A").source.normal(1.0, 5))
    # each site draws from its own stream
    assert not np.array_equal(a.site("B").source.normal(1.0, 5), b.site("A").source.normal(1.0, 5))


def test_a_new_mechanism_is_one_class_and_one_registration(tmp_path):
    """The registry contract: a mechanism declares keys, placements and its event; parsing, the
    layer, the ledger and the release need no other edit. Names are never reused."""
    from secure_fl.protocol.dp import MECHANISMS, REGISTRY

    saved = dict(REGISTRY), dict(MECHANISMS)
    try:
        _toy_mechanism_round(tmp_path)
    finally:  # the registry as it was
        for table, old in zip((REGISTRY, MECHANISMS), saved):
            table.clear()
            table.update(old)
    assert "toy-local-gaussian" not in MECHANISMS


def _toy_mechanism_round(tmp_path):
    from secure_fl.privacy.accounting import gaussian_event
    from secure_fl.protocol.base import SumResult
    from secure_fl.protocol.dp import DpMechanism, Key, register_mechanism
    from secure_fl.speccheck import in_range

    class ToyLocalGaussian(DpMechanism):
        name = "toy-local-gaussian"
        placements = ("local",)
        unit = "site"
        keys = (Key("scale", float, 1.0, in_range(0, lo_open=True)),)

        @classmethod
        def guarantee(cls, cfg):
            return [f"toy ({cfg.target_text()})"]

        def round_event(self, site_id, sigma):
            return gaussian_event(sigma / 2.0)

        def transform(self, site, delta, n_examples, round):
            return (
                delta + site.source.normal(site.noise_multiplier * self.config.scale, delta.shape[0]),
                1.0,
                site.planned_event(),
            )

    register_mechanism(ToyLocalGaussian)
    with pytest.raises(ValueError, match="already registered"):
        register_mechanism(type("Other", (ToyLocalGaussian,), {}))
    table = {
        "mechanism": "toy-local-gaussian",
        "noise": "local",
        "delta": 1e-5,
        "noise_multiplier": 2.0,
        "max_grad_norm": 1.0,
        "scale": 0.5,
        "secure_noise": False,
    }
    cfg = parse_privacy(table, "[privacy]", PlainSum())
    assert cfg.scale == 0.5 and cfg.guarantee() == ["toy (noise multiplier σ=2, δ=1e-05)"]
    with pytest.raises(SpecError, match=r"\[privacy\]: key\(s\) \['min_sites'\] do not apply"):
        parse_privacy({**table, "min_sites": 3}, "[privacy]", PlainSum())
    layer = _layer(cfg, tmp_path)
    sp = layer.site("A")
    sp.before_round(0)
    values, _ = sp.transform(np.zeros(4), 100, 0)
    assert sp.charge(0)["adjacency"] == "add/remove one site"
    assert sp.ledger.events() == [gaussian_event(1.0)]
    assert np.array_equal(layer.release(SumResult(values, 1.0, ("A",)), 0, ["A"]), values)
