"""The task catalogue: name -> builder. Unknown names fail with the list of known ones.

Entries are import paths, resolved on use, so listing tasks imports no data package.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .._lazy import resolve
from ..errors import SpecError
from .base import Task
from .plugins import is_import_path, load_callable
from .sites import check_unique_names

__all__ = ["TASKS", "build_task"]

TASKS: dict[str, str] = {
    "heart-disease": "secure_fl.tasks.heart:build_heart",
    "heart-failure": "secure_fl.tasks.heart_failure:build_heart_failure",
    "covid-testing": "secure_fl.tasks.covid_testing:build_covid_testing",
    "golub-genes": "secure_fl.tasks.genes:build_golub_genes",
    "bladder-batch": "secure_fl.tasks.bladderbatch:build_bladder_batch",
    "faces": "secure_fl.tasks.faces:build_faces",
    "faces-pretrained": "secure_fl.tasks.pretrained:build_faces_pretrained",
    "image-folder": "secure_fl.tasks.local_data:build_image_folder",
    "csv": "secure_fl.tasks.local_data:build_csv",
    "synthetic-tabular": "secure_fl.tasks.synthetic:build_synthetic_tabular",
    "synthetic-faces": "secure_fl.tasks.synthetic:build_synthetic_faces",
    "synthetic-genes": "secure_fl.tasks.genes:build_synthetic_genes",
    "mnist": "secure_fl.tasks.mnist:build_mnist",
}


def build_task(name: str, params: Mapping[str, Any], where: str = "task") -> Task:
    """A catalogue task, or the user's own ``"module:build"`` (interface in tasks/plugins.py)."""
    if is_import_path(name):
        task = load_callable(name, f"{where}.name")(params, where)
        if not isinstance(task, Task):
            raise SpecError(f"{where}.name: {name!r} returned {type(task).__name__}, not a secure_fl Task")
    else:
        try:
            target = TASKS[name]
        except KeyError:
            raise SpecError(f"{where}: unknown task {name!r}; known tasks are {sorted(TASKS)} "
                            "or your own \"module:function\"") from None
        task = resolve(target)(params, where)
    check_unique_names([s.name for s in task.sites], f"{where} (task {name!r})")
    return task
