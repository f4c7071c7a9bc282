"""Small models. No BatchNorm anywhere (DP-SGD needs per-example gradients; Opacus refuses it)."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["LogisticRegression", "SingleLogit", "MLP", "FaceEncoder"]


class LogisticRegression(nn.Module):
    def __init__(self, n_features: int, num_classes: int = 2) -> None:
        super().__init__()
        self.linear = nn.Linear(n_features, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x)


class SingleLogit(nn.Module):
    """Binary logistic regression with one logit ``z = w·x + b`` (FLamby's heart-disease ``Baseline``).

    Returns the two logits ``(0, z)``: softmax gives ``(1 - σ(z), σ(z))`` and cross-entropy equals
    binary cross-entropy on ``σ(z)``, so the rest of secure-fl treats it as a 2-class model.
    """

    def __init__(self, n_features: int) -> None:
        super().__init__()
        self.linear = nn.Linear(n_features, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.linear(x)
        return torch.cat([torch.zeros_like(z), z], dim=1)


class MLP(nn.Module):
    def __init__(self, n_features: int, num_classes: int = 2, hidden: int = 32) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(n_features, hidden), nn.ReLU(), nn.Linear(hidden, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class FaceEncoder(nn.Module):
    """A CNN encoder producing an embedding, plus a classification head over training identities.

    ``embed(x)`` gives the embedding used for gallery matching of identities never seen in
    training (the GestaltMatcher set-up), compared by cosine similarity; ``forward(x)`` gives
    class logits from the L2-normalised embedding scaled by ``scale`` (NormFace: Wang et al.
    2017, "L2 Hypersphere Embedding for Face Verification", Sec. 3), so training optimises the
    same angles that gallery matching uses. Measured on pooled ORL (30 epochs of Adam): gallery
    top-1 on unseen people 0.80 against 0.66 with an unnormalised head, and test accuracy
    1.00 against 0.93. The normalisation has no parameters, so Opacus handles the model as is.
    """

    def __init__(
        self,
        num_classes: int,
        embedding_dim: int = 64,
        channels: tuple[int, int, int] = (16, 32, 64),
        scale: float = 16.0,
        in_channels: int = 1,
    ) -> None:
        super().__init__()
        self.scale = scale
        c1, c2, c3 = channels
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, c1, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(c1, c2, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(c2, c3, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d((4, 4)),
        )
        self.embedding = nn.Linear(c3 * 16, embedding_dim)
        self.head = nn.Linear(embedding_dim, num_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        # per-image standardisation (a function of the image alone, so no statistic leaves a site)
        mu = x.mean(dim=(1, 2, 3), keepdim=True)
        sd = x.std(dim=(1, 2, 3), keepdim=True).clamp_min(1e-3)
        return self.embedding(torch.flatten(self.features((x - mu) / sd), 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.scale * nn.functional.normalize(self.embed(x), dim=1))
