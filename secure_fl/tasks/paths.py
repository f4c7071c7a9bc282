"""Relative paths in an experiment's ``[task]`` table start at the experiment file's folder.

As for protocol files (``protocols = ["my-spec.toml"]``), a relative path written in an experiment
TOML means the same file whichever folder the command runs in. Resolved here, before any task
builder sees its parameters, for every task (the catalogue's and the user's own):

- ``paths = [...]`` and, in each ``[[task.sites]]``, ``data``, ``train`` and ``test``;
- a Python file in ``name = "file.py:build"`` or ``model = "file.py:make_model"``.

Absolute paths and ``~`` are kept as given (``~`` expanded). Values of the wrong type are left as
they are, so the task's own check names the key. A task from the user's code that reads other
path keys of its own receives them as written (relative to the working folder).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .plugins import is_import_path

__all__ = ["SITE_PATH_KEYS", "resolve_task_paths"]

SITE_PATH_KEYS = ("data", "train", "test")


def _file(value: Any, base_dir: Path) -> Any:
    if not isinstance(value, str) or not value:
        return value
    p = Path(value).expanduser()
    return str(p if p.is_absolute() else base_dir / p)


def _code(target: Any, base_dir: Path) -> Any:
    """``"file.py:fn"`` with the file resolved; an importable ``"package.module:fn"`` as it is."""
    if not isinstance(target, str) or not is_import_path(target):
        return target
    module, _, attr = target.rpartition(":")
    return f"{_file(module, base_dir)}:{attr}" if module.endswith(".py") else target


def resolve_task_paths(name: str, params: Mapping[str, Any], base_dir: Path) -> tuple[str, dict[str, Any]]:
    """``(name, params)`` with the relative paths above taken from ``base_dir`` (a copy; the input is kept)."""
    base_dir = Path(base_dir)
    out = copy.deepcopy(dict(params))
    if isinstance(out.get("paths"), list):
        out["paths"] = [_file(p, base_dir) for p in out["paths"]]
    if isinstance(out.get("sites"), list):
        for site in out["sites"]:
            if isinstance(site, dict):
                for key in SITE_PATH_KEYS:
                    if key in site:
                        site[key] = _file(site[key], base_dir)
    if "model" in out:
        out["model"] = _code(out["model"], base_dir)
    return _code(name, base_dir), out
