"""Exact discrete Gaussian sampling (Canonne, Kamath, Steinke 2020) and the Gaussian mechanism on a grid."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
from scipy import stats

from secure_fl.privacy import discrete_gaussian as dg
from secure_fl.privacy.discrete_gaussian import (
    bernoulli_exp,
    discrete_gaussian_pmf,
    discrete_laplace,
    grid_gaussian,
    sample_discrete_gaussian,
    tail_bound,
    variance_at_least,
)
from secure_fl.privacy.noise import NoiseSource

N = 20_000


def _seeded(seed: int = 0) -> NoiseSource:
    return NoiseSource.seeded(np.random.default_rng(seed))


def _chi_square(samples: np.ndarray, pmf: np.ndarray, support: np.ndarray) -> float:
    """p-value of the samples against pmf on ``support``, everything outside pooled in one cell."""
    counts = np.array([(samples == x).sum() for x in support] + [(~np.isin(samples, support)).sum()], dtype=float)
    probs = np.append(pmf, max(0.0, 1.0 - pmf.sum()))
    keep = probs * samples.size >= 5  # chi-square needs >= 5 expected per cell: pool the rest
    expected = np.append(probs[keep], probs[~keep].sum()) * samples.size
    observed = np.append(counts[keep], counts[~keep].sum())
    if expected[-1] == 0:
        expected, observed = expected[:-1], observed[:-1]
    return float(stats.chisquare(observed, expected * observed.sum() / expected.sum()).pvalue)


@pytest.mark.parametrize("sigma2", [Fraction(1, 4), Fraction(9, 4), Fraction(50), Fraction(1001, 7)])
def test_samples_follow_the_exact_pmf(sigma2):
    x = sample_discrete_gaussian(sigma2, N, _seeded(1))
    s = math.sqrt(sigma2)
    support = np.arange(-math.ceil(4 * s), math.ceil(4 * s) + 1)
    assert _chi_square(x, discrete_gaussian_pmf(float(sigma2), support), support) > 1e-3
    # variance: the exact one (slightly below σ² for small σ), within 5 standard errors
    wide = np.arange(-int(40 * s) - 40, int(40 * s) + 41)
    pmf = discrete_gaussian_pmf(float(sigma2), wide)
    var = float((pmf * wide**2).sum())
    fourth = float((pmf * wide**4).sum())
    assert abs(x.var() - var) < 5 * math.sqrt((fourth - var**2) / N)
    # symmetry: P[X > 0] = P[X < 0] (binomial test) and the mean is 0
    pos, neg = int((x > 0).sum()), int((x < 0).sum())
    assert stats.binomtest(pos, pos + neg).pvalue > 1e-3
    assert abs(x.mean()) < 5 * math.sqrt(var / N)


def test_a_wrong_pmf_is_rejected():
    """The chi-square check can fail: σ² = 2.25 samples against the pmf of σ² = 2.5."""
    x = sample_discrete_gaussian(Fraction(9, 4), N, _seeded(2))
    support = np.arange(-6, 7)
    assert _chi_square(x, discrete_gaussian_pmf(2.5, support), support) < 1e-6


def test_large_sigma_has_the_right_variance_and_secure_source_works():
    sigma2 = variance_at_least(3.0e4**2)
    for source in (_seeded(3), NoiseSource.secure()):
        x = sample_discrete_gaussian(sigma2, 10_000, source)
        assert abs(x.var() / float(sigma2) - 1) < 5 * math.sqrt(2 / 10_000)
        assert x.dtype == np.int64


@pytest.mark.parametrize("num,den", [(0, 1), (1, 2), (1, 1), (23, 10), (7, 3), (41, 4)])
def test_bernoulli_exp_has_probability_exp_minus_gamma(num, den):
    n = 20_000
    hits = bernoulli_exp(np.full(n, num), np.full(n, den), _seeded(4)).sum()
    p = math.exp(-num / den)
    assert abs(hits / n - p) <= 5 * math.sqrt(p * (1 - p) / n) + 1e-12


def test_huge_exponents_take_the_exact_python_path():
    src = _seeded(5)
    den = 1 << 70
    hits = sum(dg._bernoulli_exp_scalar(3 * den + den // 2, den, src) for _ in range(1000))
    p = math.exp(-3.5)
    assert abs(hits / 1000 - p) < 5 * math.sqrt(p * (1 - p) / 1000)


def test_discrete_laplace_follows_its_pmf():
    t = 3
    y = discrete_laplace(t, N, _seeded(6))
    support = np.arange(-15, 16)
    w = np.exp(-np.abs(support) / t)
    pmf = w / (1 + 2 * math.exp(-1 / t) / (1 - math.exp(-1 / t)))
    assert _chi_square(y, pmf, support) > 1e-3


def test_bad_parameters_are_refused_with_the_value():
    with pytest.raises(ValueError, match="σ² must be an int or a fractions.Fraction"):
        sample_discrete_gaussian(2.5, 3, _seeded())
    with pytest.raises(ValueError, match="σ² must be > 0"):
        sample_discrete_gaussian(Fraction(0), 3, _seeded())
    with pytest.raises(ValueError, match="too large or too finely given"):
        sample_discrete_gaussian(Fraction(10**12, 3**30), 3, _seeded())
    with pytest.raises(ValueError, match="need num >= 0"):
        bernoulli_exp(np.array([-1]), np.array([2]), _seeded())
    with pytest.raises(ValueError, match="integer bounds must be in"):
        NoiseSource.secure().integers_below(np.array([0]))


def test_variance_rounds_up_and_tail_bound_holds():
    v = variance_at_least(2.0000001)
    assert v >= Fraction(2.0000001) and v.denominator <= 256 and v - Fraction(2.0000001) < Fraction(1, 256)
    b = tail_bound(10.0, 20.0)
    # P[|X| > B] from the pmf is below 2^-20
    far = np.arange(b + 1, b + 400)
    assert 2 * discrete_gaussian_pmf(100.0, far).sum() < 2.0**-20


def test_secure_integers_are_uniform():
    u = NoiseSource.secure().integers_below(np.full(60_000, 6))
    assert u.min() == 0 and u.max() == 5
    assert stats.chisquare(np.bincount(u, minlength=6)).pvalue > 1e-4


def test_grid_mechanism_output_lies_on_the_grid_and_hides_low_order_bits():
    """Mironov-style attack surface: the float path's output carries the input's low bits; the grid path's does not."""
    grid = 2.0**-12
    x = np.random.default_rng(7).normal(size=500)
    x *= 0.9 / np.linalg.norm(x)
    y, sens = grid_gaussian(x, std=0.5, grid=grid, l2_bound=1.0, source=_seeded(8), rng=np.random.default_rng(9))
    units = y / grid
    assert np.array_equal(units, np.round(units))  # every output is an exact multiple of the grid
    assert sens >= 1.0
    # an input differing only below the grid changes nothing (same seeds): the low bits are gone
    x2 = x + 2.0**-40
    y2, _ = grid_gaussian(x2, std=0.5, grid=grid, l2_bound=1.0, source=_seeded(8), rng=np.random.default_rng(9))
    assert np.array_equal(y, y2)
    # the naive float path keeps them: (x + n) - (x2 + n) != 0 with the same noise
    noise = NoiseSource.seeded(np.random.default_rng(8)).normal(0.5, 500)
    assert not np.array_equal(x + noise, x2 + noise)
    # and the noise added is the right size
    assert 0.4 < float(np.std(y - x)) < 0.6


@pytest.mark.parametrize("sigma", [1.1 * 2**11, 2.0**21 * 1.37, 3.1e8])
def test_large_sigmas_are_exact_and_fast_through_variance_at_least(sigma):
    v = variance_at_least(sigma**2)
    assert v >= Fraction(sigma**2) and float(v) / sigma**2 - 1 < 2 / sigma
    x = sample_discrete_gaussian(v, 5000, _seeded(11))
    assert abs(x.var() / float(v) - 1) < 5 * math.sqrt(2 / 5000)
    # the scaled sample against the standard normal (a discrete Gaussian this wide is ~ continuous)
    assert stats.kstest(x / math.sqrt(float(v)), "norm").pvalue > 1e-3
