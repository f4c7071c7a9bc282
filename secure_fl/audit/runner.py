"""``secure-fl audit``: run one attack against a run folder or every protocol of an experiment.

- ``inversion``: per protocol, one tapped round in the attack setting (site 1's batch of ``batch``
  images, one SGD step), then the attack on site 1's payloads and on the released aggregate.
- ``membership``: LiRA with shadow models of the same protocol (:mod:`.lira`, :mod:`.shadows`) beside the
  loss-threshold baseline, on the released model (a run folder's ``model.pt``; for an experiment, each
  protocol is run first into ``OUT/runs``); ``shadows = 0`` runs the baseline only.
- ``epsilon``: the one-run audit of each DP protocol (its own small canary task, see
  :mod:`.canaries`), beside the accountant's ε.

Every result is seeded; the inversion is bounded by ``iterations`` and ``budget_seconds``.
"""

from __future__ import annotations

import json
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import SecureFLError
from ..run.experiment import Experiment, Variant, load_experiment, parse_experiment
from ..tasks.registry import build_task
from ..training.flat import load_flat
from .inversion import InversionConfig
from .scenario import InversionResult, inversion_audit

__all__ = ["AuditTarget", "resolve_target", "run_audit", "inversion_figure", "ATTACKS", "IMAGES"]

ATTACKS = ("inversion", "membership", "epsilon")
#: the inversion's originals and reconstructions (numpy .npz) beside audit.json; the report draws them
IMAGES = "inversion.npz"


@dataclass
class AuditTarget:
    exp: Experiment
    variants: list[Variant]
    seed: int
    out_dir: Path
    run_dir: Path | None  # a finished run folder (model.pt) when the target was one


def resolve_target(target: str, out: Path | None = None, protocols: list[str] | None = None) -> AuditTarget:
    """A run folder (has ``resolved.json``) or an experiment (name or TOML path)."""
    path = Path(target)
    if (path / "resolved.json").is_file():
        resolved = json.loads((path / "resolved.json").read_text())
        exp = parse_experiment(resolved["experiment"], str(path / "resolved.json"))
        chosen = [v for v in exp.variants if v.label == resolved["variant"]]
        if not chosen:
            raise SecureFLError(
                f"{path}/resolved.json: variant {resolved['variant']!r} is not a protocol of its experiment")
        return AuditTarget(exp, chosen, int(resolved["seed"]), out or path, path)
    if path.is_dir():
        raise SecureFLError(
            f"{path}: a folder without resolved.json is not a run folder (runs/EXPERIMENT/VARIANT/seedK)")
    exp = load_experiment(target)
    variants = [v for v in exp.variants if v.spec is not None and (not protocols or v.label in protocols)]
    if protocols:
        unknown = sorted(set(protocols) - {v.label for v in variants})
        if unknown:
            listed = [v.label for v in exp.variants]
            raise SecureFLError(f"--protocol {unknown}: not protocols of {exp.source} ({listed})")
    return AuditTarget(exp, variants, exp.seeds[0], out or Path("runs") / "audit" / exp.name, None)


def inversion_figure(rows: list[tuple[str, np.ndarray]], originals: np.ndarray, path: Path) -> None:
    """Originals in the first row, then one row per (label, aligned reconstructions [B, H, W])."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    B = len(originals)
    fig, axes = plt.subplots(len(rows) + 1, B, figsize=(1.6 * B + 2.6, 1.7 * (len(rows) + 1)), squeeze=False)
    for r, (label, imgs) in enumerate([("originals (site 1)", originals), *rows]):
        for b in range(B):
            ax = axes[r][b]
            lo, hi = float(originals[b].min()), float(originals[b].max())
            ax.imshow(np.clip(imgs[b], lo, hi), cmap="gray", vmin=lo, vmax=hi)
            ax.set_xticks([]), ax.set_yticks([])
        axes[r][0].set_ylabel(label, rotation=0, ha="right", va="center", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _inversion(t: AuditTarget, batch: int, cfg: InversionConfig) -> dict[str, Any]:
    results: list[InversionResult] = []
    originals: np.ndarray | None = None
    for v in t.variants:
        with tempfile.TemporaryDirectory() as tmp:
            res, originals = inversion_audit(t.exp, v, t.seed, Path(tmp), batch, cfg)
        results.extend(res)
    figure, arrays = None, None
    if originals is not None and results:
        rows = [(f"{r.protocol}\n{r.target}\nPSNR {np.mean(r.psnr):.1f} dB", r.images)
                for r in results if r.images is not None]
        figure = t.out_dir / "inversion.png"
        inversion_figure(rows, originals, figure)
        # the images themselves, for the report: originals and result i's aligned reconstructions as "recon_i"
        arrays = t.out_dir / IMAGES
        images: dict[str, Any] = {"originals": originals.astype(np.float32)}
        images.update({f"recon_{i}": r.images.astype(np.float32)
                       for i, r in enumerate(results) if r.images is not None})
        np.savez_compressed(arrays, **images)
    return {
        "setting": f"task {t.exp.task_name}: site 1 holds {batch} images and takes one full-batch SGD step from the "
                   f"global model; the attacker knows the labels and the global model; PSNR/SSIM after a per-image "
                   f"affine fit (the encoder standardises each image), best one-to-one match; "
                   f"baseline = best constant image",
        "config": cfg.__dict__, "results": [r.to_json() for r in results], "figure": str(figure) if figure else None,
        "images": IMAGES if arrays else None,
    }


def _released_model(t: AuditTarget, v: Variant, run_dir: Path):  # type: ignore[no-untyped-def]
    """The task and the released global model of ``run_dir`` (``model.pt``: the model's state_dict)."""
    task = build_task(t.exp.task_name, t.exp.task_params, f"{t.exp.source} [task]")
    model = task.make_model(t.seed)
    path = run_dir / "model.pt"
    if not path.is_file():
        raise SecureFLError(f"{path}: not found; the run released no model (did it finish?)")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if "weights" in state:  # the format of earlier runs: the flat weight vector
        load_flat(model, state["weights"].numpy())
    elif set(state) == set(model.state_dict()):
        model.load_state_dict(state)
    else:
        raise SecureFLError(f"{path} holds no released global model of this task (keys {sorted(state)[:4]}...; "
                            f"a per-site reference run?)")
    return task, model


def _membership(t: AuditTarget, rounds: int | None, shadows: int, online: bool,
                budget_seconds: float | None) -> dict[str, Any]:
    """Per protocol: the released model (trained first when the target is an experiment), the loss-threshold
    baseline on it, and LiRA with ``shadows`` shadow models of the same protocol (none when ``shadows`` is 0)."""
    from ..run.federation import run_variant
    from .lira import leave_one_out, lira_scores, logit_confidence, roc_summary
    from .membership import loss_threshold_attack
    from .shadows import population, train_shadows

    if rounds:
        t.exp.rounds = rounds
    out = []
    for v in t.variants:
        run_dir = t.run_dir
        if run_dir is None:
            task = build_task(t.exp.task_name, t.exp.task_params, f"{t.exp.source} [task]")
            run_dir = t.out_dir / "runs" / v.label / f"seed{t.seed}"
            run_variant(t.exp, task, v, t.seed, run_dir, resume=True)  # a finished run is reused as it is
        task, model = _released_model(t, v, run_dir)
        baseline = loss_threshold_attack(model, task)
        summary = json.loads((run_dir / "summary.json").read_text()) if (run_dir / "summary.json").is_file() else {}
        res: dict[str, Any] = {
            "protocol": v.label, "run": str(run_dir), "rounds": summary.get("rounds_done"),
            "epsilon_spent": summary.get("epsilon"),
            "test_metrics": summary.get("metrics", {}).get(f"pooled/{task.primary_metric}")}
        if shadows == 0:
            res.update(baseline)
            out.append(res)
            continue
        pop = population(task)
        phi, masks, facts = train_shadows(t.exp, v, t.seed, pop, shadows, budget_seconds)
        released = lira_scores(logit_confidence(model, pop.x, pop.y), phi, masks, online)
        loo_scores, loo_labels = leave_one_out(phi, masks, online)
        pooled = roc_summary(np.r_[released, loo_scores], np.r_[pop.target_in, loo_labels])
        res.update({
            "attack": f"LiRA ({'online' if online else 'offline'}, fixed variance; Carlini et al. 2022), "
                      f"{facts['shadows']} shadow models of this protocol",
            **pooled,
            "evaluation": f"pooled over {facts['shadows'] + 1} target models: the released model (members = the "
                          f"sites' training examples, non-members = their test examples) and each shadow in turn "
                          f"against the other shadows (members = its random half of the population)",
            "released_model": {k: v2 for k, v2 in roc_summary(released, pop.target_in).items() if k != "roc"},
            "loss_threshold": {k: v2 for k, v2 in baseline.items() if k != "roc"},
            **facts,
        })
        out.append(res)
    return {"results": out}


def _epsilon(t: AuditTarget, m: int, k: int, rounds: int, explicit: bool) -> dict[str, Any]:
    """DP variants; a protocol without DP only when named explicitly (the audit's no-protection reference)."""
    from .canaries import epsilon_audit

    out = []
    for v in t.variants:
        if v.spec is None or (v.spec.privacy is None and not explicit):
            continue
        override = next(iter(v.overrides.items()), None)
        with tempfile.TemporaryDirectory() as tmp:
            out.append(epsilon_audit(v.spec.name, Path(tmp),
                                     override=override, m=m, k=k, rounds=rounds, seed=t.seed))
    if not out:
        raise SecureFLError(f"{t.exp.source}: no DP protocol to audit (none has a [privacy] table)")
    return {"results": out}


def run_audit(
    target: str, attack: str, *, out: Path | None = None, protocols: list[str] | None = None, batch: int = 2,
    iterations: int = 300, budget_seconds: float | None = None, rounds: int | None = None, canaries: int = 200,
    guesses: int = 20, audit_rounds: int = 5, threads: int = 1, shadows: int = 8, online: bool = True,
) -> Path:
    """Run ``attack`` and record it under its name in ``audit.json`` (and figures) in the output folder.

    Other attacks already in that ``audit.json`` are kept, and so are the same attack's results for other
    protocols of the same experiment (so protocols can be audited one at a time). Returns the file's path.
    """
    if attack not in ATTACKS:
        raise SecureFLError(f"--attack {attack!r}: expected one of {list(ATTACKS)}")
    torch.set_num_threads(threads)
    t = resolve_target(target, out, protocols)
    t.out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    if attack == "inversion":
        body = _inversion(t, batch, InversionConfig(iterations=iterations, budget_seconds=budget_seconds))
    elif attack == "membership":
        body = _membership(t, rounds, shadows, online, budget_seconds)
    else:
        body = _epsilon(t, canaries, guesses, audit_rounds, explicit=bool(protocols))
    record = {"attack": attack, "target": target, "experiment": t.exp.name, "task": t.exp.task_name, "seed": t.seed,
              "seconds": time.perf_counter() - t0, **body}
    path = t.out_dir / "audit.json"
    existing = json.loads(path.read_text()) if path.is_file() else {}
    previous = existing.get(attack)
    if attack != "inversion" and isinstance(previous, dict) and previous.get("experiment") == record["experiment"]:
        # one protocol at a time into one folder: results of other protocols of the same experiment are kept
        mine = {(r.get("protocol"), r.get("target")) for r in record["results"]}
        kept = [r for r in previous.get("results", []) if (r.get("protocol"), r.get("target")) not in mine]
        record["results"] = kept + record["results"]
    existing[attack] = _finite(record)
    path.write_text(json.dumps(existing, indent=1))
    return path


def _finite(obj: Any) -> Any:
    if isinstance(obj, float) and not np.isfinite(obj):
        return "inf" if obj > 0 else ("-inf" if obj < 0 else None)
    if isinstance(obj, dict):
        return {str(k): _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj
