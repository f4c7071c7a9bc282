"""What a run ran on: package versions, git commit, platform, and a digest of each site's data.

Written into ``resolved.json`` so two runs can be told apart (or shown to be the same) later.
Nothing here fails a run: a missing package is recorded as ``null``, a folder that is not a git
checkout (an installed wheel) as ``"commit": null``.
"""

from __future__ import annotations

import hashlib
import importlib.metadata as md
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

from ..tasks.base import Task

__all__ = ["PACKAGES", "versions", "git_info", "environment", "data_digests"]

#: distributions whose versions change results or guarantees
PACKAGES = ("secure-fl", "torch", "numpy", "tenseal", "opacus", "dp-accounting", "cryptography", "flwr")


def versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = None
    return out


def git_info(where: Path | None = None) -> dict[str, Any]:
    """Commit and dirty flag of the checkout holding the package (``commit: null`` outside one)."""
    where = where or Path(__file__).resolve().parents[2]
    try:
        commit = subprocess.run(["git", "-C", str(where), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(where), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}
    return {"commit": commit or None, "dirty": bool(dirty)}


def environment() -> dict[str, Any]:
    return {
        "versions": versions(),
        "git": git_info(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "machine": platform.machine(),
        "torch_threads": torch.get_num_threads(),
    }


def _tensor_digest(h: "hashlib._Hash", t: torch.Tensor) -> None:
    if hasattr(t, "update_digest"):  # images kept on disk (tasks/images.py): the same bytes, one image at a time
        t.update_digest(h)
        return
    t = t.detach().cpu().contiguous()
    h.update(f"{t.dtype}{tuple(t.shape)}".encode())
    h.update(t.numpy().tobytes())


def data_digests(task: Task) -> dict[str, dict[str, Any]]:
    """sha256 of each site's train and test tensors (dtype, shape and bytes), with the counts."""
    out = {}
    for s in task.sites:
        h = hashlib.sha256()
        for t in (s.x_train, s.y_train, s.x_test, s.y_test):
            _tensor_digest(h, t)
        out[s.name] = {"sha256": h.hexdigest(), "n_train": s.n_train, "n_test": s.n_test}
    return out
