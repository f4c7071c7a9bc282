"""Noise statistics, distributed noise shares, clipping and adaptive clipping."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from secure_fl.privacy.mechanisms import (
    AdaptiveClip,
    clip_l2,
    effective_noise_multiplier,
    gaussian_noise,
    share_std,
    split_noise_multiplier,
)
from secure_fl.privacy.noise import NoiseSource

N = 200_000


def _check_gaussian(x: np.ndarray, std: float) -> None:
    # mean within 5 standard errors, variance within 5 standard errors of the sample variance
    n = x.size
    assert abs(x.mean()) < 5 * std / math.sqrt(n)
    assert abs(x.var() - std**2) < 5 * std**2 * math.sqrt(2 / n)
    # 4th moment of a Gaussian: 3σ⁴ (catches uniform or Laplace noise of the right variance)
    assert abs(np.mean(x**4) / std**4 - 3.0) < 0.1


@pytest.mark.parametrize(
    "source", [NoiseSource.seeded(np.random.default_rng(1)), NoiseSource.secure()], ids=["seeded", "csprng"]
)
def test_gaussian_noise_has_the_right_distribution(source):
    _check_gaussian(gaussian_noise(source, 2.5, N), 2.5)


def test_secure_uniforms_are_uniform_and_fresh():
    src = NoiseSource.secure()
    u = src.uniform(N)
    assert u.min() >= 0 and u.max() < 1
    assert abs(u.mean() - 0.5) < 5 * math.sqrt(1 / 12 / N)
    counts = np.histogram(u, bins=10, range=(0, 1))[0]
    chi2 = float(((counts - N / 10) ** 2 / (N / 10)).sum())
    assert chi2 < 40  # 9 degrees of freedom: p < 1e-5 for a fair source
    assert not np.array_equal(src.uniform(16), src.uniform(16))
    assert src.is_secure and "urandom" in src.description


def test_seeded_noise_is_reproducible_and_odd_sizes_work():
    a = NoiseSource.seeded(np.random.default_rng(7)).normal(1.0, (3, 5))
    b = NoiseSource.seeded(np.random.default_rng(7)).normal(1.0, (3, 5))
    assert a.shape == (3, 5) and np.array_equal(a, b)
    assert NoiseSource.secure().normal(1.0, 7).shape == (7,)
    assert np.array_equal(NoiseSource.secure().normal(0.0, 4), np.zeros(4))
    with pytest.raises(ValueError, match="standard deviation must be finite and >= 0, found -1"):
        NoiseSource.secure().normal(-1.0, 3)
    with pytest.raises(TypeError, match="numpy.random.Generator, found RandomState"):
        NoiseSource.seeded(np.random.RandomState(0))  # type: ignore[arg-type]


def test_poisson_sampling_rate():
    mask = NoiseSource.secure().bernoulli(0.05, N)
    assert abs(mask.mean() - 0.05) < 5 * math.sqrt(0.05 * 0.95 / N)
    with pytest.raises(ValueError, match=r"sampling rate must be in \[0, 1\], found 1.5"):
        NoiseSource.secure().bernoulli(1.5, 3)


@pytest.mark.parametrize("min_sites", [2, 3, 5])
def test_min_sites_shares_minus_a_curious_sites_own_have_the_central_variance(min_sites):
    """A contributing site subtracts its own share: the other m − 1 shares must still carry (σC)²."""
    sigma, clip = 1.3, 0.7
    rng = np.random.default_rng(min_sites)
    std = share_std(sigma, clip, min_sites)
    assert std == pytest.approx(sigma * clip / math.sqrt(min_sites - 1))
    shares = [gaussian_noise(NoiseSource.seeded(rng), std, N) for _ in range(min_sites)]
    _check_gaussian(np.sum(shares[1:], axis=0), sigma * clip)  # what site 0 sees of the others' noise
    # one share alone is too weak whenever min_sites > 2
    if min_sites > 2:
        assert shares[0].std() < 0.9 * sigma * clip
    with pytest.raises(ValueError, match="min_sites must be an integer >= 2"):
        share_std(sigma, clip, 1)


def test_effective_noise_multiplier():
    assert effective_noise_multiplier(2.0, 5, 5) == pytest.approx(2.0)  # a contributor knows its own share
    assert effective_noise_multiplier(2.0, 5, 5, known_shares=0) == pytest.approx(2.0 * math.sqrt(5 / 4))
    assert effective_noise_multiplier(2.0, 9, 5) == pytest.approx(2.0 * math.sqrt(2))  # extra honest shares count
    assert effective_noise_multiplier(2.0, 3, 9) == pytest.approx(1.0)
    assert effective_noise_multiplier(2.0, 1, 8) == 0.0


def test_clip_l2_known_answers():
    v, norm = clip_l2(np.array([3.0, 4.0]), 1.0)
    assert norm == pytest.approx(5.0) and np.allclose(v, [0.6, 0.8])
    small = np.array([0.1, -0.2])
    v, norm = clip_l2(small, 1.0)
    assert np.array_equal(v, small) and v is not small
    with pytest.raises(ValueError, match="non-finite"):
        clip_l2(np.array([np.nan, 1.0]), 1.0)
    with pytest.raises(ValueError, match="clip bound must be a finite number > 0, found 0"):
        clip_l2(np.ones(2), 0)


@settings(max_examples=60, deadline=None)
@given(arrays(np.float64, st.integers(1, 50), elements=st.floats(-1e6, 1e6)), st.floats(1e-3, 1e3))
def test_clip_l2_bounds_the_norm_and_keeps_direction(vector, bound):
    clipped, norm = clip_l2(vector, bound)
    assert np.linalg.norm(clipped) <= bound * (1 + 1e-9)
    assert norm == pytest.approx(np.linalg.norm(vector))
    if norm > 0:
        assert np.allclose(clipped * norm, vector * np.linalg.norm(clipped), rtol=1e-9, atol=1e-6 * max(norm, 1))


def test_adaptive_clip_tracks_the_target_quantile():
    rng = np.random.default_rng(3)
    src = NoiseSource.seeded(rng)
    clip = AdaptiveClip(clip=0.01, target_quantile=0.5, learning_rate=0.2, count_stddev=0.5)
    norms_dist = lambda k: np.exp(rng.normal(0.0, 0.5, size=k))  # noqa: E731  median 1.0
    for _ in range(400):
        norms = norms_dist(50)
        clip.update(sum(clip.centred_bit(n) for n in norms), 50, src)
    assert clip.clip == pytest.approx(1.0, rel=0.25)
    # geometric update (Andrew et al. 2021, Alg. 1): all unclipped -> shrink by exp(-η(1-γ))
    c = AdaptiveClip(clip=2.0, target_quantile=0.3, learning_rate=0.5)
    assert c.centred_bit(1.0) == 0.5 and c.centred_bit(3.0) == -0.5
    assert c.update(10 * 0.5, 10, src) == pytest.approx(2.0 * math.exp(-0.5 * 0.7))
    # nobody reported out of an expected 10: the estimate is ½ (not a division by zero)
    assert c.update(0.0, 10, src) == pytest.approx(2.0 * math.exp(-0.5 * 0.7) * math.exp(-0.5 * 0.2))
    with pytest.raises(ValueError, match="expected count must be a finite number > 0, found 0"):
        c.update(0.0, 0, src)


def test_adaptive_clip_rejects_bad_parameters():
    with pytest.raises(ValueError, match=r"target quantile must be in \(0, 1\), found 1.2"):
        AdaptiveClip(clip=1.0, target_quantile=1.2)
    with pytest.raises(ValueError, match="initial clip must be a finite number > 0"):
        AdaptiveClip(clip=-1.0)


def test_split_noise_multiplier_theorem_1():
    z, sb = 1.0, 5.0
    zd = split_noise_multiplier(z, sb)
    assert zd**-2 + (2 * sb) ** -2 == pytest.approx(z**-2)
    assert zd > z
    with pytest.raises(ValueError, match="too small for noise multiplier 3.0"):
        split_noise_multiplier(3.0, 1.0)


# -- DP-FedAvg through the privacy layer ------------------------------------------------------------


def _fedavg_layer(tmp_path, **privacy):
    from secure_fl.protocol.dp import build_privacy_layer, parse_privacy
    from secure_fl.protocol.plain import PlainSum
    from secure_fl.training.config import RunPlan, TrainingConfig

    table = {
        "mechanism": "dp-fedavg",
        "delta": 1e-5,
        "noise_multiplier": 2.0,
        "max_grad_norm": 1.0,
        "secure_noise": False,
        "accountant": "rdp",
        **privacy,
    }
    cfg = parse_privacy(table, "[privacy]", PlainSum())
    plan = RunPlan(rounds=3, fraction=1.0, training=TrainingConfig())
    return build_privacy_layer(
        cfg,
        weighting="uniform",
        plan=plan,
        site_sizes={"A": 10, "B": 20, "C": 30},
        run_dir=tmp_path,
        noise_rng=np.random.default_rng(4),
        protocol_name="p",
        spec_hash="h",
    )


def test_local_update_noise_is_clip_plus_full_gaussian(tmp_path):

    layer = _fedavg_layer(tmp_path, noise="local")
    sp = layer.site("A")
    sp.before_round(0)
    delta = np.full(N, 10.0 / math.sqrt(N))  # norm 10 -> clipped to norm 1
    values, weight = sp.transform(delta, 10, 0)
    assert weight == 1.0
    _check_gaussian(values - delta / 10.0, 2.0)
    sp.charge(0)
    # sensitivity 2C for what one site sends: charged as a Gaussian with multiplier σ/2 (a little less:
    # the rounded update's norm bound Δγ >= C is the sensitivity charged)
    (event,) = sp.ledger.events()
    assert 1.0 * (1 - 1e-5) < event.noise_multiplier <= 1.0
    units = values / 2.0**-20  # the output is on the public grid 2^-20: its low bits carry nothing
    assert np.array_equal(units, np.round(units))


def test_central_noise_is_added_once_after_the_sum(tmp_path):
    from secure_fl.protocol.base import SumResult

    layer = _fedavg_layer(tmp_path, noise="central", noise_adder="aggregator")
    dim = 50_000
    total = np.zeros(dim)
    for s in ("A", "B", "C"):
        sp = layer.site(s)
        sp.before_round(0)
        values, _ = sp.transform(np.full(dim, 0.5 / math.sqrt(dim)), 10, 0)  # norm 0.5: not clipped
        assert np.allclose(values, 0.5 / math.sqrt(dim), rtol=0, atol=2.0**-20)  # no noise at the site, only rounding
        sp.charge(0)
        (event,) = sp.ledger.events()
        assert 2.0 * (1 - 1e-3) < event.noise_multiplier <= 2.0  # Δ >= C/γ: rounding inflation is charged
        total += values
    mean = layer.release(SumResult(total, 3.0, ("A", "B", "C")), 0, ["A", "B", "C"])
    _check_gaussian(mean * 3 - total, 2.0 * 1.0)  # noise std σC on the sum, divided by the fixed denominator 3
    units = mean * 3 / 2.0**-20
    assert np.allclose(units, np.round(units), rtol=0, atol=1e-6)  # the noised sum is on the grid


def test_adaptive_clipping_through_the_layer(tmp_path):
    from secure_fl.protocol.base import SumResult

    layer = _fedavg_layer(
        tmp_path,
        noise="central",
        noise_adder="aggregator",
        clipping="adaptive",
        target_quantile=0.5,
        clip_learning_rate=0.5,
        clip_count_stddev=1.5,
    )
    assert layer.clip == 1.0
    dim = 8
    for r in range(10):
        total = np.zeros(dim)
        for s in ("A", "B", "C"):
            sp = layer.site(s)
            values, _ = sp.transform(np.full(dim, 0.01), 10, r)  # tiny updates: never clipped
            total += values
        layer.release(SumResult(total, 3.0, ("A", "B", "C")), r, ["A", "B", "C"])
    assert layer.clip < 1.0  # all updates unclipped, target quantile 0.5: the clip shrinks
    # the update's share of the noise is what Theorem 1 of Andrew et al. leaves: (σ⁻² - (2σ_b)⁻²)^(-1/2)
    expected = split_noise_multiplier(2.0, 1.5) * layer.last_release["clip"]
    assert layer.last_release["noise_std"] == pytest.approx(expected, rel=1e-5)
