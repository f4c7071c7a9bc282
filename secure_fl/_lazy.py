"""Catalogues name their entries by import path ("package.module:attribute"), resolved on use,
so listing a catalogue imports no heavy dependency (TenSEAL, data packages)."""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["resolve"]


def resolve(target: str) -> Any:
    """The object at ``"package.module:attribute"``."""
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)
