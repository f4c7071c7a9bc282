"""The one-run audit end to end: canaries in one site's data, one federated run, ε lower bound.

Setting (stated in every result): task synthetic-tabular (a logistic model on n_features
Gaussian features), m canaries = Gaussian points with random labels, each put into site 1's
training data with probability 1/2 (auditor's coin, seeded); one federated run of the protocol;
score = the canary's loss under the initial global model minus its loss under the final released
model (the attacker sees both); k+ / k- guesses fixed in advance (Steinke et al. 2023, Sec. 3).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import SecureFLError
from ..run.experiment import parse_experiment
from ..run.federation import Federation
from ..tasks.registry import build_task
from ..training.flat import load_flat
from .epsilon import epsilon_lower_bound, guesses
from .membership import per_example_loss

__all__ = ["epsilon_audit"]


def epsilon_audit(
    protocol: str, run_dir: Path, *, target_epsilon: float | None = None, override: tuple[str, float] | None = None,
    m: int = 200, k: int = 20, rounds: int = 5, n_features: int = 400, n_per_site: int = 100, n_sites: int = 3,
    local_epochs: int = 2, batch_size: int = 16, lr: float = 0.5, seed: int = 0, confidence: float = 0.95,
    canary_scale: float = 3.0,
) -> dict[str, Any]:
    """One run of ``protocol`` with m canaries; returns the empirical ε lower bound beside the accountant's ε.

    ``target_epsilon`` sets ``privacy.target_epsilon``; ``override`` sets another dotted key (e.g.
    ``("privacy.noise_multiplier", 8.0)`` for a protocol that fixes σ). Fewer sites than the protocol's
    ``privacy.min_sites`` are raised to it (distributed DP never opens a sum of fewer).
    """
    if 2 * k > m:
        raise SecureFLError(f"epsilon_audit: 2k = {2 * k} guesses exceed m = {m} canaries")
    if target_epsilon is not None and override is not None:
        raise SecureFLError("epsilon_audit: give target_epsilon or override, not both")
    if target_epsilon is not None:
        override = ("privacy.target_epsilon", float(target_epsilon))
    raw: dict[str, Any] = {
        "name": "epsilon-audit", "protocols": [protocol], "seeds": [seed], "rounds": rounds,
        "task": {"name": "synthetic-tabular", "n_sites": n_sites, "n_per_site": n_per_site, "n_features": n_features,
                 "seed": seed},
        "training": {"local_epochs": local_epochs, "batch_size": batch_size, "lr": lr},
    }
    if override is not None:
        raw["sweep"] = {override[0]: [float(override[1])]}
    exp = parse_experiment(raw, f"epsilon audit of {protocol}")
    variant = exp.variants[0]
    if override is not None and not variant.overrides:
        raise SecureFLError(f"protocol {protocol!r} has no [privacy] table; run it without {override[0]}")
    privacy = variant.spec.raw.get("privacy") if variant.spec is not None else None
    min_sites = int(privacy.get("min_sites", 0)) if isinstance(privacy, dict) else 0
    if n_sites < min_sites:
        raw["task"]["n_sites"] = n_sites = min_sites
        exp = parse_experiment(raw, f"epsilon audit of {protocol}")
        variant = exp.variants[0]
    task = build_task(exp.task_name, exp.task_params, "epsilon audit [task]")
    rng = np.random.default_rng([seed, 0xCA7A])
    x_c = torch.as_tensor(canary_scale * rng.normal(size=(m, n_features)), dtype=task.sites[0].x_train.dtype)
    y_c = torch.as_tensor(rng.integers(0, 2, size=m), dtype=torch.int64)
    included = rng.random(m) < 0.5
    site = task.sites[0]
    site.x_train = torch.cat([site.x_train, x_c[torch.as_tensor(included)]])
    site.y_train = torch.cat([site.y_train, y_c[torch.as_tensor(included)]])
    fed = Federation(exp, task, variant, seed, run_dir)
    model = task.make_model(seed)
    load_flat(model, fed.weights)
    before = per_example_loss(model, x_c, y_c)
    aborted = 0
    for r in range(rounds):
        aborted += not fed.round(r)["applied"]
    load_flat(model, fed.weights)
    scores = before - per_example_loss(model, x_c, y_c)
    r_, v = guesses(scores, included, k, k)
    spent = fed.privacy.site(site.name).spent()
    delta = float(spent.get("delta", 0.0)) if spent else 0.0
    eps_lb = epsilon_lower_bound(m, r_, v, delta, confidence)
    return {
        "protocol": variant.label, "canaries": m, "included": int(included.sum()), "guesses": r_, "correct": v,
        "confidence": confidence, "delta": delta, "epsilon_lower_bound": eps_lb,
        "epsilon_accountant": float(spent["epsilon"]) if spent else float("inf"),
        "rounds": rounds, "aborted_rounds": aborted, "site": site.name,
        "setting": f"synthetic-tabular logreg, {n_features} features, {n_sites} sites x {n_per_site}; canaries: "
                   f"Gaussian points (x{canary_scale:g} the features' scale) with random labels in {site.name}; "
                   f"score = loss drop from the initial to the released model",
    }
