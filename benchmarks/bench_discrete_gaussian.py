"""Cost of exact discrete Gaussian noise (Canonne, Kamath, Steinke 2020) and the DDG share.

    python -m pytest benchmarks/bench_discrete_gaussian.py --benchmark-enable

Each benchmark draws 100,000 values; ``extra_info["values_per_s"]`` is 100,000 / mean time.
σ = 1.5 (small), 11,585 (the share of protocols/dp-distributed-secagg.toml in grid units) and
2^21 (dp-fedavg's central noise on its 2^-20 grid), from a seeded generator and from the OS
CSPRNG (``secure_noise = true``).
"""

from __future__ import annotations

import numpy as np
import pytest

from secure_fl.privacy.discrete_gaussian import sample_discrete_gaussian, variance_at_least
from secure_fl.privacy.noise import NoiseSource

N = 100_000


@pytest.mark.parametrize("sigma", [1.5, 11585.2, 2.0**21], ids=["sigma1.5", "sigma11585", "sigma2^21"])
@pytest.mark.parametrize("secure", [False, True], ids=["seeded", "csprng"])
def test_discrete_gaussian_100k(benchmark, sigma, secure):
    source = NoiseSource.secure() if secure else NoiseSource.seeded(np.random.default_rng(0))
    variance = variance_at_least(sigma**2)
    out = benchmark.pedantic(sample_discrete_gaussian, args=(variance, N, source), rounds=3, iterations=1)
    assert out.shape == (N,)
    benchmark.extra_info["values_per_s"] = N / benchmark.stats.stats.mean
