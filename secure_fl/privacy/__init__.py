"""Differential privacy math: noise sources, clipping and Gaussian mechanisms, accounting on
``dp_accounting`` events, and the per-site privacy ledger.

Nothing here knows about sites, rounds or transports (docs/architecture.md, "Math is separate from
orchestration"); the package :mod:`secure_fl.protocol.dp` composes these pieces into the privacy layer.
"""

from .accounting import (
    ACCOUNTANTS,
    calibrate_noise_multiplier,
    compose,
    dp_sgd_event,
    epsilon,
    epsilons,
    event_from_json,
    event_to_json,
    gaussian_event,
    poisson_gaussian_event,
)
from .ledger import Budget, ChargeRecord, PrivacyLedger
from .mechanisms import (
    AdaptiveClip,
    clip_l2,
    effective_noise_multiplier,
    gaussian_noise,
    share_std,
    split_noise_multiplier,
)
from .noise import NoiseSource

__all__ = [
    "ACCOUNTANTS",
    "calibrate_noise_multiplier",
    "compose",
    "dp_sgd_event",
    "epsilon",
    "epsilons",
    "event_from_json",
    "event_to_json",
    "gaussian_event",
    "poisson_gaussian_event",
    "Budget",
    "ChargeRecord",
    "PrivacyLedger",
    "AdaptiveClip",
    "clip_l2",
    "effective_noise_multiplier",
    "gaussian_noise",
    "share_std",
    "split_noise_multiplier",
    "NoiseSource",
]
