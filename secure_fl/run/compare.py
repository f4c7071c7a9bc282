"""Several protocols on the same task, seeds and budget: the comparison table."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..tasks.base import Task
from ..tasks.registry import build_task
from .experiment import Experiment
from .federation import RunSummary, run_variant

__all__ = ["CompareResult", "run_experiment", "format_markdown", "table_rows"]


@dataclass
class CompareResult:
    experiment: Experiment
    task: Task
    runs: list[RunSummary]
    out_dir: Path


def run_experiment(
    exp: Experiment, out_root: Path, variants: list[str] | None = None, show_progress: bool = True, threads: int = 1
) -> CompareResult:
    """Run every chosen variant under every seed; write ``compare.json`` and ``compare.md``.

    ``threads`` caps torch's intra-op threads: the models here are small, and on a loaded
    2-core machine OpenMP spin-waiting made a logistic-regression epoch 200× slower with 2
    threads than with 1 (measured: 2.4 s against 0.012 s).
    """
    import torch

    torch.set_num_threads(threads)
    task = build_task(exp.task_name, exp.task_params, f"{exp.source} [task]")
    chosen = [v for v in exp.variants if variants is None or v.label in variants]
    out_dir = out_root / exp.name
    runs: list[RunSummary] = []
    total = len(chosen) * len(exp.seeds) * exp.rounds
    progress_ctx = _progress(show_progress)
    with progress_ctx as bar:
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
                        bar.update(job, advance=1, description=f"{label} round {r + 1}/{exp.rounds} {shown}")

                runs.append(run_variant(exp, task, v, seed, out_dir / _safe(v.label) / f"seed{seed}", tick))
    result = CompareResult(exp, task, runs, out_dir)
    (out_dir / "compare.json").write_text(json.dumps([r.to_json() for r in runs], indent=2, default=str))
    (out_dir / "compare.md").write_text(format_markdown(result) + "\n")
    from ..report.html import compare_folder_report  # report.html in the compare folder and each run folder

    compare_folder_report(out_dir)
    return result


def _safe(label: str) -> str:
    return "".join(c if c.isalnum() or c in "-_.=" else "_" for c in label)


class _NoBar:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def _progress(show: bool) -> Any:
    if not show:
        return _NoBar()
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), transient=False)


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
    header = ["protocol", *[k.replace("pooled/", "") for k in metric_keys], "ε per site", "KB up", "KB down", "s/round", "aborted"]
    rows = []
    for v in result.experiment.variants:
        runs = [r for r in result.runs if r.variant == v.label]
        if not runs:
            continue
        row = [v.label]
        for k in metric_keys:
            row.append(_mean_sd([r.metrics.get(k, float("nan")) for r in runs]))
        row.append(_epsilon_cell(runs) if v.reference is None else "–")
        if v.reference is None:
            row.append(f"{np.mean([r.bytes_up_per_site_round for r in runs]) / 1024:.1f}")
            row.append(f"{np.mean([r.bytes_down_per_site_round for r in runs]) / 1024:.1f}")
        else:
            row += ["–", "–"]
        row.append(f"{np.mean([r.seconds_per_round for r in runs]):.3f}")
        row.append(str(sum(r.aborted_rounds for r in runs)))
        rows.append(row)
    return header, rows


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


def format_markdown(result: CompareResult) -> str:
    header, rows = table_rows(result)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)
