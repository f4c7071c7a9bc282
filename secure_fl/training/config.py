"""Local-training configuration and the run plan shared with the privacy layer."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..speccheck import check_keys, get, get_table, in_range, one_of
from .augment import AugmentConfig

__all__ = ["TrainingConfig", "RunPlan"]


@dataclass(frozen=True)
class TrainingConfig:
    """How a site trains the global model on its data each round.

    ``local_steps`` (if set) overrides ``local_epochs``: the site takes exactly that many
    minibatch steps, cycling through its data. ``augment`` (image tasks): augmentations drawn
    each step, with ``multiplicity`` copies per example (see :mod:`secure_fl.training.augment`).
    """

    local_epochs: int = 1
    local_steps: int | None = None
    batch_size: int = 32
    lr: float = 0.05
    optimizer: str = "sgd"
    momentum: float = 0.0
    weight_decay: float = 0.0
    augment: AugmentConfig | None = None

    @classmethod
    def from_table(cls, t: Mapping[str, Any], where: str) -> "TrainingConfig":
        check_keys(t, ["local_epochs", "local_steps", "batch_size", "lr", "optimizer", "momentum", "weight_decay",
                       "augment"], where)
        augment = get_table(t, "augment", where, None)
        return cls(
            local_epochs=get(t, "local_epochs", int, where, 1, in_range(1)),
            local_steps=get(t, "local_steps", int, where, None, in_range(1)),
            batch_size=get(t, "batch_size", int, where, 32, in_range(1)),
            lr=get(t, "lr", float, where, 0.05, in_range(0, lo_open=True)),
            optimizer=get(t, "optimizer", str, where, "sgd", one_of("sgd", "adam")),
            momentum=get(t, "momentum", float, where, 0.0, in_range(0, 1, hi_open=True)),
            weight_decay=get(t, "weight_decay", float, where, 0.0, in_range(0)),
            augment=None if augment is None else AugmentConfig.from_table(augment, f"{where}.augment"),
        )


@dataclass(frozen=True)
class RunPlan:
    """What a run will do, known before round 0 (the privacy layer calibrates noise from it)."""

    rounds: int
    fraction: float
    training: TrainingConfig
