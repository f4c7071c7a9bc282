"""One run: a protocol (or a reference point) on a task for R rounds under one seed.

Orchestration only: local training (training/), update transforms and release (the privacy
layer of protocol/), the secure sum (driven by a carrier from engine/), the server step
(aggregation/), evaluation, and the record in the run folder (run/records.py).
"""

from __future__ import annotations

import copy
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..aggregation.server import make_server
from ..engine.local import drive_round
from ..errors import SiteRejected
from ..protocol.base import SecureSum
from ..protocol.pipeline import NoPrivacy, PrivacyLayer
from ..tasks.base import Task
from ..training.config import RunPlan
from ..training.flat import flatten, load_flat
from ..training.local import train_local
from .experiment import Experiment, Variant
from .records import RunFolder

__all__ = ["RunSummary", "run_variant", "derive_seed"]

ProgressFn = Callable[[int, dict[str, Any]], None]


@dataclass
class RunSummary:
    variant: str
    seed: int
    status: str
    rounds_done: int
    metrics: dict[str, float] = field(default_factory=dict)
    bytes_up_per_site_round: float = 0.0
    bytes_down_per_site_round: float = 0.0
    seconds_per_round: float = 0.0
    stage_seconds: dict[str, float] = field(default_factory=dict)
    epsilon: dict[str, Any] = field(default_factory=dict)
    aborted_rounds: int = 0
    path: str = ""

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


def derive_seed(*parts: int) -> int:
    """An independent 31-bit seed for (run seed, round, site, ...), for *training* randomness only."""
    return int(np.random.SeedSequence(list(parts)).generate_state(1)[0] & 0x7FFFFFFF)


def _privacy_layer(variant: Variant, exp: Experiment, task: Task, run_dir: Path, seed: int) -> PrivacyLayer:
    spec = variant.spec
    assert spec is not None
    if spec.privacy is None:
        return NoPrivacy(spec.aggregation.weighting)
    from ..protocol.dp import build_privacy_layer

    return build_privacy_layer(  # type: ignore[no-any-return]
        spec.privacy,
        weighting=spec.aggregation.weighting,
        plan=RunPlan(exp.rounds, exp.federation.fraction, exp.training),
        site_sizes={s.name: s.n_train for s in task.sites},
        run_dir=run_dir,
        noise_rng=np.random.default_rng(derive_seed(seed, 0xD9)),
        protocol_name=spec.name,
        spec_hash=spec.spec_hash,
    )


def run_variant(exp: Experiment, task: Task, variant: Variant, seed: int, run_dir: Path, progress: ProgressFn | None = None) -> RunSummary:
    folder = RunFolder(run_dir)
    folder.write_json(
        "resolved.json",
        {"experiment": exp.raw, "variant": variant.label, "protocol": variant.spec.raw if variant.spec else variant.reference,
         "overrides": variant.overrides, "seed": seed, "task": task.describe()},
    )
    summary = RunSummary(variant.label, seed, "running", 0, path=str(run_dir))
    try:
        if variant.reference is not None:
            _run_reference(exp, task, variant.reference, seed, folder, summary, progress)
        else:
            _run_protocol(exp, task, variant, seed, folder, summary, progress)
        summary.status = "finished"
    except KeyboardInterrupt:
        summary.status = "interrupted"
        raise
    except Exception as exc:
        summary.status = f"failed: {type(exc).__name__}: {exc}"
        (run_dir / "error.txt").write_text(traceback.format_exc())
        raise
    finally:
        folder.write_json("summary.json", summary.to_json())
    return summary


def _run_protocol(exp: Experiment, task: Task, variant: Variant, seed: int, folder: RunFolder, summary: RunSummary, progress: ProgressFn | None) -> None:
    spec = variant.spec
    assert spec is not None
    model = task.make_model(seed)
    weights = flatten(model)
    dim = weights.size
    loss_fn = task.loss_fn()
    protocol: SecureSum = spec.build_secure_sum()
    site_ids = [s.name for s in task.sites]
    protocol.setup(site_ids, dim)
    privacy = _privacy_layer(variant, exp, task, folder.path, seed)
    server = make_server(spec.aggregation.server, spec.aggregation.server_lr, spec.aggregation.beta1, spec.aggregation.beta2, spec.aggregation.tau)
    rng = np.random.default_rng(derive_seed(seed, 0x5E1))
    site_stages = [st.name for st in protocol.stages if st.actor == "sites"]
    up, down, secs, stage_tot = [], [], [], {}
    for r in range(exp.rounds):
        t_round = time.perf_counter()
        n_pick = max(1, int(round(exp.federation.fraction * len(task.sites))))
        picked = sorted(rng.choice(len(task.sites), size=n_pick, replace=False).tolist())
        drop_before = {}
        for i in picked:
            if rng.random() < exp.federation.dropout:
                drop_before[task.sites[i].name] = site_stages[int(rng.integers(len(site_stages)))]
        inputs: dict[str, tuple[np.ndarray, float]] = {}
        refused: dict[str, str] = {}
        train_metrics: dict[str, dict[str, float]] = {}
        t0 = time.perf_counter()
        for i in picked:
            site = task.sites[i]
            sp = privacy.site(site.name)
            try:
                sp.before_round(r)
            except SiteRejected as exc:
                refused[site.name] = exc.reason
                continue
            load_flat(model, weights)
            local_update = getattr(sp, "local_update", None)
            contribution = local_update(model, site.x_train, site.y_train, loss_fn, r) if local_update else None
            if contribution is None:
                res = train_local(model, site.x_train, site.y_train, exp.training, loss_fn, derive_seed(seed, r, i), sp.training_hook())
                values, weight = sp.transform(res.delta, res.n_examples, r)
                train_metrics[site.name] = res.metrics
            else:
                values, weight = contribution
            sp.charge(r)  # the ledger is written before the update leaves the site
            inputs[site.name] = (values, weight)
        stage_seconds = {"local_training": time.perf_counter() - t0}
        outcome = drive_round(protocol, r, inputs, dim, drop_before)
        stage_seconds.update(outcome.stage_seconds)
        dropped = {**refused, **outcome.dropped}
        applied = False
        aborted = outcome.aborted
        if outcome.result is not None and aborted is None:
            if len(outcome.result.contributors) < exp.federation.min_sites:
                aborted = f"only {len(outcome.result.contributors)} site(s) contributed; min_sites is {exp.federation.min_sites}"
            else:
                t0 = time.perf_counter()
                try:
                    mean = privacy.release(outcome.result, r, list(inputs))
                    weights = server.step(weights, mean)
                    applied = True
                except Exception as exc:  # RoundAborted from the privacy layer, e.g. too few noise shares
                    aborted = f"{type(exc).__name__}: {exc}"
                stage_seconds["release_and_server_step"] = time.perf_counter() - t0
        if not applied:
            summary.aborted_rounds += 1
        load_flat(model, weights)
        t0 = time.perf_counter()
        metrics = task.evaluate(model)
        stage_seconds["evaluation"] = time.perf_counter() - t0
        seconds = time.perf_counter() - t_round
        participants = list(outcome.result.contributors) if outcome.result is not None else []
        b_up = [outcome.bytes_up[s] for s in participants] or [0]
        b_down = [outcome.bytes_down[s] + 4 * dim for s in participants] or [0]  # + the new global model
        up.append(float(np.mean(b_up)))
        down.append(float(np.mean(b_down)))
        secs.append(seconds)
        for k, v in stage_seconds.items():
            stage_tot[k] = stage_tot.get(k, 0.0) + v
        spent = {s.name: privacy.site(s.name).spent() for s in task.sites}
        record = {
            "round": r, "applied": applied, "aborted": aborted, "participants": participants, "dropped": dropped,
            "metrics": metrics, "train": train_metrics, "bytes_up_per_site": up[-1], "bytes_down_per_site": down[-1],
            "seconds": seconds, "stage_seconds": stage_seconds, "privacy_spent": {k: v for k, v in spent.items() if v},
        }
        folder.append("rounds.jsonl", record)
        for v in outcome.views:
            folder.append("views.jsonl", v.to_json())
        summary.rounds_done = r + 1
        summary.metrics = metrics
        summary.epsilon = record["privacy_spent"]
        if progress:
            progress(r, record)
    torch.save({"weights": torch.from_numpy(weights), "layout": None}, folder.path / "model.pt")
    summary.bytes_up_per_site_round = float(np.mean(up))
    summary.bytes_down_per_site_round = float(np.mean(down))
    summary.seconds_per_round = float(np.mean(secs))
    summary.stage_seconds = {k: v / exp.rounds for k, v in stage_tot.items()}


def _run_reference(exp: Experiment, task: Task, reference: str, seed: int, folder: RunFolder, summary: RunSummary, progress: ProgressFn | None) -> None:
    """``pooled``: one model on the union of the sites' data; ``local-only``: each site alone.

    Both train for the same number of local epochs per round as the federated sites do.
    """
    loss_fn = task.loss_fn()
    if reference == "pooled":
        datasets = {"pooled": task.pooled()}
    else:
        datasets = {s.name: s for s in task.sites}
    models = {name: task.make_model(seed) for name in datasets}
    secs = []
    for r in range(exp.rounds):
        t0 = time.perf_counter()
        for i, (name, data) in enumerate(datasets.items()):
            train_local(models[name], data.x_train, data.y_train, exp.training, loss_fn, derive_seed(seed, r, i))
        metrics = task.evaluate(models["pooled"]) if reference == "pooled" else task.evaluate_local_models(models)
        secs.append(time.perf_counter() - t0)
        record = {"round": r, "applied": True, "metrics": metrics, "seconds": secs[-1], "bytes_up_per_site": 0, "bytes_down_per_site": 0}
        folder.append("rounds.jsonl", record)
        summary.rounds_done = r + 1
        summary.metrics = metrics
        if progress:
            progress(r, record)
    torch.save({name: m.state_dict() for name, m in models.items()}, folder.path / "model.pt")
    summary.seconds_per_round = float(np.mean(secs))
    summary.stage_seconds = {"local_training": summary.seconds_per_round}
