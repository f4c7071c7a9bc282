"""ε of the DP events secure-fl charges, by dp_accounting's RDP and PLD accountants, pinned, and
cross-checked against Opacus's RDP and PRV accountants (an independent implementation)."""

from __future__ import annotations

import warnings

import pytest
from dp_accounting import dp_event
from hypothesis import given, settings
from hypothesis import strategies as st
from opacus.accountants import PRVAccountant, RDPAccountant

from secure_fl.privacy import accounting as A

# (noise multiplier, sampling rate, steps, delta) -> pinned ε by RDP and PLD (PLD grid 1e-3, pessimistic)
PINNED = [
    ((1.1, 256 / 60000, 6000, 1e-5), 1.651553016255594, 1.5085877493530273),  # Abadi et al. MNIST setting
    ((1.0, 0.01, 1000, 1e-5), 2.101366525420273, 1.8289344124594729),
    ((0.8, 0.05, 300, 1e-6), 11.771938092916692, 10.610505613686735),
    ((2.0, 1.0, 10, 1e-5), 8.079406222420491, 7.511278973084005),  # no sampling: plain Gaussian composed
]


@pytest.mark.parametrize(("params", "eps_rdp", "eps_pld"), PINNED)
def test_pinned_epsilons_and_pld_is_tightest(params, eps_rdp, eps_pld):
    sigma, q, steps, delta = params
    event = A.dp_sgd_event(sigma, q, steps)
    got = A.epsilons(event, delta)
    assert got["rdp"] == pytest.approx(eps_rdp, rel=1e-6)
    assert got["pld"] == pytest.approx(eps_pld, rel=1e-6)
    assert got["pld"] < got["rdp"]


@pytest.mark.parametrize(("params", "eps_rdp", "eps_pld"), PINNED)
def test_opacus_accountants_agree(params, eps_rdp, eps_pld):
    sigma, q, steps, delta = params
    rdp = RDPAccountant()
    rdp.history = [(sigma, q, steps)]
    assert rdp.get_epsilon(delta) == pytest.approx(eps_rdp, rel=5e-3)  # different RDP order grids
    prv = PRVAccountant()
    prv.history = [(sigma, q, steps)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        eps_prv = prv.get_epsilon(delta)
    # PRV (Gopi et al. 2021) and PLD are both numerical privacy-loss methods: within 1%, both below RDP
    assert eps_prv == pytest.approx(eps_pld, rel=1e-2)
    assert eps_prv < eps_rdp


def test_composition_over_rounds_equals_one_long_run():
    per_round = A.dp_sgd_event(1.0, 0.02, 50)
    rounds = A.compose([per_round] * 8)
    assert rounds == dp_event.SelfComposedDpEvent(A.poisson_gaussian_event(1.0, 0.02), 400)
    assert A.epsilon(rounds, 1e-5, "rdp") == pytest.approx(A.epsilon(A.dp_sgd_event(1.0, 0.02, 400), 1e-5, "rdp"))
    assert A.epsilon(A.compose([per_round] * 16), 1e-5) > A.epsilon(rounds, 1e-5)


def test_compose_keeps_different_events_apart():
    a, b = A.dp_sgd_event(1.0, 0.02, 5), A.gaussian_event(3.0)
    both = A.compose([a, b, a])
    assert isinstance(both, dp_event.ComposedDpEvent)
    assert A.epsilon(both, 1e-5) > max(A.epsilon(a, 1e-5), A.epsilon(b, 1e-5))
    assert isinstance(A.compose([]), dp_event.NoOpDpEvent)


def test_calibration_meets_the_target_tightly():
    make = lambda s: A.dp_sgd_event(s, 0.01, 1000)  # noqa: E731
    sigma = A.calibrate_noise_multiplier(2.0, 1e-5, make)
    assert A.epsilon(make(sigma), 1e-5, "rdp") <= 2.0
    assert A.epsilon(make(sigma - 0.01), 1e-5, "rdp") > 2.0
    assert sigma == pytest.approx(1.0225, abs=2e-3)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: A.poisson_gaussian_event(1.0, 1.3), "Sampling rate must be in [0, 1]. Found 1.3."),
        (lambda: A.gaussian_event(-1.0), "noise multiplier must be a finite number > 0. Found -1.0."),
        (lambda: A.dp_sgd_event(1.0, 0.1, -2), "steps must be an integer >= 0. Found -2."),
        (lambda: A.epsilon(A.gaussian_event(1.0), 0.0), "delta must be in (0, 1). Found 0.0."),
        (lambda: A.epsilon(A.gaussian_event(1.0), 1e-5, "moments"), "unknown accountant 'moments'"),
    ],
)
def test_bad_inputs_name_the_value(call, message):
    with pytest.raises(ValueError) as err:
        call()
    assert message in str(err.value)


@settings(max_examples=40, deadline=None)
@given(
    sigma=st.floats(0.1, 50), q=st.floats(0, 1), steps=st.integers(0, 10_000), rounds=st.integers(1, 5)
)
def test_event_json_round_trip(sigma, q, steps, rounds):
    event = A.compose([A.dp_sgd_event(sigma, q, steps), A.gaussian_event(sigma)] * rounds)
    assert A.event_from_json(A.event_to_json(event)) == event


def test_event_json_refuses_foreign_classes():
    with pytest.raises(ValueError, match="unknown DpEvent class 'Popen'"):
        A.event_from_json('{"__class__": "Popen", "args": ["rm"]}')


def test_opacus_counts_the_same_ledger_history():
    history = A.compose([A.dp_sgd_event(1.0, 0.01, 100)] * 10 + [A.gaussian_event(5.0)])
    assert sorted(A.opacus_history(history)) == [(1.0, 0.01, 1000), (5.0, 1.0, 1)]
    assert A.opacus_history(dp_event.LaplaceDpEvent(1.0)) is None
    assert A.opacus_epsilons(dp_event.LaplaceDpEvent(1.0), 1e-5) is None
    eps = A.opacus_epsilons(history, 1e-5)
    ours = A.epsilons(history, 1e-5)
    assert eps["opacus_rdp"] == pytest.approx(ours["rdp"], rel=5e-3)
    assert eps["opacus_prv"] == pytest.approx(ours["pld"], rel=1e-2)
    assert A.describe_event(history) == "Poisson(q=0.01)·Gaussian(σ=1) ×1000 + Gaussian(σ=5)"


# -- the memoised one-step curves give the plain accountants' ε, bit for bit ----------------------------------

# ε recorded by `secure-fl compare` (experiments/quickstart.toml, seed 0, 20 rounds) before the one-step curves
# were memoised: (σ, q, steps per round) of a dp-sgd-local site and of dp-distributed-ckks (one step per round),
# then (rounds, ε RDP, ε PLD, ε Opacus RDP or None) of the ledger's cumulative charge.
QUICKSTART = [
    ((1.6147829299145984, 0.07017543859649122, 14),  # Cleveland, local DP-SGD
     [(1, 1.086737950902743, 0.9027354187387097, 1.0867379509027442),
      (20, 3.9998327424732243, 3.6456244918212874, 3.9997920002465706)]),
    ((3.546521408480829, 0.45714285714285713, 2),  # Switzerland, local DP-SGD
     [(1, 0.8969230858580534, 0.7966203505897781, 0.896923085858053),
      (20, 3.9989331029639796, 3.667802825689119, 3.997015487865305)]),
    ((0.8130789054801135, 0.05, 1),  # distributed DP under CKKS (every site)
     [(1, 2.479033306810108, 1.8152071345687157, None), (20, 3.999096940930385, 3.251339716372385, None)]),
]


@pytest.mark.parametrize(("mechanism", "history"), QUICKSTART)
def test_quickstart_epsilons_unchanged_by_the_memo(mechanism, history):
    sigma, q, steps = mechanism
    round_event = A.dp_sgd_event(sigma, q, steps) if steps > 1 else A.poisson_gaussian_event(sigma, q)
    for rounds, eps_rdp, eps_pld, eps_opacus in history:
        event = A.compose([round_event] * rounds)
        assert A._epsilon(event, 1e-5, "rdp") == eps_rdp  # (not the per-event memo)
        assert A._epsilon(event, 1e-5, "pld") == eps_pld
        if eps_opacus is not None:
            assert A.opacus_rdp_epsilon([(sigma, q, steps * rounds)], 1e-5) == eps_opacus


@pytest.mark.parametrize("event", [
    A.dp_sgd_event(1.3, 0.02, 40),
    dp_event.ComposedDpEvent([A.dp_sgd_event(1.3, 0.02, 40), A.gaussian_event(5.0), A.dp_sgd_event(2.0, 0.2, 3)]),
    A.poisson_gaussian_event(0.9, 1.0),
])
def test_memo_accountants_equal_dp_accounting(event):
    from dp_accounting.pld import pld_privacy_accountant
    from dp_accounting.rdp import rdp_privacy_accountant

    pld = pld_privacy_accountant.PLDAccountant(value_discretization_interval=A.PLD_DISCRETIZATION)
    for kind, plain in (("rdp", rdp_privacy_accountant.RdpAccountant()), ("pld", pld)):
        plain.compose(event)
        for _ in range(2):  # the second count reads the memo
            assert A._epsilon(event, 1e-6, kind) == plain.get_epsilon(1e-6)


def test_opacus_rdp_epsilon_equals_opacus_accountant():
    history = [(1.1, 0.05, 30), (2.0, 0.2, 4), (1.1, 0.05, 7)]
    acc = RDPAccountant()
    acc.history = list(history)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        expected = acc.get_epsilon(1e-5)
    assert A.opacus_rdp_epsilon(history, 1e-5) == expected
    assert A.opacus_rdp_epsilon([], 1e-5) == 0.0
    with pytest.raises(ValueError, match="Sampling rate must be in"):
        A.opacus_rdp_epsilon([(1.0, 1.5, 3)], 1e-5)
