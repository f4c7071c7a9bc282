"""Several protocols on the same task, seeds and budget: one run, its folder, and the comparison table.

``run_experiment`` starts a run in a new folder ``<out>/<experiment>/<run-id>/`` (see run/records.py
for the layout), holds its lock while writing, and points ``<out>/<experiment>/latest`` at it;
``resume_experiment`` continues a crashed run in its own folder.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import SecureFLError, SpecError
from ..tasks.base import Task
from ..tasks.registry import build_task
from .experiment import Experiment, Variant, check_against_task, parse_experiment, select_variants
from .federation import RunSummary, run_variant
from .provenance import data_digests, environment
from .records import REFUSALS, RunLock, new_run_id, point_latest, run_status, strict_json, utc_now, write_json

__all__ = [
    "CompareResult",
    "prepare",
    "run_experiment",
    "resume_experiment",
    "format_markdown",
    "table_rows",
    "site_rows",
    "site_table",
    "compare_json",
]


@dataclass
class CompareResult:
    experiment: Experiment
    task: Task
    runs: list[RunSummary]
    out_dir: Path
    run_id: str = ""
    variants: list[Variant] = field(default_factory=list)


def _safe(label: str) -> str:
    return "".join(c if c.isalnum() or c in "-_.=" else "_" for c in label)


def _check_run_id(run_id: str) -> str:
    if not run_id or run_id in (".", "..", "latest") or _safe(run_id) != run_id:
        raise SpecError(
            f"--run-id: expected a plain folder name (letters, digits, - _ . =), not 'latest', found {run_id!r}"
        )
    return run_id


def prepare(exp: Experiment, variants: list[str] | None = None) -> tuple[list[Variant], Task]:
    """Everything checked before a run starts: the chosen variants exist, the task builds, and the
    cross-field checks against its sites hold (``min_sites``, ``site_budgets``). Raises SpecError."""
    chosen = select_variants(exp, variants)
    task = build_task(exp.task_name, exp.task_params, f"{exp.source} [task]")
    check_against_task(exp, task, chosen)
    return chosen, task


def run_experiment(
    exp: Experiment,
    out_root: Path,
    variants: list[str] | None = None,
    show_progress: bool = True,
    threads: int = 1,
    run_id: str | None = None,
    overwrite: bool = False,
) -> CompareResult:
    """Run every chosen variant under every seed in a new run folder; write ``compare.json`` and ``compare.md``.

    ``run_id`` names the folder (default: UTC time + random hex); an existing non-empty folder is
    refused unless ``overwrite``, and a folder another live process writes is always refused.
    ``threads`` caps torch's intra-op threads: the models here are small, and on a loaded
    2-core machine OpenMP spin-waiting made a logistic-regression epoch 200× slower with 2
    threads than with 1 (measured: 2.4 s against 0.012 s).
    """
    import torch

    torch.set_num_threads(threads)
    chosen, task = prepare(exp, variants)
    exp_dir = out_root / exp.name
    run_id = _check_run_id(run_id) if run_id else new_run_id()
    out_dir = exp_dir / run_id
    out_dir.mkdir(parents=True, exist_ok=True)
    lock = RunLock(out_dir).acquire()
    try:
        leftovers = [p for p in out_dir.iterdir() if p.name != "lock"]
        if leftovers and not overwrite:
            raise SecureFLError(
                f"{out_dir} already holds a run ({run_status(out_dir)}); nothing was changed. "
                "Use another --run-id, --resume it, or --overwrite to delete it first"
            )
        for p in leftovers:
            shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
        write_json(
            out_dir / "resolved.json",
            {
                "run_id": run_id,
                "experiment": exp.resolved(),
                "chosen": [v.label for v in chosen],
                "environment": environment(),
                "data": data_digests(task),
                "task": task.describe(),
                "created_utc": utc_now(),
            },
        )
        point_latest(exp_dir, run_id)
        return _execute(exp, task, chosen, out_dir, run_id, show_progress, resume=False)
    finally:
        lock.release()


def resume_experiment(run_dir: Path, show_progress: bool = True, threads: int = 1) -> CompareResult:
    """Continue the run in ``run_dir`` (from ``resolved.json``): finished variants are kept, the others go on
    from their last finished round. Refused if its protocol files or its data changed since it started."""
    import torch

    torch.set_num_threads(threads)
    run_dir = Path(run_dir)
    try:
        resolved = json.loads((run_dir / "resolved.json").read_text())
        spec = resolved["experiment"]
    except FileNotFoundError:
        raise SecureFLError(
            f"--resume {run_dir}: no resolved.json there; give a run folder (runs/<experiment>/<run-id>)"
        ) from None
    except (json.JSONDecodeError, KeyError) as exc:
        raise SecureFLError(f"--resume {run_dir}: resolved.json is unreadable ({exc})") from exc
    raw = dict(spec["raw"])
    raw["rounds"], raw["seeds"] = spec["rounds"], spec["seeds"]
    exp = parse_experiment(raw, spec["source"], Path(spec["base_dir"]))
    then = {v["label"]: v["spec_hash"] for v in spec["variants"]}
    changed = [v.label for v in exp.variants if v.spec is not None and then.get(v.label) != v.spec.spec_hash]
    if changed:
        raise SecureFLError(
            f"--resume {run_dir}: the protocol spec of {changed} changed since the run started; start a new run"
        )
    chosen = select_variants(exp, resolved["chosen"])
    task = build_task(exp.task_name, exp.task_params, f"{exp.source} [task]")
    if data_digests(task) != resolved["data"]:
        raise SecureFLError(f"--resume {run_dir}: the sites' data differ from the run's (sha256 in resolved.json)")
    with RunLock(run_dir):
        run_id = str(resolved.get("run_id", run_dir.name))
        return _execute(exp, task, chosen, run_dir, run_id, show_progress, resume=True)


def _execute(
    exp: Experiment, task: Task, chosen: list[Variant], out_dir: Path, run_id: str, show_progress: bool, resume: bool
) -> CompareResult:
    runs: list[RunSummary] = []
    top: dict[str, Any] = {
        "run_id": run_id,
        "experiment": exp.name,
        "status": "running",
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "updated_utc": utc_now(),
        "runs": [],
    }
    write_json(out_dir / "summary.json", top)
    total = len(chosen) * len(exp.seeds) * exp.rounds
    try:
        with _progress(show_progress) as bar:
            job = bar.add_task("starting", total=total) if bar else None
            for v in chosen:
                for seed in exp.seeds:
                    label = f"{v.label} seed {seed}"

                    def tick(r: int, rec: dict[str, Any], label: str = label) -> None:
                        if bar is not None:
                            m = rec.get("metrics", {})
                            key = f"pooled/{task.primary_metric}"
                            val = m.get(key)
                            shown = f"{key}={val:.3f}" if isinstance(val, float) and not math.isnan(val) else ""
                            bar.update(
                                job,  # called during this run: done is this run's count
                                completed=done + r + 1,  # noqa: B023
                                description=f"{label} round {r + 1}/{exp.rounds} {shown}",
                            )

                    done = len(runs) * exp.rounds
                    run = run_variant(exp, task, v, seed, out_dir / _safe(v.label) / f"seed{seed}", tick, resume=resume)
                    runs.append(run)
                    if bar is not None:
                        bar.update(job, completed=len(runs) * exp.rounds)
                    top["runs"] = [
                        {"variant": r.variant, "seed": r.seed, "status": r.status, "path": r.path} for r in runs
                    ]
                    top["updated_utc"] = utc_now()
                    write_json(out_dir / "summary.json", top)
        top["status"] = "finished"
    except KeyboardInterrupt:
        top["status"] = "interrupted"
        raise
    except BaseException as exc:
        top["status"] = f"failed: {type(exc).__name__}: {exc}"
        raise
    finally:
        top["updated_utc"] = utc_now()
        write_json(out_dir / "summary.json", top)
    result = CompareResult(exp, task, runs, out_dir, run_id, chosen)
    (out_dir / "compare.json").write_text(compare_json(result))
    (out_dir / "compare.md").write_text(format_markdown(result) + "\n")
    from ..report.html import compare_folder_report  # report.html in the compare folder and each run folder

    compare_folder_report(out_dir)
    return result


class _NoBar:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def _progress(show: bool) -> Any:
    if not show:
        return _NoBar()
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        transient=False,
    )


def _mean_sd(values: list[float]) -> str:
    vals = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not vals:
        return "–"
    if len(vals) == 1:
        return f"{vals[0]:.3f}"
    return f"{np.mean(vals):.3f} ± {np.std(vals, ddof=1):.3f}"


def table_rows(result: CompareResult) -> tuple[list[str], list[list[str]]]:
    task = result.task
    metric_keys = [f"pooled/{task.primary_metric}", f"site-mean/{task.primary_metric}"]
    if task.primary_metric != "accuracy":
        metric_keys.append("pooled/accuracy")
    extra = sorted({k for r in result.runs for k in r.metrics if k.startswith("gallery/")})
    if any(k.endswith("/top5") and k.startswith("pooled") for r in result.runs for k in r.metrics):
        metric_keys.append("pooled/top5")
    metric_keys += extra
    header = [
        "protocol",
        "aggregator sees",
        *[k.replace("pooled/", "") for k in metric_keys],
        "ε per site",
        "ε for",
        "KB up",
        "KB down",
        "s/round",
        "aborted",
    ]
    rows = []
    for v in result.experiment.variants:
        runs = [r for r in result.runs if r.variant == v.label]
        if not runs:
            continue
        spec = getattr(v, "spec", None)
        row = [v.label, spec.threat_model.aggregator_sees if spec is not None else "–"]
        for k in metric_keys:
            row.append(_mean_sd([r.metrics.get(k, float("nan")) for r in runs]))
        row.append(_epsilon_cell(runs) if v.reference is None else "–")
        row.append(_adjacency_cell(runs) if v.reference is None else "–")
        if v.reference is None:
            row.append(f"{np.mean([r.bytes_up_per_site_round for r in runs]) / 1024:.1f}")
            row.append(f"{np.mean([r.bytes_down_per_site_round for r in runs]) / 1024:.1f}")
        else:
            row += ["–", "–"]
        row.append(f"{np.mean([r.seconds_per_round for r in runs]):.3f}")
        row.append(str(sum(r.aborted_rounds for r in runs)))
        rows.append(row)
    return header, rows


def guarantee_lines(result: CompareResult) -> list[tuple[str, str]]:
    """(protocol, its first stated guarantee) for every protocol in the table: what each row buys."""
    out = []
    for v in result.experiment.variants:
        spec = getattr(v, "spec", None)
        if spec is not None and any(r.variant == v.label for r in result.runs):
            first = spec.threat_model.guarantees[0] if spec.threat_model.guarantees else spec.summary
            out.append((v.label, first))
    return out


def _epsilon_cell(runs: list[RunSummary]) -> str:
    """ε spent per site at the end of the run (PLD unless the spec says otherwise), over seeds.

    One number when every site spent the same; ``min–max (site: ε, ...)`` otherwise.
    """
    per_site: dict[str, list[float]] = {}
    for r in runs:
        for site, spent in r.epsilon.items():
            eps = spent.get("epsilon")
            if isinstance(eps, (int, float)) and not math.isnan(eps):
                per_site.setdefault(site, []).append(float(eps))
    if not per_site:
        return "–"
    means = {s: float(np.mean(v)) for s, v in per_site.items()}
    lo, hi = min(means.values()), max(means.values())
    if hi - lo < 0.01:
        return f"{hi:.3f}"
    return f"{lo:.2f}–{hi:.2f} (" + ", ".join(f"{s}: {e:.2f}" for s, e in means.items()) + ")"


def _adjacency_cell(runs: list[RunSummary]) -> str:
    """The neighbouring relation the ε is for (e.g. "add/remove one patient"): ε of different rows
    compare only under the same relation and unit."""
    found = sorted({str(s["adjacency"]) for r in runs for s in r.epsilon.values() if s.get("adjacency")})
    return ", ".join(found) or "–"


def site_table(result: CompareResult) -> dict[str, dict[str, dict[str, Any]]]:
    """Per protocol and site, summed over seeds: rounds planned, taken part, released, refused by reason,
    not picked, and ε at the end (mean over seeds; ``None`` when the site was never charged)."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for v in result.experiment.variants:
        runs = [r for r in result.runs if r.variant == v.label and r.sites]
        if v.reference is not None or not runs:
            continue
        per: dict[str, dict[str, Any]] = {}
        for r in runs:
            for site, st in r.sites.items():
                acc = per.setdefault(
                    site,
                    {
                        "rounds": 0,
                        "took_part": 0,
                        "released": 0,
                        "not_picked": 0,
                        "round_aborted": 0,
                        "refused": {k: 0 for k in REFUSALS},
                        "epsilon_per_seed": [],
                        "last_refusal": None,
                    },
                )
                acc["rounds"] += r.rounds_done
                for k in ("took_part", "released", "not_picked", "round_aborted"):
                    acc[k] += int(st.get(k, 0))
                for k in REFUSALS:
                    acc["refused"][k] += int(st.get("refused", {}).get(k, 0))
                acc["epsilon_per_seed"].append(st.get("epsilon"))
                acc["last_refusal"] = st.get("last_refusal") or acc["last_refusal"]
        for acc in per.values():
            eps = [e for e in acc["epsilon_per_seed"] if isinstance(e, (int, float)) and math.isfinite(e)]
            acc["epsilon"] = float(np.mean(eps)) if eps else None
        out[v.label] = per
    return out


SITE_LEGEND = (
    "rounds taken part (of rounds run) and of those released; rounds refused because the site's "
    "budget was exhausted, it dropped out, or its update was rejected; rounds not picked; rounds that "
    "aborted before any sum; ε spent at the end (mean over seeds; – if never charged)"
)


def site_rows(result: CompareResult) -> tuple[list[str], list[list[str]]]:
    """The per-site table: who took part, who was refused and why, and what each spent."""
    header = [
        "protocol",
        "site",
        "took part",
        "released",
        "budget",
        "dropped",
        "rejected",
        "not picked",
        "aborted",
        "ε",
    ]
    rows = []
    for label, per in site_table(result).items():
        for site, acc in per.items():
            rows.append(
                [
                    label,
                    site,
                    f"{acc['took_part']}/{acc['rounds']}",
                    str(acc["released"]),
                    *[str(acc["refused"][k]) for k in REFUSALS],
                    str(acc["not_picked"]),
                    str(acc["round_aborted"]),
                    "–" if acc["epsilon"] is None else f"{acc['epsilon']:.3f}",
                ]
            )
    return header, rows


def compare_json(result: CompareResult) -> str:
    """``compare.json``: strict JSON (NaN -> null) with the runs, the table as shown, and the per-site table."""
    header, rows = table_rows(result)
    site_header, srows = site_rows(result)
    return strict_json(
        {
            "run_id": result.run_id,
            "experiment": result.experiment.name,
            "task": result.task.describe(),
            "seeds": result.experiment.seeds,
            "rounds": result.experiment.rounds,
            "runs": [r.to_json() for r in result.runs],
            "table": {"header": header, "rows": rows},
            "sites": site_table(result),
            "site_table": {"header": site_header, "rows": srows},
        },
        indent=2,
    )


def _markdown(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(r) + " |" for r in rows]


def format_markdown(result: CompareResult) -> str:
    lines = _markdown(*table_rows(result))
    site_header, srows = site_rows(result)
    if srows:
        lines += ["", f"Per site, summed over seeds: {SITE_LEGEND}", ""]
        lines += _markdown(site_header, srows)
    return "\n".join(lines)
