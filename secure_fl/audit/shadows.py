"""Shadow models for LiRA (:mod:`.lira`), trained by the tool the way the target was trained.

Population = every site's training and test examples (the candidates). The target (the released
global model of a real run) trained on the sites' training examples. Shadow s draws a seeded
fair coin per candidate and runs the same protocol variant (same secure sum, same DP layer and
parameters, same rounds and local training, through the project's own parties) on the federation
where each site holds its candidates whose coin came up "in". The coins and the shadow runs' seeds
are derived from the audit seed; DP noise comes from wherever the protocol draws it.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import SecureFLError
from ..run.experiment import Experiment, Variant
from ..run.federation import Federation
from ..tasks.base import Task
from ..tasks.registry import build_task
from ..training.flat import load_flat
from .lira import logit_confidence

__all__ = ["Population", "population", "train_shadows", "MIN_SHADOWS"]

#: leave-one-out needs 3; fewer than this many shadows are never reported
MIN_SHADOWS = 4


@dataclass
class Population:
    x: torch.Tensor
    y: torch.Tensor
    site: np.ndarray  # index of the site that holds each candidate
    target_in: np.ndarray  # True where the target trained on the candidate (a site's training example)


def population(task: Task) -> Population:
    """Candidates: each site's training examples, then its test examples."""
    xs, ys, site, member = [], [], [], []
    for i, s in enumerate(task.sites):
        for x, y, is_in in ((s.x_train, s.y_train, True), (s.x_test, s.y_test, False)):
            xs.append(x)
            ys.append(y)
            site.append(np.full(len(y), i))
            member.append(np.full(len(y), is_in))
    return Population(torch.cat(xs), torch.cat(ys), np.concatenate(site), np.concatenate(member))


def _shadow_task(exp: Experiment, pop: Population, in_mask: np.ndarray) -> Task:
    task = build_task(exp.task_name, exp.task_params, f"{exp.source} [task] (shadow)")
    if len(task.sites) != int(pop.site.max()) + 1:
        raise SecureFLError(f"{exp.source}: the task has {len(task.sites)} sites, the population {pop.site.max() + 1}")
    for i, s in enumerate(task.sites):
        sel, out = torch.as_tensor((pop.site == i) & in_mask), torch.as_tensor((pop.site == i) & ~in_mask)
        s.x_train, s.y_train, s.x_test, s.y_test = pop.x[sel], pop.y[sel], pop.x[out], pop.y[out]
    return task


def train_shadows(
    exp: Experiment, variant: Variant, seed: int, pop: Population, n_shadows: int,
    budget_seconds: float | None = None,
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Train up to ``n_shadows`` shadows of ``variant``; returns phi [S, N], in-mask [S, N] and facts.

    ``budget_seconds`` stops starting new shadows once exceeded (at least :data:`MIN_SHADOWS` are trained).
    """
    if n_shadows < MIN_SHADOWS:
        raise SecureFLError(f"--shadows {n_shadows}: LiRA needs at least {MIN_SHADOWS} shadow models")
    t0 = time.perf_counter()
    phis, masks, aborted = [], [], 0
    for s in range(n_shadows):
        if s >= MIN_SHADOWS and budget_seconds is not None and time.perf_counter() - t0 > budget_seconds:
            break
        in_mask = np.random.default_rng([seed, 0x11EA, s]).random(len(pop.y)) < 0.5
        task = _shadow_task(exp, pop, in_mask)
        with tempfile.TemporaryDirectory(prefix="secure-fl-shadow-") as tmp:
            fed = Federation(exp, task, variant, 1000 + 97 * seed + s, Path(tmp))
            for r in range(exp.rounds):
                aborted += not fed.round(r)["applied"]
        model = task.make_model(seed)
        load_flat(model, fed.weights)
        phis.append(logit_confidence(model, pop.x, pop.y))
        masks.append(in_mask)
    facts = {"shadows": len(phis), "shadow_rounds": exp.rounds, "shadow_aborted_rounds": aborted,
             "shadow_seconds": time.perf_counter() - t0}
    return np.stack(phis), np.stack(masks), facts
