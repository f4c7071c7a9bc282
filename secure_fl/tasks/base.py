"""What a task is: sites with their data, a model factory, and metrics."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from .metrics import accuracy, roc_auc, topk_accuracy

__all__ = ["SiteData", "Task", "cat_inputs"]


@dataclass
class SiteData:
    """One site's local data. It never leaves the site in a federated protocol."""

    name: str
    x_train: torch.Tensor  # or, for images kept on disk, an ImageFiles dataset standing in for it
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    #: the person of each training example (several photographs of one patient), or None: one person each
    persons: torch.Tensor | None = None

    def person_ids(self) -> np.ndarray:
        """Person id of every training example: ``persons``, or each example its own person."""
        if self.persons is None:
            return np.arange(self.n_train)
        ids = np.asarray(self.persons)
        if ids.shape != (self.n_train,):
            raise ValueError(f"site {self.name!r}: {ids.shape} person ids for {self.n_train} training examples")
        return ids

    @property
    def n_train(self) -> int:
        return int(self.y_train.shape[0])

    @property
    def n_test(self) -> int:
        return int(self.y_test.shape[0])


@dataclass
class Task(ABC):
    """A learning task across sites. Subclasses fill ``sites`` and implement ``make_model``."""

    name: str
    num_classes: int
    sites: list[SiteData]
    info: dict[str, Any] = field(default_factory=dict)  # JSON-like metadata (labels, notes, preprocessing)
    #: what one training example is ("patient" for a row per patient, "photograph" on faces): the unit that
    #: example-level DP protects, named in the reported ε ("add/remove one photograph")
    record: ClassVar[str] = "patient"

    @abstractmethod
    def make_model(self, seed: int) -> nn.Module:
        """A fresh model, initialised deterministically from ``seed``."""

    def model_spec(self) -> tuple[str, dict[str, Any]] | None:
        """``("package.module:Class", kwargs)`` such that ``Class(**kwargs)`` is ``make_model``'s
        architecture (saved in ``model.json``); ``None`` when the task cannot say."""
        return None

    def loss_fn(self) -> nn.Module:
        return nn.CrossEntropyLoss()

    @property
    def primary_metric(self) -> str:
        return "auc" if self.num_classes == 2 else "accuracy"

    @torch.no_grad()
    def predict(self, model: nn.Module, x: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
        model.eval()
        outs = [model(x[i : i + batch_size]) for i in range(0, len(x), batch_size)]
        return torch.cat(outs) if outs else torch.empty(0, self.num_classes)

    def metrics(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        return self.metrics_from_logits(self.predict(model, x), y)

    def metrics_from_logits(self, logits: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        logits = logits.double()
        yn = y.numpy()
        out = {"accuracy": accuracy(logits.numpy(), yn), "n": float(len(yn))}
        if self.num_classes == 2:
            out["auc"] = roc_auc(torch.softmax(logits, 1)[:, 1].numpy(), yn)
        else:
            out["top5"] = topk_accuracy(logits.numpy(), yn, 5)
        return out

    def evaluate_local_models(self, models: dict[str, nn.Module]) -> dict[str, float]:
        """Each site's own model on its own test set (the local-only reference point).

        ``pooled/*`` pools the predictions of every site's model on its own test set; extra
        metrics (e.g. gallery matching) are averaged over the sites' models.
        """
        out: dict[str, float] = {}
        logits, ys = [], []
        for site in self.sites:
            if not site.n_test:
                continue
            lg = self.predict(models[site.name], site.x_test)
            logits.append(lg)
            ys.append(site.y_test)
            for k, v in self.metrics_from_logits(lg, site.y_test).items():
                if k != "n":
                    out[f"{site.name}/{k}"] = v
        for k, v in self.metrics_from_logits(torch.cat(logits), torch.cat(ys)).items():
            if k != "n":
                out[f"pooled/{k}"] = v
        extras = [self.extra_metrics(m) for m in models.values()]
        for k in extras[0] if extras else {}:
            out[k] = float(np.mean([e[k] for e in extras]))
        return _with_site_means(out, [s.name for s in self.sites])

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        """Per-site and pooled test metrics, as a flat dict (``pooled/accuracy``, ``Cleveland/auc``, ...)."""
        out: dict[str, float] = {}
        for site in self.sites:
            if site.n_test:
                for k, v in self.metrics(model, site.x_test, site.y_test).items():
                    if k != "n":
                        out[f"{site.name}/{k}"] = v
        x = cat_inputs([s.x_test for s in self.sites])
        y = torch.cat([s.y_test for s in self.sites])
        for k, v in self.metrics(model, x, y).items():
            if k != "n":
                out[f"pooled/{k}"] = v
        out.update(self.extra_metrics(model))
        return _with_site_means(out, [s.name for s in self.sites])

    def extra_metrics(self, model: nn.Module) -> dict[str, float]:
        return {}

    def pooled(self) -> SiteData:
        """All sites' training data in one place: the centralised reference point."""
        return SiteData(
            "pooled",
            cat_inputs([s.x_train for s in self.sites]),
            torch.cat([s.y_train for s in self.sites]),
            cat_inputs([s.x_test for s in self.sites]),
            torch.cat([s.y_test for s in self.sites]),
        )

    def describe(self) -> str:
        parts = ", ".join(f"{s.name}: {s.n_train}/{s.n_test}" for s in self.sites)
        notes = "".join(f"; {n}" for n in self.info.get("notes", []))  # type: ignore[union-attr]
        return f"{self.name} ({self.num_classes} classes; train/test per site: {parts}{notes})"


def cat_inputs(xs: list[Any]) -> Any:
    """``torch.cat`` of sites' inputs; images kept on disk (:class:`~secure_fl.tasks.images.ImageFiles`)
    are joined as a list of files, still undecoded."""
    if all(isinstance(x, torch.Tensor) for x in xs):
        return torch.cat(xs)
    from .images import ImageFiles

    if all(isinstance(x, ImageFiles) for x in xs):
        return ImageFiles.concat(xs)
    return torch.cat([x.materialise() if isinstance(x, ImageFiles) else x for x in xs])


def _with_site_means(out: dict[str, float], sites: list[str]) -> dict[str, float]:
    """Add ``site-mean/<metric>``: the unweighted mean over sites (NaN-free sites only)."""
    for metric in ("accuracy", "auc", "top5"):
        vals = [out[f"{s}/{metric}"] for s in sites if f"{s}/{metric}" in out and not np.isnan(out[f"{s}/{metric}"])]
        if vals:
            out[f"site-mean/{metric}"] = float(np.mean(vals))
    return out
