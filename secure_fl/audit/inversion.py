"""Gradient inversion of one site's update: "Inverting Gradients" (Geiping, Bauermeister, Dröge,
Moeller, NeurIPS 2020).

The attacker holds the global model the site started from and the update it sent. For one local
step of plain SGD on a batch, the update is ``-lr * weight * grad`` (secure-fl scales by the
example count), so its direction is the batch gradient. The attack optimises dummy images ``x'``
so that the gradient they produce points the same way (Sec. 4, eq. 4):

    min_x'  1 - <grad L(x', y), g> / (|grad L(x', y)| |g|)  +  alpha * TV(x')

with Adam on signed gradients of ``x'`` and a step decay at 3/8, 5/8, 7/8 of the iterations, as
in the authors' code. Labels are given to the attacker (assumption stated in every result: for a
batch of distinct labels they can be read from the last layer's gradient, Zhao et al. 2020 iDLG).

Scale and sign are irrelevant to the cosine; only the direction is attacked.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..training.flat import load_flat

__all__ = ["InversionConfig", "invert_update", "payload_as_floats", "total_variation"]


@dataclass(frozen=True)
class InversionConfig:
    iterations: int = 300
    lr: float = 0.1
    tv_weight: float = 1e-2
    restarts: int = 1
    budget_seconds: float | None = None  # stops early (all restarts together) when exceeded

    def __post_init__(self) -> None:
        if self.iterations < 1:
            raise ValueError(f"InversionConfig.iterations must be >= 1, found {self.iterations}")
        if self.restarts < 1:
            raise ValueError(f"InversionConfig.restarts must be >= 1, found {self.restarts}")
        if not self.lr > 0:
            raise ValueError(f"InversionConfig.lr must be > 0, found {self.lr}")


def total_variation(x: torch.Tensor) -> torch.Tensor:
    """Anisotropic total variation (mean absolute difference of neighbouring pixels)."""
    return (x[..., 1:, :] - x[..., :-1, :]).abs().mean() + (x[..., :, 1:] - x[..., :, :-1]).abs().mean()


def payload_as_floats(payloads: Sequence[bytes], dim: int, skip: int = 0) -> np.ndarray:
    """What an attacker makes of bytes it cannot decrypt or unmask: read them as float32 anyway.

    ``payloads`` are concatenated, ``skip`` leading bytes dropped (the plain wire format's weight),
    and the first ``dim`` float32 values kept (zero-padded if short); NaN/inf become 0 and the rest
    is clipped to +-1e6 so that the cosine stays defined.
    """
    raw = b"".join(payloads)[skip:]
    raw = raw[: 4 * (len(raw) // 4)]
    with np.errstate(invalid="ignore", over="ignore"):
        vals = np.frombuffer(raw, dtype="<f4").astype(np.float64)[:dim]
    out = np.zeros(dim)
    out[: len(vals)] = vals
    out[~np.isfinite(out)] = 0.0
    return np.clip(out, -1e6, 1e6)


def _grads(model: nn.Module, loss_fn: nn.Module, x: torch.Tensor, y: torch.Tensor) -> list[torch.Tensor]:
    params = [p for p in model.parameters() if p.requires_grad]
    return list(torch.autograd.grad(loss_fn(model(x), y), params, create_graph=True))


def invert_update(
    model: nn.Module,
    weights: np.ndarray,
    update: np.ndarray,
    labels: torch.Tensor,
    image_shape: tuple[int, ...],
    loss_fn: nn.Module,
    cfg: InversionConfig,
    seed: int,
) -> tuple[np.ndarray, dict[str, float]]:
    """Reconstruct ``len(labels)`` images from one update.

    ``weights``: the global model the site started from (flat); ``update``: what the attacker
    takes to be the site's delta (flat, any scale). Returns images [B, *image_shape] from the
    restart with the lowest final loss, and facts about the run (iterations done, loss, seconds).
    """
    if update.shape != weights.shape:
        raise ValueError(f"invert_update: update has {update.shape[0]} values, the model {weights.shape[0]}")
    load_flat(model, weights)
    model.eval()  # no dropout/BatchNorm here; eval keeps the forward deterministic
    params = [p for p in model.parameters() if p.requires_grad]
    target = torch.as_tensor(-update, dtype=torch.float32)  # a descent step points against the gradient
    chunks, i = [], 0
    for p in params:
        chunks.append(target[i : i + p.numel()].view_as(p))
        i += p.numel()
    t_norm = float(torch.sqrt(sum((c * c).sum() for c in chunks)))
    gen = torch.Generator().manual_seed(seed)
    t0 = time.perf_counter()
    best: tuple[float, torch.Tensor] | None = None
    done = 0
    for _ in range(cfg.restarts):
        x = torch.randn((len(labels), *image_shape), generator=gen).requires_grad_(True)
        opt = torch.optim.Adam([x], lr=cfg.lr)
        steps = [int(cfg.iterations * f) for f in (3 / 8, 5 / 8, 7 / 8)]
        sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=steps, gamma=0.1)
        loss_val = float("inf")
        for _ in range(cfg.iterations):
            opt.zero_grad()
            g = _grads(model, loss_fn, x, labels)
            dot = sum((a * b).sum() for a, b in zip(g, chunks))
            g_norm = torch.sqrt(sum((a * a).sum() for a in g))
            rec = 1 - dot / (g_norm * t_norm + 1e-12)
            loss = rec + cfg.tv_weight * total_variation(x)
            (gx,) = torch.autograd.grad(loss, [x])
            x.grad = gx.sign()
            opt.step()
            sched.step()
            loss_val = float(rec.detach())
            done += 1
            if cfg.budget_seconds is not None and time.perf_counter() - t0 > cfg.budget_seconds:
                break
        if best is None or loss_val < best[0]:
            best = (loss_val, x.detach().clone())
        if cfg.budget_seconds is not None and time.perf_counter() - t0 > cfg.budget_seconds:
            break
    assert best is not None  # at least one restart ran
    facts = {"iterations_done": float(done), "cosine_loss": best[0], "seconds": time.perf_counter() - t0}
    return best[1].numpy(), facts
