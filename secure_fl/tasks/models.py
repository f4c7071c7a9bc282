"""Small models, and a ResNet-18 face encoder. No BatchNorm anywhere (DP-SGD needs per-example gradients; Opacus
refuses it)."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["LogisticRegression", "SingleLogit", "MLP", "FaceEncoder", "ResNetFaceEncoder", "resnet_face_param_count"]


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
        return self.embedding(torch.flatten(self.features(_standardise(x)), 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.scale * nn.functional.normalize(self.embed(x), dim=1))


def _standardise(x: torch.Tensor) -> torch.Tensor:
    """Per-image standardisation: a function of the image alone, so no statistic leaves a site."""
    mu = x.mean(dim=(1, 2, 3), keepdim=True)
    sd = x.std(dim=(1, 2, 3), keepdim=True).clamp_min(1e-3)
    return (x - mu) / sd


def _halve(n: int) -> int:
    """Output length of a 3×3/stride-2/pad-1 convolution or pooling, and of the 7×7/stride-2/pad-3 stem."""
    return (n - 1) // 2 + 1


class _BasicBlock(nn.Module):
    """He et al. 2016, "Deep Residual Learning for Image Recognition", Sec. 3 and Fig. 2 (left): two 3×3
    convolutions and an identity shortcut; where the shape changes, a 1×1 projection (their option B).
    GroupNorm replaces BatchNorm after every convolution (see ``ResNetFaceEncoder``)."""

    def __init__(self, c_in: int, c_out: int, stride: int, groups: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.norm1 = nn.GroupNorm(groups, c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.norm2 = nn.GroupNorm(groups, c_out)
        self.relu = nn.ReLU()
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.GroupNorm(groups, c_out)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.norm1(self.conv1(x)))
        return self.relu(self.norm2(self.conv2(out)) + self.shortcut(x))


#: ResNet-18 (He et al. 2016, Table 1): BasicBlocks per stage and the stages' widths
RESNET18_BLOCKS = (2, 2, 2, 2)
RESNET18_WIDTHS = (64, 128, 256, 512)


class ResNetFaceEncoder(nn.Module):
    """A ResNet-18 face encoder with an ArcFace-style output layer and the NormFace head of ``FaceEncoder``.

    Body: ResNet-18 (He et al. 2016, Sec. 3.3 and Table 1: a 7×7/2 stem convolution, 3×3/2 max pooling,
    then four stages of two BasicBlocks with 64, 128, 256, 512 channels), on ``in_channels`` (1 for
    grey photographs). Every BatchNorm is a GroupNorm (Wu & He 2018, "Group Normalization", Sec. 3,
    ``groups`` = 32 as there): BatchNorm mixes the examples of a batch, so a per-example gradient
    does not exist and Opacus DP-SGD refuses it; GroupNorm normalises each example alone.

    Output layer: the last feature map is normalised (GroupNorm), flattened, and mapped by one
    linear layer to the embedding (Deng et al. 2019, "ArcFace", Sec. 4.1 and the "E" output of
    their Table 8: keep the spatial layout of the last map instead of global pooling; their BN1d
    after the linear layer is left out, as it would pool statistics over the batch). ``embed`` and
    ``forward`` follow ``FaceEncoder``: per-image standardisation, then the embedding; logits are
    the L2-normalised embedding times ``scale`` through a linear classifier (NormFace, Wang et al.
    2017, Sec. 3), so gallery matching uses the angles training optimises.

    Size: the flattened map has 512 × ⌈H/32⌉ × ⌈W/32⌉ values, so the output layer grows with the
    image. At the ORL resolution 112×92 (a 4×3 map) with ``embedding_dim`` 320 and 30 training
    identities (the ``faces`` task's defaults) the model has 13,147,294 parameters
    (``resnet_face_param_count``): 11,170,240 in the ResNet-18 body, 1,967,424 in the output layer,
    9,630 in the classifier. (``embedding_dim`` 384 gives 13,542,494; 512, ArcFace's, 14,332,894.)
    """

    def __init__(
        self,
        num_classes: int,
        embedding_dim: int = 320,
        image_size: tuple[int, int] | list[int] = (112, 92),
        in_channels: int = 1,
        groups: int = 32,
        scale: float = 16.0,
    ) -> None:
        super().__init__()
        self.scale = scale
        w0 = RESNET18_WIDTHS[0]
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, w0, 7, stride=2, padding=3, bias=False), nn.GroupNorm(groups, w0), nn.ReLU(),
            nn.MaxPool2d(3, stride=2, padding=1),
        ]
        c_in = w0
        for stage, (n_blocks, width) in enumerate(zip(RESNET18_BLOCKS, RESNET18_WIDTHS)):
            for b in range(n_blocks):
                layers.append(_BasicBlock(c_in, width, 2 if stage > 0 and b == 0 else 1, groups))
                c_in = width
        layers.append(nn.GroupNorm(groups, c_in))
        self.features = nn.Sequential(*layers)
        h, w = _resnet_map(image_size)
        self.embedding = nn.Linear(c_in * h * w, embedding_dim)
        self.head = nn.Linear(embedding_dim, num_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.embedding(torch.flatten(self.features(_standardise(x)), 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.scale * nn.functional.normalize(self.embed(x), dim=1))


def _resnet_map(image_size: tuple[int, int] | list[int]) -> tuple[int, int]:
    """Height and width of ResNet-18's last feature map: five halvings (stem, pooling, stages 2-4)."""
    h, w = image_size
    for _ in range(5):
        h, w = _halve(h), _halve(w)
    return h, w


def resnet_face_param_count(
    num_classes: int, embedding_dim: int = 320, image_size: tuple[int, int] | list[int] = (112, 92),
    in_channels: int = 1,
) -> int:
    """Parameters of ``ResNetFaceEncoder(num_classes, embedding_dim, image_size, in_channels)``, counted
    from the architecture alone (no model built, no data read)."""
    w0 = RESNET18_WIDTHS[0]
    n = in_channels * w0 * 49 + 2 * w0  # stem convolution (no bias) and its GroupNorm
    c_in = w0
    for stage, (n_blocks, width) in enumerate(zip(RESNET18_BLOCKS, RESNET18_WIDTHS)):
        for b in range(n_blocks):
            n += 9 * c_in * width + 9 * width * width + 4 * width  # two 3×3 convolutions, two GroupNorms
            if (stage > 0 and b == 0) or c_in != width:
                n += c_in * width + 2 * width  # 1×1 projection shortcut and its GroupNorm
            c_in = width
    n += 2 * c_in  # the output layer's GroupNorm
    h, w = _resnet_map(image_size)
    n += (c_in * h * w + 1) * embedding_dim  # the output layer's linear map
    return n + (embedding_dim + 1) * num_classes  # the classifier
