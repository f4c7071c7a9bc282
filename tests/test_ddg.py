"""Distributed discrete Gaussian (Kairouz, Liu, Steinke 2021): rounding, accounting, rotation."""

from __future__ import annotations

import math

import numpy as np
import pytest
from dp_accounting import dp_event
from dp_accounting.rdp import rdp_privacy_accountant

from secure_fl.crypto.quantize import Quantizer, conditional_round, rounded_norm_bound_sq, stochastic_round
from secure_fl.privacy.accounting import epsilon
from secure_fl.privacy.ddg import DdgParams, ddg_event, ddg_rho, ddg_tau, hadamard_rotate
from secure_fl.privacy.noise import NoiseSource


def test_stochastic_rounding_after_clipping_exceeds_the_clip_norm_unaccounted():
    """dp-fedavg-secagg's quantiser: an update of norm exactly C comes out with norm well above C."""
    d, clip = 1000, 0.5
    q = Quantizer(bits=4, clip_range=clip, max_weight=1, n_sites=3)
    x = np.full(d, clip / math.sqrt(d))  # ||x|| = C, every coordinate between two levels
    words = q.encode(x, 1, np.random.default_rng(0))[:-1].astype(np.float64)
    decoded = words * q.step - clip  # what the sum carries for this site
    assert np.linalg.norm(decoded) > 1.1 * clip  # unaccounted: DP-FedAvg charges sensitivity C
    assert np.linalg.norm(decoded) <= clip + q.step * math.sqrt(d)  # the worst case, C + step·sqrt(d)


def test_conditional_rounding_enforces_the_accounted_bound():
    d, c = 1000, 15.0  # grid units
    x = np.full(d, c / math.sqrt(d))
    plain = stochastic_round(x, np.random.default_rng(1))
    assert float(plain @ plain) > c * c  # plain rounding inflates the norm
    for beta in (0.0, math.exp(-0.5), 0.01):
        bound = rounded_norm_bound_sq(c, d, beta)
        assert bound >= c * c
        rng = np.random.default_rng(2)
        for _ in range(20):
            r = conditional_round(x, bound, rng)
            assert int(r @ r) <= bound and r.dtype == np.int64
    # unbiased in expectation still (conditioning on a high-probability event)
    rng = np.random.default_rng(3)
    mean = np.mean([conditional_round(x, rounded_norm_bound_sq(c, d, 0.5), rng) for _ in range(200)], axis=0)
    assert abs(mean.mean() - x[0]) < 0.02
    with pytest.raises(ValueError, match="no rounding of a vector of norm"):
        conditional_round(np.full(d, 3.0), bound, rng, max_tries=5)


def test_tau_and_rho():
    assert ddg_tau(1.0, 1) == 0.0
    assert ddg_tau(1.0, 5) > ddg_tau(2.0, 5) > 0
    with pytest.raises(ValueError, match=">= 1/2"):
        ddg_tau(0.3, 2)
    # large shares: τ vanishes, ρ = Δ²/(2 n σ_s²), the continuous Gaussian's
    assert ddg_rho(100.0, 1000.0, 50.0, 4, 10_000) == pytest.approx(100.0**2 / (2 * 4 * 50.0**2), rel=1e-12)
    # small shares: τ costs privacy
    assert ddg_rho(3.0, 9.0, 0.6, 4, 10_000) > 3.0**2 / (2 * 4 * 0.36)


def test_event_epsilon_matches_an_independent_rdp_computation():
    p = DdgParams(clip=0.5, grid=2.0**-10, dim=5000, noise_multiplier=1.1, min_shares=3)
    rounds, delta = 30, 1e-5
    event = dp_event.SelfComposedDpEvent(p.event(), rounds)
    ledger_eps = epsilon(event, delta, "rdp")
    orders = np.array(rdp_privacy_accountant.DEFAULT_RDP_ORDERS)
    rdp = orders * p.rho * rounds  # ρ-zCDP is (α, αρ)-RDP at every order; composition adds ρ
    independent = rdp_privacy_accountant.compute_epsilon(orders, rdp, delta)[0]
    assert ledger_eps == pytest.approx(independent, rel=1e-9)
    # and the classic zCDP conversion (Bun & Steinke 2016, Prop. 1.3) is never beaten by much nor violated
    rho = p.rho * rounds
    assert ledger_eps <= rho + 2 * math.sqrt(rho * math.log(1 / delta))
    # the DDG is slightly weaker than the continuous Gaussian of the same σ (rounding, τ)
    assert p.effective_noise_multiplier < 1.1
    assert p.effective_noise_multiplier > 1.0


def test_params_shares_and_bounds():
    p = DdgParams(clip=0.5, grid=2.0**-10, dim=100, noise_multiplier=1.0, min_shares=2)
    assert float(p.share_variance) >= (0.5 * 2**10) ** 2 / 2
    assert p.l2 >= 0.5 * 2**10 and p.l1 <= math.sqrt(100) * p.l2
    z = p.share(100, NoiseSource.seeded(np.random.default_rng(0)))
    assert z.dtype == np.int64 and int(np.abs(z).max()) <= p.noise_bound
    assert p.noise_bound > 10 * p.share_sigma
    assert ddg_event(p.rho) == p.event()
    with pytest.raises(ValueError, match="< 1/2 grid unit"):
        DdgParams(clip=0.5, grid=1.0, dim=10, noise_multiplier=0.1, min_shares=4)


@pytest.mark.parametrize("d", [1, 7, 1000, 1024])
def test_hadamard_rotation_is_orthogonal_and_invertible(d):
    x = np.random.default_rng(d).normal(size=d)
    y = hadamard_rotate(x, 42)
    assert np.linalg.norm(y) == pytest.approx(np.linalg.norm(x), rel=1e-12)
    assert np.allclose(hadamard_rotate(y, 42, inverse=True), x, atol=1e-12)
    if d >= 1000:  # it flattens a spike
        spike = np.zeros(d)
        spike[0] = 1.0
        assert np.abs(hadamard_rotate(spike, 1)).max() < 0.1
