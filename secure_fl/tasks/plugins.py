"""Tasks and models from the user's own code, named ``"module:function"`` in the experiment TOML.

``module`` is an importable module (``my_hospital.tasks``) or a Python file
(``risk.py``; in an experiment TOML relative to the TOML's folder, see :mod:`secure_fl.tasks.paths`).
Interfaces:

- a **task**: ``[task] name = "module:build"`` with
  ``build(params: Mapping[str, Any], where: str) -> secure_fl.tasks.base.Task``; ``params`` is the
  rest of the ``[task]`` table, ``where`` names it for error messages. The returned task lists
  its sites (``SiteData`` with tensors) and implements ``make_model(seed)``; implement
  ``model_spec()`` too so ``model.json`` can rebuild the model for ``secure-fl predict``.
- a **model** for the ``csv`` task: ``model = "module:make_model"`` plus optional
  ``model_args = {...}``, with ``make_model(n_features: int, num_classes: int, **model_args) ->
  torch.nn.Module`` returning class logits ``[batch, num_classes]``. No BatchNorm if a protocol
  uses DP-SGD (Opacus needs per-example gradients).
- a **model** for the ``image-folder`` task: ``model = "module:make_model"`` with
  ``make_model(num_classes: int, in_channels: int, image_size: list[int], **model_args)``.

Worked example: ``examples/own_code/``.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path
from typing import Any

from ..errors import SpecError

__all__ = ["is_import_path", "load_callable"]


def is_import_path(name: str) -> bool:
    return ":" in name and not name.startswith(":") and not name.endswith(":")


def load_callable(target: str, where: str) -> Any:
    """The callable at ``"module:attr"`` or ``"path/file.py:attr"``, with errors naming ``where``."""
    module_name, _, attr = target.rpartition(":")
    if module_name.endswith(".py"):
        path = Path(module_name).expanduser()
        if not path.exists():
            raise SpecError(f"{where}: {target!r}: file {path} not found (in an experiment TOML a relative path "
                            f"starts at the TOML's folder; here, outside one, at the working folder {Path.cwd()})")
        key = f"secure_fl_user_{abs(hash(str(path.resolve())))}"
        spec = importlib.util.spec_from_file_location(key, path)
        if spec is None or spec.loader is None:
            raise SpecError(f"{where}: {target!r}: cannot import {path}")
        module = importlib.util.module_from_spec(spec)
        sys.modules[key] = module
        spec.loader.exec_module(module)
    else:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            raise SpecError(f"{where}: {target!r}: no module {exc.name!r} (install it, or give a file path "
                            f"like path/to/file.py:{attr})") from exc
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise SpecError(f"{where}: {target!r}: {module_name} has no callable {attr!r}")
    return fn
