"""Gradient inversion sees photographs in a plain update and nothing in a masked one (issue 15).

The attacker gets only what the carrier's tap hands it (payload bytes) and the public start model.
Smooth synthetic "photographs" keep the attack fast enough for the suite.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from secure_fl.audit.inversion import InversionConfig, payload_as_floats
from secure_fl.audit.metrics import match_images, psnr, ssim
from secure_fl.audit.scenario import attack_variant, inversion_audit
from secure_fl.run.experiment import parse_experiment
from secure_fl.tasks.faces import build_faces_from_arrays, faces_params

SIZE = 12


def _smooth_faces(seed: int = 0) -> object:
    rng = np.random.default_rng(seed)
    n_ids, per_id = 8, 4
    t = np.kron(rng.random((n_ids, SIZE // 4, SIZE // 4)), np.ones((4, 4)))
    x = np.repeat(t, per_id, axis=0) + rng.normal(scale=0.02, size=(n_ids * per_id, SIZE, SIZE))
    ids = np.repeat(np.arange(n_ids), per_id)
    p = faces_params({"n_sites": 4, "partition": "iid", "image_size": [SIZE, SIZE], "heldout_identities": 0,
                      "test_per_identity": 1, "embedding_dim": 8}, "test", n_ids, per_id)
    task = build_faces_from_arrays("smooth-faces", x[:, None].astype(np.float32), ids, p)

    def small_model(seed: int) -> nn.Module:  # a small MLP keeps the attack within a few seconds
        torch.manual_seed(seed)
        return nn.Sequential(nn.Flatten(), nn.Linear(SIZE * SIZE, 32), nn.Sigmoid(), nn.Linear(32, task.num_classes))

    task.make_model = small_model  # type: ignore[method-assign]
    return task


def _attack(protocol: str, tmp_path: Path) -> float:
    torch.manual_seed(0)
    exp = parse_experiment({"name": "inv", "protocols": [protocol], "task": {"name": "synthetic-faces"}})
    cfg = InversionConfig(iterations=60, lr=0.1, tv_weight=1e-3)
    results, originals = inversion_audit(exp, exp.variants[0], 0, tmp_path / protocol, 2, cfg, task=_smooth_faces(),
                                         attack_release=False)
    (res,) = results
    assert res.target == "site payload"
    return float(np.mean(res.psnr)) - float(np.mean(res.baseline_psnr))


def test_inversion_reconstructs_from_plain_payload_but_not_from_masked_bytes(tmp_path: Path) -> None:
    plain = _attack("plain-fedavg", tmp_path)
    masked = _attack("secagg-plus-fedavg", tmp_path)
    # the gain over the best constant image: large from the plain bytes, ~0 from masked bytes
    assert plain > 4.0, f"plain-fedavg: reconstruction only {plain:.1f} dB above the mean-image baseline"
    assert masked < 2.0, f"secagg+: {masked:.1f} dB above baseline from masked bytes"
    assert plain > masked + 3.0


def test_payload_as_floats_reads_any_bytes_without_nan() -> None:
    raw = np.array([1.0, np.nan, np.inf, 2e9], dtype="<f4").tobytes() + b"\x01"
    out = payload_as_floats([raw], 6)
    assert out.tolist() == [1.0, 0.0, 0.0, 1e6, 0.0, 0.0]


def test_image_metrics_known_values() -> None:
    rng = np.random.default_rng(0)
    a = rng.random((16, 16))
    assert ssim(a, a) == pytest.approx(1.0)
    assert psnr(a, a) == float("inf")
    b = np.zeros((16, 16))
    b[0, 0] = 1.0
    assert psnr(np.zeros((16, 16)), b) == pytest.approx(10 * np.log10(256))
    assert ssim(rng.random((16, 16)), a) < 0.3
    c = rng.random((16, 16))
    order, ps, _ = match_images(np.stack([c * 2 + 1, 3 * a]), np.stack([a, c]))  # the affine fit ignores contrast
    assert order == [1, 0] and min(ps) > 100


def test_attack_setting_puts_every_photograph_in_the_distributed_dp_step() -> None:
    exp = parse_experiment({"name": "inv", "protocols": ["dp-distributed-ckks", "plain-fedavg"],
                            "task": {"name": "synthetic-faces"}})
    ddp, plain = exp.variants
    assert ddp.spec.raw["privacy"]["sample_rate"] < 1
    patched = attack_variant(ddp)
    assert patched.spec.raw["privacy"]["sample_rate"] == 1.0 and patched.label == ddp.label
    assert patched.overrides["privacy.sample_rate"] == 1.0 and ddp.spec.raw["privacy"]["sample_rate"] < 1
    assert attack_variant(plain) is plain
