"""Local training at one site: the global model trained on the site's data, returned as a delta.

Deterministic under a seed: the same global model, data, config and seed give the same delta.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from .augment import average_grad_samples, expand_batch
from .config import TrainingConfig
from .flat import flatten

__all__ = ["LocalResult", "train_local", "make_optimizer"]


@dataclass
class LocalResult:
    delta: np.ndarray  # flat float32, new_local - global
    n_examples: int
    steps: int
    metrics: dict[str, float] = field(default_factory=dict)


def make_optimizer(model: nn.Module, cfg: TrainingConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    raise ValueError(f"unknown optimizer {cfg.optimizer!r}")


def train_local(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    cfg: TrainingConfig,
    loss_fn: nn.Module,
    seed: int,
    hook: Any | None = None,
) -> LocalResult:
    """Train ``model`` in place on (x, y) and return the delta from its starting weights.

    ``hook`` (e.g. Opacus DP-SGD, see :mod:`secure_fl.protocol.pipeline`) may wrap the model,
    optimiser and loader; deltas are read from the original module's parameters, which the
    wrappers share. A model with a ``proximal_step(lr)`` method (e.g. the L1 penalty of
    :class:`secure_fl.tasks.feature_selection.FeatureSelectionNet`) has it applied after every
    optimiser step: it depends on the weights alone, so under DP-SGD it is post-processing.
    ``cfg.augment`` augments every batch (``multiplicity`` K copies per example, drawn from a
    generator seeded by ``seed``); under DP-SGD the K copies' per-sample gradients are averaged
    before clipping, so one example still contributes at most C (:mod:`secure_fl.training.augment`).
    """
    start = flatten(model)
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    loader: Any = DataLoader(TensorDataset(x, y), batch_size=min(cfg.batch_size, len(y)), shuffle=True, generator=gen)
    optimizer = make_optimizer(model, cfg)
    trained: nn.Module = model
    if hook is not None:
        trained, optimizer, loader = hook.wrap(model, optimizer, loader)
    try:
        steps, loss_sum, seen = _train_epochs(model, trained, optimizer, loader, cfg, loss_fn, seed, hook)
    except BaseException:
        # one site's failure costs only that site its round: the hook must leave the (shared) model as it found
        # it, or the next site's wrap fails too (Opacus: "Trying to add hooks twice to the same model")
        if hook is not None:
            abort = getattr(hook, "abort_training", None)
            if abort is not None:
                abort(trained, optimizer)
            else:
                hook.after_training(trained, optimizer, 0)
        raise
    if hook is not None:
        hook.after_training(trained, optimizer, steps)
    delta = flatten(model) - start
    return LocalResult(delta, int(len(y)), steps, {"train_loss": loss_sum / max(seen, 1)})


def _train_epochs(model: nn.Module, trained: nn.Module, optimizer: torch.optim.Optimizer, loader: Any,
                  cfg: TrainingConfig, loss_fn: nn.Module, seed: int, hook: Any | None) -> tuple[int, float, int]:
    """The local epochs (or ``cfg.local_steps`` steps): (steps taken, summed loss, examples seen).

    ``model`` is the caller's module (its ``proximal_step`` and parameters, which a hook's wrapper
    ``trained`` shares); ``seed`` draws the augmentations.
    """
    trained.train()
    proximal = getattr(model, "proximal_step", None)
    augment = cfg.augment
    aug_gen = torch.Generator().manual_seed(seed ^ 0xA06) if augment is not None else None
    steps, loss_sum, seen = 0, 0.0, 0
    target_steps = cfg.local_steps if cfg.local_steps is not None else None
    epochs = cfg.local_epochs if target_steps is None else 10**9
    for _ in range(epochs):
        for xb, yb in loader:
            if len(yb) == 0:
                # Poisson sampling (DP-SGD) may draw an empty batch. Strict DP-SGD would still take a
                # noise-only step; skipping it releases less, never more, and the accountant charges
                # the planned steps anyway (probability per step (1-q)^n, ~5e-10 for the smallest site here).
                continue
            n_batch = len(yb)
            if augment is not None and aug_gen is not None:
                xb, yb = expand_batch(xb, yb, augment, aug_gen)
            optimizer.zero_grad()
            loss = loss_fn(trained(xb), yb)
            loss.backward()
            if augment is not None and hook is not None:
                average_grad_samples(model.parameters(), augment.multiplicity)  # per example, before clipping
            optimizer.step()
            if proximal is not None:
                proximal(cfg.lr)
            steps += 1
            loss_sum += float(loss.detach()) * n_batch
            seen += n_batch
            if target_steps is not None and steps >= target_steps:
                return steps, loss_sum, seen
    return steps, loss_sum, seen
