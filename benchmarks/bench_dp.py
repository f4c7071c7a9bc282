"""Cost of differential privacy: a DP-SGD step against a plain SGD step, and the accounting.

    python -m pytest benchmarks/bench_dp.py --benchmark-enable [-k faces]

Models are the ones the tasks use (``secure_fl.tasks.models``): logistic regression for
heart-disease (13 features) and the face CNN (56×46 grey images, 40 identities), batch 16.
Measured per step:

* ``plain``: ordinary SGD (forward, backward, update);
* ``opacus``: DP-SGD as the ``dp-sgd`` mechanism runs it (Opacus GradSampleModule
  per-example gradients, clipping, Gaussian noise from a seeded generator);
* ``opacus-csprng``: the same with noise from ``os.urandom`` (``secure_noise = true``);
* ``func-clipped-sum``: one site's share of distributed DP-SGD (``torch.func`` per-example
  gradients, clipping, sum, noise share), for the same batch.

The accounting benchmarks time ε for 30 rounds of DP-SGD by each dp_accounting accountant,
and one ledger charge (SQLite write + RDP and PLD of the composed history).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import torch
from torch import nn

from secure_fl.privacy import accounting as A
from secure_fl.privacy.ledger import PrivacyLedger
from secure_fl.privacy.noise import NoiseSource
from secure_fl.tasks.models import FaceEncoder, LogisticRegression
from secure_fl.training.dp_distributed import distributed_share
from secure_fl.training.dp_sgd import SourcedDPOptimizer

BATCH = 16
MODELS: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...], int]] = {
    "heart-logreg": (lambda: LogisticRegression(13, 2), (13,), 2),
    "faces-cnn": (lambda: FaceEncoder(40), (1, 56, 46), 40),
}


def _batch(shape: tuple[int, ...], classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(BATCH, *shape, generator=g), torch.randint(0, classes, (BATCH,), generator=g)


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("model_name", list(MODELS))
@pytest.mark.parametrize("mode", ["plain", "opacus", "opacus-csprng", "func-clipped-sum"])
def test_step(benchmark, model_name, mode):
    make, shape, classes = MODELS[model_name]
    torch.manual_seed(0)
    model = make()
    x, y = _batch(shape, classes)
    loss_fn = nn.functional.cross_entropy
    n_params = sum(p.numel() for p in model.parameters())
    benchmark.extra_info.update({"model": model_name, "mode": mode, "params": n_params, "batch": BATCH})
    if mode == "func-clipped-sum":
        src = NoiseSource.seeded(np.random.default_rng(0))
        benchmark(lambda: distributed_share(model, x, y, loss_fn, sample_rate=1.0, clip=1.0, noise_multiplier=1.0,
                                            min_sites=3, source=src))
        return
    opt: torch.optim.Optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    trained: nn.Module = model
    if mode != "plain":
        from opacus import GradSampleModule

        trained = GradSampleModule(model, batch_first=True, loss_reduction="mean")
        src = NoiseSource.secure() if mode == "opacus-csprng" else NoiseSource.seeded(np.random.default_rng(0))
        opt = SourcedDPOptimizer(opt, noise_multiplier=1.0, max_grad_norm=1.0, expected_batch_size=BATCH, source=src)

    def step() -> None:
        opt.zero_grad()
        loss_fn(trained(x), y).backward()
        opt.step()

    benchmark(step)


def _forget_step_curves() -> None:
    A._step_rdp.cache_clear()
    A._step_pld.cache_clear()
    A._opacus_step_rdp.cache_clear()


@pytest.mark.parametrize("memo", ["cold", "warm"])
@pytest.mark.parametrize("accountant", ["rdp", "pld"])
def test_epsilon_of_30_rounds(benchmark, accountant, memo):
    """ε of a site's whole history, as its ledger counts it every round. ``cold``: the first count of this (q, σ)
    (one step's RDP curve / PLD computed); ``warm``: every later round (the curve read from the memo)."""
    event = A.compose([A.dp_sgd_event(1.0, 16 / 228, 15)] * 30)  # Cleveland: 228 patients, 1 epoch per round
    benchmark.extra_info.update({"accountant": accountant, "memo": memo,
                                 "epsilon": A._epsilon(event, 1e-5, accountant)})
    setup = _forget_step_curves if memo == "cold" else None
    benchmark.pedantic(A._epsilon, args=(event, 1e-5, accountant), setup=setup, rounds=5)


@pytest.mark.parametrize("memo", ["cold", "warm"])
def test_opacus_epsilon_of_30_rounds(benchmark, memo):
    """Opacus's RDP ε of the same history (recorded beside the ledger's every round)."""
    history = [(1.0, 16 / 228, 15 * 30)]
    benchmark.extra_info.update({"memo": memo, "epsilon": A.opacus_rdp_epsilon(history, 1e-5)})
    setup = _forget_step_curves if memo == "cold" else None
    benchmark.pedantic(A.opacus_rdp_epsilon, args=(history, 1e-5), setup=setup, rounds=5)


def test_calibration_repeated(benchmark):
    """A calibration asked again (the report's guarantee recalibrates what the run calibrated)."""
    def calibrate() -> float:
        return A.calibrate_noise_multiplier(4.0, 1e-5, lambda s: A.dp_sgd_event(s, 16 / 228, 14 * 20))

    benchmark.extra_info["sigma"] = calibrate()
    benchmark(calibrate)


def test_ledger_charge_after_30_rounds(benchmark, tmp_path):
    ledger = PrivacyLedger(tmp_path / "ledger.sqlite", "Cleveland")
    event = A.dp_sgd_event(1.0, 16 / 228, 15)
    for r in range(30):
        ledger.charge(r, event, 1e-5, protocol="bench", spec_hash="0", mechanism="dp-sgd")
    rounds = iter(range(30, 10_000))
    benchmark(lambda: ledger.charge(next(rounds), event, 1e-5, protocol="bench", spec_hash="0", mechanism="dp-sgd"))
