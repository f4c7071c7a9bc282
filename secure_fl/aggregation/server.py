"""Server optimisers: turn the released mean delta into the next global model.

FedAvg (McMahan et al. 2017): ``w <- w + lr * mean_delta``. FedAdam (Reddi et al. 2021,
"Adaptive Federated Optimization", Alg. 2) treats ``-mean_delta`` as a pseudo-gradient.
"""

from __future__ import annotations

import numpy as np

__all__ = ["ServerOptimizer", "FedAvg", "FedAdam", "make_server"]


class ServerOptimizer:
    def step(self, weights: np.ndarray, mean_delta: np.ndarray) -> np.ndarray:
        raise NotImplementedError


class FedAvg(ServerOptimizer):
    def __init__(self, lr: float = 1.0) -> None:
        self.lr = lr

    def step(self, weights: np.ndarray, mean_delta: np.ndarray) -> np.ndarray:
        return (weights + self.lr * mean_delta).astype(np.float32)


class FedAdam(ServerOptimizer):
    def __init__(self, lr: float = 0.01, beta1: float = 0.9, beta2: float = 0.99, tau: float = 1e-3) -> None:
        self.lr, self.beta1, self.beta2, self.tau = lr, beta1, beta2, tau
        self.m: np.ndarray | None = None
        self.v: np.ndarray | None = None

    def step(self, weights: np.ndarray, mean_delta: np.ndarray) -> np.ndarray:
        if self.m is None or self.v is None:
            self.m = np.zeros_like(mean_delta, dtype=np.float64)
            self.v = np.zeros_like(mean_delta, dtype=np.float64)
        self.m = self.beta1 * self.m + (1 - self.beta1) * mean_delta
        self.v = self.beta2 * self.v + (1 - self.beta2) * mean_delta**2
        return (weights + self.lr * self.m / (np.sqrt(self.v) + self.tau)).astype(np.float32)


def make_server(kind: str, lr: float, beta1: float = 0.9, beta2: float = 0.99, tau: float = 1e-3) -> ServerOptimizer:
    if kind == "fedavg":
        return FedAvg(lr)
    if kind == "fedadam":
        return FedAdam(lr, beta1, beta2, tau)
    raise ValueError(f"unknown server optimiser {kind!r}; expected 'fedavg' or 'fedadam'")
