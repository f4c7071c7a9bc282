"""The attacker's view of one real round, and the inversion audit end to end.

A round is run by the project's own parties (local training, privacy layer, secure sum through
the in-process carrier). The carrier's ``tap`` hands the attacker every message the aggregator
carried, payload bytes included; the attacker also gets the released aggregate (the next global
model minus this one, public once the model is released). Nothing else leaves the sites.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..engine.local import drive_round
from ..errors import SecureFLError
from ..protocol.base import AGGREGATOR, Message, SumResult
from ..protocol.plain import PlainSum, decode_plain
from ..protocol.spec import parse_protocol
from ..run.experiment import Experiment, Variant, parse_experiment
from ..run.federation import Federation
from ..tasks.base import Task
from ..tasks.registry import build_task
from .inversion import InversionConfig, invert_update, payload_as_floats
from .metrics import align_affine, match_images

__all__ = ["TappedRound", "tapped_round", "attack_setting", "attack_variant", "InversionResult", "inversion_audit"]


@dataclass
class TappedRound:
    start_weights: np.ndarray  # the global model the sites started from (public)
    messages: list[Message]  # every message the aggregator carried
    released: np.ndarray | None  # the released mean update (None when the round released nothing)
    contributors: tuple[str, ...]
    aborted: str | None


def tapped_round(fed: Federation, r: int = 0) -> TappedRound:
    """One round with every site of ``fed.task``, recording what the aggregator carried.

    Mirrors :meth:`Federation.round` without site selection, dropout or evaluation.
    """
    start = fed.weights.copy()
    inputs: dict[str, tuple[np.ndarray, float]] = {}
    for i, site in enumerate(fed.task.sites):
        values, weight, _ = fed._site_update(i, r)
        inputs[site.name] = (values, weight)
    messages: list[Message] = []
    outcome = drive_round(fed.protocol, r, inputs, fed.dim, tap=messages.append)
    released: np.ndarray | None = None
    contributors: tuple[str, ...] = ()
    if outcome.result is not None and outcome.aborted is None:
        result: SumResult = outcome.result
        released = np.asarray(fed.privacy.release(result, r, list(inputs)), dtype=np.float64)
        contributors = result.contributors
    return TappedRound(start, messages, released, contributors, outcome.aborted)


def attack_setting(exp: Experiment, batch: int, lr: float = 0.1) -> Experiment:
    """The experiment with the inversion setting: one local step of plain SGD on the whole batch."""
    raw = copy.deepcopy(exp.raw)
    raw["training"] = {"local_steps": 1, "batch_size": batch, "lr": lr, "optimizer": "sgd"}
    raw["rounds"] = 1
    raw["federation"] = {"fraction": 1.0, "dropout": 0.0, "min_sites": 1}
    source = Path(exp.source)
    return parse_experiment(raw, exp.source, base_dir=source.parent if source.is_file() else None)


def attack_variant(variant: Variant) -> Variant:
    """``variant`` with every example in the step: a Poisson ``privacy.sample_rate`` below 1 is set to 1.

    Distributed DP-SGD samples each photograph with rate q per round; at q < 1 the attacked batch is
    mostly absent from the one step the attack sees. q = 1 is the attacker's best case (the ε the
    accountant states is then the ε of that step), as for local DP-SGD, whose one full-batch step has q = 1.
    """
    spec = variant.spec
    privacy = spec.raw.get("privacy") if spec is not None else None
    if spec is None or not isinstance(privacy, dict) or float(privacy.get("sample_rate", 1.0)) >= 1.0:
        return variant
    raw = copy.deepcopy(spec.raw)
    raw["privacy"]["sample_rate"] = 1.0
    patched = parse_protocol(raw, f"{variant.label} in the attack setting (privacy.sample_rate = 1)")
    return Variant(variant.label, patched, overrides={**variant.overrides, "privacy.sample_rate": 1.0})


def shrink_sites(task: Task, batch: int, seed: int) -> Task:
    """Each site keeps ``batch`` training images (seeded choice): its one step sees exactly these."""
    rng = np.random.default_rng(seed)
    for s in task.sites:
        if s.n_train < batch:
            raise SecureFLError(f"site {s.name} has {s.n_train} training images, the attack setting needs {batch}")
        keep = torch.as_tensor(np.sort(rng.choice(s.n_train, size=batch, replace=False)))
        s.x_train, s.y_train = s.x_train[keep], s.y_train[keep]
    return task


@dataclass
class InversionResult:
    protocol: str
    target: str  # "site payload" or "released aggregate"
    psnr: list[float]
    ssim: list[float]
    baseline_psnr: list[float]  # the best constant-per-image guess (a = 0 in the affine fit)
    facts: dict[str, Any] = field(default_factory=dict)
    images: np.ndarray | None = None  # aligned reconstructions, matched to the originals' order

    def to_json(self) -> dict[str, Any]:
        return {
            "protocol": self.protocol, "target": self.target,
            "psnr_mean": float(np.mean(self.psnr)), "ssim_mean": float(np.mean(self.ssim)),
            "baseline_psnr_mean": float(np.mean(self.baseline_psnr)),
            "psnr": self.psnr, "ssim": self.ssim, **self.facts,
        }


def _site_view(fed: Federation, tapped: TappedRound, site: str) -> tuple[np.ndarray, str]:
    """The attacker's best reading of ``site``'s payloads: decoded when plain, else bytes read as floats."""
    mine = [m for m in tapped.messages if m.sender == site and m.receiver == AGGREGATOR]
    if not mine:
        raise SecureFLError(f"the aggregator carried no message from {site}")
    if isinstance(fed.protocol, PlainSum):
        values, _ = decode_plain(mine[0].payload, fed.dim)
        return values, f"decode_plain of its {mine[0].stage!r} message ({mine[0].kind.value})"
    kinds = sorted({m.kind.value for m in mine})
    return payload_as_floats([m.payload for m in mine], fed.dim), f"{len(mine)} payload(s) {kinds} read as float32"


def inversion_audit(
    exp: Experiment, variant: Variant, seed: int, run_dir: Path, batch: int, cfg: InversionConfig,
    task: Task | None = None, attack_release: bool = True,
) -> tuple[list[InversionResult], np.ndarray]:
    """Run the attack setting's round under ``variant`` and invert site 1's update (and the release).

    Returns the results and the target site's original images [B, H, W].
    """
    setting = attack_setting(exp, batch)
    task = task if task is not None else build_task(setting.task_name, setting.task_params, f"{setting.source} [task]")
    task = shrink_sites(task, batch, seed)
    label = next((v for v in setting.variants if v.label == variant.label), None)
    if label is None:
        raise SecureFLError(f"protocol {variant.label!r} is not in {setting.source}")
    fed = Federation(setting, task, attack_variant(label), seed, run_dir)
    tapped = tapped_round(fed)
    site = task.sites[0]
    originals = site.x_train[:, 0].numpy().astype(np.float64)
    shape = tuple(site.x_train.shape[1:])
    targets: list[tuple[str, np.ndarray, str]] = []
    view, how = _site_view(fed, tapped, site.name)
    targets.append(("site payload", view, how))
    if attack_release and tapped.released is not None:
        targets.append(("released aggregate", tapped.released, f"mean update of {len(tapped.contributors)} sites"))
    model = task.make_model(seed)
    results = []
    for name, update, how in targets:
        recon, inverted = invert_update(
            model, tapped.start_weights, update, site.y_train, shape, task.loss_fn(), cfg, seed)
        order, ps, ss = match_images(recon[:, 0], originals)
        aligned = np.stack([align_affine(recon[order[i], 0], originals[i]) for i in range(batch)])
        base = [float(10 * np.log10((o.max() - o.min()) ** 2 / o.var())) for o in originals]
        facts: dict[str, Any] = dict(inverted)
        facts.update({"attacker_input": how, "batch": batch, "labels_known": True, "aborted": tapped.aborted,
                      "update_norm": float(np.linalg.norm(update))})
        results.append(InversionResult(variant.label, name, ps, ss, base, facts, aligned))
    return results, originals
