"""The registered DP mechanisms: one line each (see the package docstring for how to add one)."""

from __future__ import annotations

from .ddg import Ddg
from .distributed import DistributedDpSgd
from .dp_fedavg import DpFedAvg
from .dp_sgd import DpSgd
from .mechanism import register_mechanism

__all__ = ["BUILTIN"]

BUILTIN = (
    register_mechanism(DpSgd),
    register_mechanism(DpFedAvg),
    register_mechanism(DistributedDpSgd),
    register_mechanism(Ddg),
)
