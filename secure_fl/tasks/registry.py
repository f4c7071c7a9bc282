"""The task catalogue: name -> builder. Unknown names fail with the list of known ones."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from ..errors import SpecError
from .base import Task

__all__ = ["TASKS", "build_task"]


def _heart(p: Mapping[str, Any], where: str) -> Task:
    from .heart import build_heart

    return build_heart(p, where)


def _faces(p: Mapping[str, Any], where: str) -> Task:
    from .faces import build_faces

    return build_faces(p, where)


def _image_folder(p: Mapping[str, Any], where: str) -> Task:
    from .local_data import build_image_folder

    return build_image_folder(p, where)


def _csv(p: Mapping[str, Any], where: str) -> Task:
    from .local_data import build_csv

    return build_csv(p, where)


def _synthetic_tabular(p: Mapping[str, Any], where: str) -> Task:
    from .synthetic import build_synthetic_tabular

    return build_synthetic_tabular(p, where)


def _synthetic_faces(p: Mapping[str, Any], where: str) -> Task:
    from .synthetic import build_synthetic_faces

    return build_synthetic_faces(p, where)


TASKS: dict[str, Callable[[Mapping[str, Any], str], Task]] = {
    "heart-disease": _heart,
    "faces": _faces,
    "image-folder": _image_folder,
    "csv": _csv,
    "synthetic-tabular": _synthetic_tabular,
    "synthetic-faces": _synthetic_faces,
}


def build_task(name: str, params: Mapping[str, Any], where: str = "task") -> Task:
    try:
        builder = TASKS[name]
    except KeyError:
        raise SpecError(f"{where}: unknown task {name!r}; known tasks are {sorted(TASKS)}") from None
    return builder(params, where)
