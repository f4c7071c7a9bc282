"""Models as flat float32 vectors: what travels is one vector plus its layout."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

__all__ = ["Layout", "layout_of", "flatten", "load_flat"]


@dataclass(frozen=True)
class Layout:
    """Names and shapes of the parameters, in ``model.named_parameters()`` order."""

    entries: tuple[tuple[str, tuple[int, ...]], ...]

    @property
    def size(self) -> int:
        return int(sum(int(np.prod(shape)) for _, shape in self.entries))

    def to_json(self) -> list[dict[str, object]]:
        return [{"name": n, "shape": list(s)} for n, s in self.entries]


def layout_of(model: nn.Module) -> Layout:
    return Layout(tuple((n, tuple(p.shape)) for n, p in model.named_parameters()))


def flatten(model: nn.Module) -> np.ndarray:
    with torch.no_grad():
        return torch.cat([p.detach().reshape(-1) for p in model.parameters()]).to(torch.float32).numpy().copy()


def load_flat(model: nn.Module, vector: np.ndarray) -> None:
    expected = sum(p.numel() for p in model.parameters())
    if vector.shape != (expected,):
        raise ValueError(f"flat vector has shape {vector.shape}, the model needs ({expected},)")
    v = torch.as_tensor(np.asarray(vector, dtype=np.float32))
    offset = 0
    with torch.no_grad():
        for p in model.parameters():
            n = p.numel()
            p.copy_(v[offset : offset + n].view_as(p))
            offset += n
