"""One run: a protocol (or a reference point) on a task for R rounds under one seed.

Orchestration only: local training (training/), update transforms and release (the privacy
layer of protocol/), the secure sum (driven by a carrier from engine/), the server step
(aggregation/), evaluation, and the record in the run folder (run/records.py).
"""

from __future__ import annotations

import copy
import json
import os
import re
import socket
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..aggregation.server import make_server
from ..engine.local import drive_round
from ..errors import RoundAborted, SecureFLError, SiteRejected
from ..protocol.base import SecureSum
from ..protocol.pipeline import NoPrivacy, PrivacyLayer
from ..tasks.base import Task
from ..tasks.export import save_model
from ..training.config import RunPlan
from ..training.flat import flatten, load_flat
from ..training.local import train_local
from .checkpoint import federation_state, load_checkpoint, restore_federation, save_checkpoint
from .experiment import Experiment, Variant
from .records import RunFolder, read_jsonl, read_rounds, run_status, site_stats, utc_now
from .standardise import standardise_through_protocol
from .units import server_update, site_update

__all__ = ["RunSummary", "Federation", "run_variant", "derive_seed"]

ProgressFn = Callable[[int, dict[str, Any]], None]


@dataclass
class RunSummary:
    """``summary.json`` of one variant and seed: written at start (``running``, with pid and host),
    after every round, and at the end (``finished``, ``failed: ...`` or ``interrupted``)."""

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
    rounds_planned: int = 0
    sites: dict[str, dict[str, Any]] = field(default_factory=dict)
    pid: int = 0
    host: str = ""
    started_utc: str = ""
    updated_utc: str = ""
    resumed: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "RunSummary":
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in data.items() if k in known})


#: a number in a refusal reason, other than a round number
_EXACT_VALUE = re.compile(r"(?<![\w.])(?<!round )[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?(?![\w.])")


def redact_reason(reason: str) -> str:
    """A refusal reason with every exact value replaced by its kind (``<number>``).

    Reasons raised at a site can quote what it holds (``max |value| = 3.1e+02``, ``weight 1234
    exceeds max_weight``): un-noised per-site values that the aggregator-side record must not carry
    when the protocol protects single updates.
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
        record=task.record,
    )


def run_variant(
    exp: Experiment,
    task: Task,
    variant: Variant,
    seed: int,
    run_dir: Path,
    progress: ProgressFn | None = None,
    resume: bool = False,
) -> RunSummary:
    """Run (or, with ``resume``, continue) one variant under one seed in ``run_dir``.

    A fresh run refuses a folder that already holds one (nothing is overwritten here; the caller
    decides about ``--overwrite``). A resumed run continues from the round after the one saved in
    ``checkpoint.pt``; a run whose ``summary.json`` says ``finished`` is returned as it is.
    """
    folder = RunFolder(run_dir)
    previous = _read_summary(run_dir)
    if not resume and previous is not None:
        raise SecureFLError(f"{run_dir}: already holds a run ({previous.status}); start a new run folder")
    if resume and previous is not None and previous.status == "finished":
        return previous
    ckpt = load_checkpoint(run_dir) if resume else None
    if previous is None or not (run_dir / "resolved.json").exists():
        folder.write_json(
            "resolved.json",
            {
                "experiment": exp.resolved(),
                "variant": variant.label,
                "protocol": variant.spec.raw if variant.spec else variant.reference,
                "spec_hash": variant.spec.spec_hash if variant.spec else None,
                "overrides": variant.overrides,
                "seed": seed,
                "task": task.describe(),
            },
        )
    now = utc_now()
    summary = RunSummary(
        variant.label, seed, "running", 0, path=str(run_dir), rounds_planned=exp.rounds, started_utc=now
    )
    if previous is not None:
        summary.started_utc, summary.resumed = previous.started_utc or now, list(previous.resumed)
        summary.resumed.append(
            {
                "at_utc": now,
                "from_round": ckpt["round"] + 1 if ckpt else 0,
                "previous_status": run_status(run_dir),
                "previous_pid": previous.pid,
            }
        )
    summary.pid, summary.host = os.getpid(), socket.gethostname()
    _write_summary(folder, summary)
    try:
        if variant.reference is not None:
            _run_reference(exp, task, variant.reference, seed, folder, summary, progress, ckpt)
        else:
            _run_protocol(exp, task, variant, seed, folder, summary, progress, ckpt)
        summary.status = "finished"
    except KeyboardInterrupt:
        summary.status = "interrupted"
        raise
    except Exception as exc:  # recorded in the run's summary and error.txt, then re-raised
        summary.status = f"failed: {type(exc).__name__}: {exc}"
        (run_dir / "error.txt").write_text(traceback.format_exc())
        raise
    finally:
        summary.sites = site_stats(read_rounds(run_dir), [s.name for s in task.sites]) if variant.spec else {}
        _write_summary(folder, summary)
    return summary


def _read_summary(run_dir: Path) -> RunSummary | None:
    try:
        return RunSummary.from_json(json.loads((run_dir / "summary.json").read_text()))
    except FileNotFoundError:
        return None
    except (json.JSONDecodeError, TypeError) as exc:
        raise SecureFLError(f"{run_dir / 'summary.json'}: unreadable ({exc})") from exc


def _write_summary(folder: RunFolder, summary: RunSummary) -> None:
    summary.updated_utc = utc_now()
    folder.write_json("summary.json", summary.to_json())


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
        # the privacy layer first: its checks name the key the user set (e.g. [privacy].min_sites), which the
        # secure sum only sees as the minimum the layer pushed into it
        self.privacy = _privacy_layer(variant, exp, task, run_dir, seed)
        bounds = getattr(self.privacy, "public_bounds", lambda: None)()
        if bounds is not None and hasattr(self.protocol, "use_public_bounds"):
            self.protocol.use_public_bounds(*bounds)  # e.g. CKKS: no histogram of per-site magnitudes travels
        self.protocol.setup([s.name for s in task.sites], self.dim)
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
        return site_update(
            self.model,
            self.weights,
            site,
            self.privacy.site(site.name),
            self.exp.training,
            self.loss_fn,
            derive_seed(self.seed, r, i),
            r,
            train_local,
        )

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
                aborted = f"only {len(outcome.result.contributors)} site(s) contributed; min_sites is {self.exp.federation.min_sites}"  # noqa: E501 (a table row or a translated phrase reads best whole)
            else:
                t0 = time.perf_counter()
                try:
                    self.weights = server_update(
                        self.privacy, self.server, self.weights, outcome.result, r, list(inputs)
                    )
                    applied = True
                except RoundAborted as exc:  # the privacy layer refuses the release, e.g. too few noise shares
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
            "round": r,
            "applied": applied,
            "aborted": redact_reason(aborted) if protected and aborted else aborted,
            "participants": participants,
            "dropped": {s: redact_reason(why) for s, why in dropped.items()} if protected else dropped,
            "metrics": metrics,
            "bytes_up_per_site": float(np.mean([outcome.bytes_up[s] for s in participants] or [0])),
            "bytes_down_per_site": float(np.mean([outcome.bytes_down[s] + broadcast for s in participants] or [0])),
            "seconds": time.perf_counter() - t_round,
            "stage_seconds": stage_seconds,
            # the same round with sites working in parallel, as in a deployment (slowest site per stage)
            "seconds_sites_parallel": slowest_site
            + sum(outcome.stage_critical_seconds.values())
            + stage_seconds.get("release_and_server_step", 0.0)
            + stage_seconds["evaluation"],
            "privacy_spent": {k: v for k, v in spent.items() if v},
        }
        if not protected:
            record["train"] = train_metrics
        return record


def _continue_logs(folder: RunFolder, ckpt: dict[str, Any] | None) -> int:
    """On resume: make ``rounds.jsonl``/``views.jsonl`` hold exactly the rounds up to the checkpoint's
    (dropping a torn last line, adding the checkpoint's round if the crash came before its line);
    return the first round to run."""
    last = ckpt["round"] if ckpt else -1
    rounds = [r for r in read_rounds(folder.path) if r.get("round", last + 1) < last]
    views = [v for v in read_jsonl(folder.path / "views.jsonl") if v.get("round", last + 1) < last]
    if ckpt:
        rounds.append(ckpt["record"])
        views += ckpt["views"]
    folder.rewrite_jsonl("rounds.jsonl", rounds)
    folder.rewrite_jsonl("views.jsonl", views)
    return last + 1


def _redo_round_charges(fed: "Federation", run_dir: Path, first: int) -> None:
    """A crash inside round ``first`` may have charged some ledgers for it: the re-run replaces those
    charges rather than adding a second one (the ledger's round keys decide; see PrivacyLedger.redo_rounds)."""
    for site in fed.task.sites:
        if (run_dir / "sites" / site.name / "ledger.sqlite").exists():
            ledger = getattr(fed.privacy.site(site.name), "ledger", None)
            if ledger is not None:
                ledger.redo_rounds = frozenset({first})


def _finish_round(
    folder: RunFolder,
    summary: RunSummary,
    r: int,
    record: dict[str, Any],
    views: list[dict[str, Any]],
    state: dict[str, Any],
    progress: ProgressFn | None,
) -> None:
    save_checkpoint(folder.path, {"round": r, "state": state, "record": record, "views": views})
    folder.append("views.jsonl", *views)
    folder.append("rounds.jsonl", record)
    summary.rounds_done = r + 1
    summary.metrics = record["metrics"]
    summary.epsilon = record.get("privacy_spent", {})
    _write_summary(folder, summary)
    if progress:
        progress(r, record)


def _run_protocol(
    exp: Experiment,
    task: Task,
    variant: Variant,
    seed: int,
    folder: RunFolder,
    summary: RunSummary,
    progress: ProgressFn | None,
    ckpt: dict[str, Any] | None = None,
) -> None:
    if variant.spec is not None:  # standardise = "federated": the pre-round sum through this protocol
        task = standardise_through_protocol(task, variant.spec, folder.path)
    fed = Federation(exp, task, variant, seed, folder.path)
    first = 0
    if summary.resumed:
        first = _continue_logs(folder, ckpt)
        if ckpt:
            restore_federation(fed, ckpt["state"])
        _redo_round_charges(fed, folder.path, first)
        for done in read_rounds(folder.path):
            summary.rounds_done, summary.metrics = done["round"] + 1, done["metrics"]
            summary.epsilon = done.get("privacy_spent", {})
    for r in range(first, exp.rounds):
        record = fed.round(r)
        views = [{**v.to_json(), "round": r} for v in fed.last_views]
        _finish_round(folder, summary, r, record, views, federation_state(fed), progress)
    load_flat(fed.model, fed.weights)
    save_model(task, fed.model, folder.path)  # model.pt (state_dict) + model.json (tasks/export.py)
    records = read_rounds(folder.path)
    summary.aborted_rounds = sum(not r["applied"] for r in records)
    summary.bytes_up_per_site_round = float(np.mean([r["bytes_up_per_site"] for r in records]))
    summary.bytes_down_per_site_round = float(np.mean([r["bytes_down_per_site"] for r in records]))
    summary.seconds_per_round = float(np.mean([r["seconds"] for r in records]))
    stages = {k for r in records for k in r["stage_seconds"]}
    summary.stage_seconds = {k: sum(r["stage_seconds"].get(k, 0.0) for r in records) / len(records) for k in stages}


def _run_reference(
    exp: Experiment,
    task: Task,
    reference: str,
    seed: int,
    folder: RunFolder,
    summary: RunSummary,
    progress: ProgressFn | None,
    ckpt: dict[str, Any] | None = None,
) -> None:
    """``pooled``: one model on the union of the sites' data; ``local-only``: each site alone.

    Both train for the same number of local epochs per round as the federated sites do.
    """
    loss_fn = task.loss_fn()
    if reference == "pooled":
        datasets = {"pooled": task.pooled()}
    else:
        datasets = {s.name: s for s in task.sites}
    models = {name: task.make_model(seed) for name in datasets}
    first = 0
    if summary.resumed:
        first = _continue_logs(folder, ckpt)
        if ckpt:
            for name, state in ckpt["state"]["models"].items():
                models[name].load_state_dict(state)
    for r in range(first, exp.rounds):
        t0 = time.perf_counter()
        for i, (name, data) in enumerate(datasets.items()):
            train_local(models[name], data.x_train, data.y_train, exp.training, loss_fn, derive_seed(seed, r, i))
        metrics = task.evaluate(models["pooled"]) if reference == "pooled" else task.evaluate_local_models(models)
        record = {
            "round": r,
            "applied": True,
            "metrics": metrics,
            "seconds": time.perf_counter() - t0,
            "bytes_up_per_site": 0,
            "bytes_down_per_site": 0,
        }
        state = {"models": {name: copy.deepcopy(m.state_dict()) for name, m in models.items()}}
        _finish_round(folder, summary, r, record, [], state, progress)
    save_model(task, models["pooled"] if reference == "pooled" else models, folder.path)
    summary.seconds_per_round = float(np.mean([r["seconds"] for r in read_rounds(folder.path)]))
    summary.stage_seconds = {"local_training": summary.seconds_per_round}
