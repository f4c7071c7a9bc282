"""The memoised RDP accountant gives exactly dp_accounting's ε (it only caches the per-step RDP curve)."""

from __future__ import annotations

import pytest
from dp_accounting import dp_event
from dp_accounting.rdp import rdp_privacy_accountant

from secure_fl.privacy.accounting import _accountant, dp_sgd_event


@pytest.mark.parametrize("sigma, q, steps", [(1.1, 0.07, 1), (1.1, 0.07, 20), (0.8, 0.46, 7), (4.0, 1.0, 3)])
def test_memoised_rdp_equals_dp_accounting(sigma: float, q: float, steps: int) -> None:
    event = dp_event.ComposedDpEvent([dp_sgd_event(sigma, q, steps), dp_event.GaussianDpEvent(2.0),
                                      dp_sgd_event(sigma, q, 2)])
    ours, theirs = _accountant("rdp"), rdp_privacy_accountant.RdpAccountant()
    ours.compose(event)
    theirs.compose(event)
    assert ours.get_epsilon(1e-5) == theirs.get_epsilon(1e-5)
    again = _accountant("rdp")  # second time from the cache
    again.compose(event)
    assert again.get_epsilon(1e-5) == theirs.get_epsilon(1e-5)
