"""Costs of pairwise masking (SecAgg / SecAgg+), ours beside Flower's SecAgg+ in the same run.

    python -m pytest benchmarks/bench_secagg.py --benchmark-enable [-k round]

Primitives (mask expansion, quantization, Shamir sharing) and whole in-process rounds
(``benchmarks/secagg_table.py`` drives both implementations through the same four stages
with the same n, d, bits and dropout). Each round benchmark's ``extra_info`` holds the
server seconds, mean site seconds and mean site bytes of that round. The README tables
come from ``python benchmarks/secagg_table.py``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest

from secure_fl.crypto import prg, shamir
from secure_fl.crypto.quantize import Quantizer

sys.path.insert(0, str(Path(__file__).resolve().parent))
from secagg_table import run_flower, run_ours  # noqa: E402

D = 1_000_000


def test_mask_expansion_aes_ctr(benchmark) -> None:
    seed = os.urandom(32)
    mask = benchmark(prg.expand_mask, seed, D, 23)
    assert mask.shape == (D,)


def test_mask_expansion_flower_randomstate(benchmark) -> None:
    from flwr.common.secure_aggregation.secaggplus_utils import pseudo_rand_gen

    seed = os.urandom(32)
    out = benchmark(pseudo_rand_gen, seed, 1 << 23, [(D,)])
    assert out[0].shape == (D,)


def test_quantize_encode(benchmark) -> None:
    q = Quantizer(bits=16, clip_range=1.0, max_weight=1, n_sites=100)
    x = np.random.default_rng(0).uniform(-1, 1, D)
    rng = np.random.default_rng(1)
    out = benchmark(q.encode, x, 1, rng)
    assert out.shape == (D + 1,)


@pytest.mark.parametrize("n", [10, 100])
def test_shamir_split_and_combine(benchmark, n: int) -> None:
    secret = os.urandom(32)
    t = n // 3 + 1

    def both() -> bytes:
        return shamir.combine(shamir.split(secret, t, n), t, 32)

    assert benchmark(both) == secret


ROUNDS = [(10, 100_000, 0.0), (10, 100_000, 0.3), (20, 100_000, 0.1)]


@pytest.mark.parametrize("impl", ["ours-secagg", "ours-secagg+", "flower-secagg", "flower-secagg+"])
@pytest.mark.parametrize("n,d,dropout", ROUNDS)
def test_round(benchmark, impl: str, n: int, d: int, dropout: float) -> None:
    fn = run_ours if impl.startswith("ours") else run_flower
    row = benchmark.pedantic(fn, args=(impl.endswith("+"), n, d, dropout), rounds=2, iterations=1)
    assert row.status == "ok", row.status
    benchmark.extra_info.update(
        {
            "server_s": row.server_s,
            "site_s": row.site_s,
            "site_up_bytes": row.site_up,
            "site_down_bytes": row.site_down,
            "expansion": row.expansion,
        }
    )
