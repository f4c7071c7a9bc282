"""The deployable model of a run: ``model.pt`` (a torch ``state_dict``) beside ``model.json``.

``model.json`` (format ``secure-fl-model/1``) says how to rebuild and feed the model:

- ``architecture``: ``{"class": "package.module:Class", "kwargs": {...}}``; ``Class(**kwargs)``
  is the module whose ``state_dict`` is in ``model.pt``;
- ``task``, ``classes`` (class names in output order), ``positive`` (binary tasks), ``features``;
- ``preprocessing``: the task's column specs and the statistics every site shares (with
  ``standardise = "federated"`` the pooled mean and sd), or ``null``; never a single site's own;
- ``sites``: the sites that trained it; ``per_site``: true when ``model.pt`` holds one
  ``state_dict`` per site (the ``local-only`` reference), keyed by site name.

A site's own statistics (imputation values; with ``standardise = "site"`` its feature means and
standard deviations; see :mod:`secure_fl.tasks.tabular`) are written to
``sites/<site>/preprocessing.json`` (format ``secure-fl-site-preprocessing/1``), the simulated
site's own folder of the run, beside its privacy ledger: ``model.json`` can be handed to every
site without telling one site another's statistics.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import DataError
from .base import Task
from .plugins import load_callable

__all__ = [
    "FORMAT", "SITE_FORMAT", "model_card", "save_model", "load_model", "load_site_stats", "save_site_stats",
    "site_stats_path",
]

FORMAT = "secure-fl-model/1"
SITE_FORMAT = "secure-fl-site-preprocessing/1"


def site_stats_path(run_dir: Path, site: str) -> Path:
    return run_dir / "sites" / site / "preprocessing.json"


def _shared(pre: Any) -> Any:
    """The preprocessing without any per-site statistic."""
    return {k: v for k, v in pre.items() if k != "sites"} if isinstance(pre, Mapping) else pre


def model_card(task: Task, model: nn.Module, per_site: bool = False) -> dict[str, Any]:
    spec = task.model_spec()
    info = task.info
    classes = info.get("labels") or info.get("classes") or [str(i) for i in range(task.num_classes)]
    return {
        "format": FORMAT,
        "task": task.name,
        "architecture": {"class": spec[0], "kwargs": spec[1]} if spec else
        {"class": f"{type(model).__module__}:{type(model).__qualname__}", "kwargs": None},
        "classes": [str(c) for c in classes],  # type: ignore[union-attr]
        "positive": info.get("positive"),
        "features": info.get("features"),
        "preprocessing": _shared(info.get("preprocessing")),
        "sites": [s.name for s in task.sites],
        "per_site": per_site,
    }


def save_model(task: Task, models: nn.Module | Mapping[str, nn.Module], run_dir: Path) -> None:
    """Write ``model.pt`` and ``model.json``; ``models`` is one model, or one per site (local-only)."""
    if isinstance(models, nn.Module):
        torch.save(models.state_dict(), run_dir / "model.pt")
        card = model_card(task, models)
    else:
        torch.save({name: m.state_dict() for name, m in models.items()}, run_dir / "model.pt")
        card = model_card(task, next(iter(models.values())), per_site=True)
    (run_dir / "model.json").write_text(json.dumps(card, indent=2) + "\n")
    save_site_stats(task, run_dir)


def save_site_stats(task: Task, run_dir: Path, only: str | None = None) -> list[Path]:
    """Write each site's own statistics (or only site ``only``'s) to ``sites/<site>/preprocessing.json``.

    A deployed site calls this with its own name and its own folder: its statistics never leave it.
    """
    pre = task.info.get("preprocessing")
    written = []
    for site, stats in (pre.get("sites") or {}).items() if isinstance(pre, Mapping) else ():
        if only is not None and site != only:
            continue
        path = site_stats_path(run_dir, site)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"format": SITE_FORMAT, "site": site, **stats}, indent=2) + "\n")
        written.append(path)
    return written


def load_site_stats(run_dir: Path, site: str, path: Path | None = None) -> dict[str, Any]:
    """One site's own preprocessing statistics from ``sites/<site>/preprocessing.json`` (or ``path``)."""
    path = site_stats_path(run_dir, site) if path is None else path
    if not path.exists():
        have = sorted(p.parent.name for p in (run_dir / "sites").glob("*/preprocessing.json"))
        raise DataError(f"{path}: no preprocessing statistics of site {site!r} here (sites with their own: {have})")
    data = json.loads(path.read_text())
    if data.get("format") != SITE_FORMAT:
        raise DataError(f"{path}: format {data.get('format')!r}, expected {SITE_FORMAT!r}")
    return {k: v for k, v in data.items() if k not in ("format", "site")}


def load_model(run_dir: Path, site: str | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """The model of a run folder, ready for ``eval()``, and its ``model.json``."""
    card_path, weights = run_dir / "model.json", run_dir / "model.pt"
    if not card_path.exists() or not weights.exists():
        raise DataError(f"{run_dir}: no model.json and model.pt here (is it a run folder, e.g. runs/<experiment>/"
                        "<protocol>/seed0, of this version?)")
    card = json.loads(card_path.read_text())
    if card.get("format") != FORMAT:
        raise DataError(f"{card_path}: format {card.get('format')!r}, expected {FORMAT!r}")
    arch = card["architecture"]
    if arch.get("kwargs") is None:
        raise DataError(f"{card_path}: architecture {arch['class']} cannot be rebuilt (the task gives no model_spec)")
    model: nn.Module = load_callable(arch["class"], f"{card_path} architecture")(**arch["kwargs"])
    state = torch.load(weights, map_location="cpu", weights_only=True)
    if card.get("per_site"):
        if site not in state:
            raise DataError(f"{weights}: one model per site; choose one with --site (sites: {sorted(state)})")
        state = state[site]
    model.load_state_dict(state)
    model.eval()
    return model, card
