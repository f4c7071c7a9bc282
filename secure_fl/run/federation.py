"""One run: a protocol (or a reference point) on a task for R rounds under one seed.

Orchestration only: local training (training/), update transforms and release (the privacy
layer of protocol/), the secure sum (driven by a carrier from engine/), the server step
(aggregation/), evaluation, and the record in the run folder (run/records.py).
"""

from __future__ import annotations

import re
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

__all__ = ["RunSummary", "Federation", "run_variant", "derive_seed"]

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


#: a number in a refusal reason, other than a round number
_EXACT_VALUE = re.compile(r"(?<![\w.])(?<!round )[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?(?![\w.])")


def redact_reason(reason: str) -> str:
    """A refusal reason with every exact value replaced by its kind (``<number>``).

    Reasons raised at a site can quote what it holds (``max |value| = 3.1e+02``, ``weight 1234
    exceeds max_weight``): un-noised per-site values that the aggregator-side record must not carry
    when the protocol protects single updates (issue 8 item 12).
    """
    return _EXACT_VALUE.sub("<number>", reason)


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


class Federation:
    """The state of one federated run between rounds: global weights, protocol, privacy layer.

    ``round(r)`` runs one whole round (site selection, local training, update transforms and
    ledger, the secure sum through the in-process carrier, release, server step, evaluation)
    and returns its record. Benchmarks time exactly this.
    """

    def __init__(self, exp: Experiment, task: Task, variant: Variant, seed: int, run_dir: Path) -> None:
        spec = variant.spec
        if spec is None:
            raise ValueError(f"{variant.label!r} is a reference point, not a protocol")
        self.exp, self.task, self.seed = exp, task, seed
        self.model = task.make_model(seed)
        self.weights = flatten(self.model)
        self.dim = self.weights.size
        self.loss_fn = task.loss_fn()
        self.protocol: SecureSum = spec.build_secure_sum()
        self.protocol.setup([s.name for s in task.sites], self.dim)
        self.privacy = _privacy_layer(variant, exp, task, run_dir, seed)
        agg = spec.aggregation
        self.server = make_server(agg.server, agg.server_lr, agg.beta1, agg.beta2, agg.tau)
        self.rng = np.random.default_rng(derive_seed(seed, 0x5E1))
        self.site_stages = [st.name for st in self.protocol.stages if st.actor == "sites"]
        self.last_views: list[Any] = []
        #: what a protected protocol shows the aggregator; per-site values reach its record only when "plain"
        self.aggregator_sees = spec.threat_model.aggregator_sees
        #: per site, what stays at the site: training metrics on its private batches and exact refusal reasons
        self.site_records: dict[str, list[dict[str, Any]]] = {s.name: [] for s in task.sites}

    def _pick(self) -> tuple[list[int], dict[str, str]]:
        fed, sites = self.exp.federation, self.task.sites
        n_pick = max(1, int(round(fed.fraction * len(sites))))
        picked = sorted(self.rng.choice(len(sites), size=n_pick, replace=False).tolist())
        drop_before = {}
        for i in picked:
            if self.rng.random() < fed.dropout:
                drop_before[sites[i].name] = self.site_stages[int(self.rng.integers(len(self.site_stages)))]
        return picked, drop_before

    def _site_update(self, i: int, r: int) -> tuple[np.ndarray, float, dict[str, float]]:
        """What site ``i`` sends into the secure sum this round (raises SiteRejected on a budget refusal)."""
        site = self.task.sites[i]
        sp = self.privacy.site(site.name)
        sp.before_round(r)
        load_flat(self.model, self.weights)
        local_update = getattr(sp, "local_update", None)
        contribution = local_update(self.model, site.x_train, site.y_train, self.loss_fn, r) if local_update else None
        metrics: dict[str, float] = {}
        if contribution is None:
            res = train_local(self.model, site.x_train, site.y_train, self.exp.training, self.loss_fn, derive_seed(self.seed, r, i), sp.training_hook())
            values, weight = sp.transform(res.delta, res.n_examples, r)
            metrics = res.metrics
        else:
            values, weight = contribution
        sp.charge(r)  # the ledger is written before the update leaves the site
        return values, weight, metrics

    def round(self, r: int) -> dict[str, Any]:
        t_round = time.perf_counter()
        picked, drop_before = self._pick()
        inputs: dict[str, tuple[np.ndarray, float]] = {}
        refused: dict[str, str] = {}
        train_metrics: dict[str, dict[str, float]] = {}
        t0 = time.perf_counter()
        slowest_site = 0.0
        for i in picked:
            name = self.task.sites[i].name
            t_site = time.perf_counter()
            try:
                values, weight, train_metrics[name] = self._site_update(i, r)
            except SiteRejected as exc:  # e.g. its privacy budget would be exceeded
                refused[name] = exc.reason
                continue
            except Exception as exc:  # one site's failure never costs the others their round
                refused[name] = f"{type(exc).__name__} in local training: {exc}"
                continue
            inputs[name] = (values, weight)
            slowest_site = max(slowest_site, time.perf_counter() - t_site)
        stage_seconds = {"local_training": time.perf_counter() - t0}
        outcome = drive_round(self.protocol, r, inputs, self.dim, drop_before)
        self.last_views = outcome.views
        stage_seconds.update(outcome.stage_seconds)
        applied, aborted = False, outcome.aborted
        if outcome.result is not None and aborted is None:
            if len(outcome.result.contributors) < self.exp.federation.min_sites:
                aborted = f"only {len(outcome.result.contributors)} site(s) contributed; min_sites is {self.exp.federation.min_sites}"
            else:
                t0 = time.perf_counter()
                try:
                    mean = self.privacy.release(outcome.result, r, list(inputs))
                    self.weights = self.server.step(self.weights, mean)
                    applied = True
                except Exception as exc:  # RoundAborted from the privacy layer, e.g. too few noise shares
                    aborted = f"{type(exc).__name__}: {exc}"
                stage_seconds["release_and_server_step"] = time.perf_counter() - t0
        load_flat(self.model, self.weights)
        t0 = time.perf_counter()
        metrics = self.task.evaluate(self.model)
        stage_seconds["evaluation"] = time.perf_counter() - t0
        participants = list(outcome.result.contributors) if outcome.result is not None else []
        # when the aggregator holds the new model it sends it back in the clear; otherwise the
        # sites derive it from the sum they decrypted, already counted in bytes_down
        broadcast = 4 * self.dim if self.protocol.releases_to_aggregator else 0
        spent = {s.name: self.privacy.site(s.name).spent() for s in self.task.sites}
        dropped = {**refused, **outcome.dropped}
        for name in set(train_metrics) | set(dropped):  # what each site keeps for itself
            kept = {"round": r, "train": train_metrics.get(name), "dropped": dropped.get(name)}
            self.site_records.setdefault(name, []).append(kept)
        protected = self.aggregator_sees != "plain"  # then un-noised per-site values stay at the site
        record: dict[str, Any] = {
            "round": r, "applied": applied, "aborted": redact_reason(aborted) if protected and aborted else aborted,
            "participants": participants,
            "dropped": {s: redact_reason(why) for s, why in dropped.items()} if protected else dropped,
            "metrics": metrics,
            "bytes_up_per_site": float(np.mean([outcome.bytes_up[s] for s in participants] or [0])),
            "bytes_down_per_site": float(np.mean([outcome.bytes_down[s] + broadcast for s in participants] or [0])),
            "seconds": time.perf_counter() - t_round, "stage_seconds": stage_seconds,
            # the same round with sites working in parallel, as in a deployment (slowest site per stage)
            "seconds_sites_parallel": slowest_site + sum(outcome.stage_critical_seconds.values())
            + stage_seconds.get("release_and_server_step", 0.0) + stage_seconds["evaluation"],
            "privacy_spent": {k: v for k, v in spent.items() if v},
        }
        if not protected:
            record["train"] = train_metrics
        return record


def _run_protocol(exp: Experiment, task: Task, variant: Variant, seed: int, folder: RunFolder, summary: RunSummary, progress: ProgressFn | None) -> None:
    fed = Federation(exp, task, variant, seed, folder.path)
    records = []
    for r in range(exp.rounds):
        record = fed.round(r)
        records.append(record)
        folder.append("rounds.jsonl", record)
        for v in fed.last_views:
            folder.append("views.jsonl", v.to_json())
        summary.rounds_done = r + 1
        summary.metrics = record["metrics"]
        summary.epsilon = record["privacy_spent"]
        summary.aborted_rounds += not record["applied"]
        if progress:
            progress(r, record)
    torch.save({"weights": torch.from_numpy(fed.weights)}, folder.path / "model.pt")
    summary.bytes_up_per_site_round = float(np.mean([r["bytes_up_per_site"] for r in records]))
    summary.bytes_down_per_site_round = float(np.mean([r["bytes_down_per_site"] for r in records]))
    summary.seconds_per_round = float(np.mean([r["seconds"] for r in records]))
    stages = {k for r in records for k in r["stage_seconds"]}
    summary.stage_seconds = {k: sum(r["stage_seconds"].get(k, 0.0) for r in records) / len(records) for k in stages}


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
