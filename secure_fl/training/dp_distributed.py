"""A site's share of one distributed DP-SGD step (patient-level DP under a secure sum).

Each round, every site samples its patients by Poisson sampling with the *same* rate ``q``,
computes per-example gradients of the global model (``torch.func``: ``vmap`` of ``grad``),
clips each to L2 norm ``C``, sums them and adds only its *share* of the Gaussian noise,
N(0, (σC)²/(m−1)) with ``m = min_sites``, so that the sum of any ``k ≥ m`` shares minus one
curious site's own still has variance at least (σC)². The secure sum adds the shares and opens
no sum of fewer than ``m``; over the union of all sites' patients this is one step of DP-SGD
(Abadi et al. 2016) whose noise is distributed
(Kairouz, Liu, Steinke 2021, continuous analogue; see
:func:`secure_fl.privacy.mechanisms.share_std`). The released sum is divided by the
expected batch size ``q · N_total`` (a public, data-independent denominator) and negated;
the server step applies it with its learning rate (``[aggregation].server_lr``).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import nn
from torch.func import functional_call, grad, vmap

from ..privacy.mechanisms import share_std
from ..privacy.noise import NoiseSource
from .dp_sgd import check_dp_compatible

__all__ = ["flat_params", "clipped_gradient_sum", "distributed_share"]

#: examples per vmap chunk (bounds peak memory at chunk × parameters floats)
CHUNK = 256


def flat_params(model: nn.Module) -> np.ndarray:
    """Parameters flattened in ``model.parameters()`` order, float32 (the wire layout of an update)."""
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()]).to(torch.float32).cpu().numpy()


def clipped_gradient_sum(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    clip: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Σ_i clip_C(∇ℓ(x_i, y_i)) over the given examples, flattened; also each example's gradient norm.

    ``loss_fn(output, target)`` is evaluated on one example at a time (batch of 1), so a
    mean-reduced loss gives that example's own gradient.
    """
    if clip <= 0:
        raise ValueError(f"clip must be > 0, found {clip}")
    if len(x) != len(y):
        raise ValueError(f"x has {len(x)} examples but y has {len(y)}")
    names = [name for name, _ in model.named_parameters()]
    params = {name: p.detach() for name, p in model.named_parameters()}
    buffers = {name: b.detach() for name, b in model.named_buffers()}
    dim = sum(p.numel() for p in params.values())
    total = torch.zeros(dim, dtype=torch.float64)
    norms: list[torch.Tensor] = []
    if len(x) == 0:
        return total.numpy(), np.zeros(0)

    def loss_one(p: dict[str, torch.Tensor], xi: torch.Tensor, yi: torch.Tensor) -> torch.Tensor:
        out = functional_call(model, (p, buffers), (xi.unsqueeze(0),))
        return loss_fn(out, yi.unsqueeze(0))

    per_example = vmap(grad(loss_one), in_dims=(None, 0, 0))
    for start in range(0, len(x), CHUNK):
        g = per_example(params, x[start : start + CHUNK], y[start : start + CHUNK])
        flat = torch.cat([g[name].reshape(g[name].shape[0], -1) for name in names], dim=1).to(torch.float64)
        n = flat.norm(dim=1)
        factor = torch.clamp(clip / (n + 1e-12), max=1.0)
        total += (flat * factor[:, None]).sum(dim=0)
        norms.append(n)
    return total.numpy(), torch.cat(norms).numpy()


def distributed_share(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    *,
    sample_rate: float,
    clip: float,
    noise_multiplier: float,
    min_sites: int,
    source: NoiseSource,
) -> tuple[np.ndarray, int]:
    """This site's contribution to one distributed DP-SGD step and its Poisson batch size.

    Returns ``(Σ clipped per-example gradients of the sampled patients + noise share, batch size)``.
    The batch size is *not* sent: the release divides by the expected batch size instead.
    """
    check_dp_compatible(model)
    mask = source.bernoulli(sample_rate, len(x))
    idx = torch.from_numpy(np.flatnonzero(mask))
    total, _ = clipped_gradient_sum(model, x[idx], y[idx], loss_fn, clip)
    total = total + source.normal(share_std(noise_multiplier, clip, min_sites), total.shape[0])
    return total, int(mask.sum())
