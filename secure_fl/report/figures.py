"""Figures of a report as inline SVG (matplotlib, Agg backend; no file, no network).

Each function takes loaded runs (:class:`~secure_fl.report.runs.RunData`) and returns an SVG
string, or ``None`` when the runs recorded nothing to draw (the report then says so).
"""

from __future__ import annotations

import io
import math
from typing import Any, TypeGuard

from .runs import RunData

__all__ = ["metric_key", "metrics_figure", "epsilon_figure", "cost_figure", "views_figure", "epsilon_series"]

_COLOURS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf", "#7f7f7f"]


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"font.size": 9, "svg.fonttype": "none", "axes.spines.top": False,
                         "axes.spines.right": False, "figure.dpi": 100})
    return plt


def _rounds_axis(ax: Any) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("round")


def _svg(fig: Any) -> str:
    plt = _plt()
    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight")
    plt.close(fig)
    text = buf.getvalue()
    return text[text.index("<svg"):]


def _finite(x: Any) -> TypeGuard[float]:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def metric_key(runs: list[RunData]) -> list[str]:
    """The pooled metrics to plot: AUC (when recorded) and accuracy."""
    keys = {k for r in runs for rec in r.rounds for k in (rec.get("metrics") or {})}
    return [k for k in ("pooled/auc", "pooled/accuracy", "pooled/top1") if k in keys][:2]


def metrics_figure(runs: list[RunData]) -> str | None:
    keys = metric_key(runs)
    if not keys:
        return None
    plt = _plt()
    fig, axes = plt.subplots(1, len(keys), figsize=(4.2 * len(keys), 2.8), squeeze=False)
    for ax, key in zip(axes[0], keys):
        for i, r in enumerate(runs):
            pts = [(rec.get("round", j) + 1, (rec.get("metrics") or {}).get(key), rec.get("applied", True))
                   for j, rec in enumerate(r.rounds)]
            pts = [p for p in pts if _finite(p[1])]
            if not pts:
                continue
            c = _COLOURS[i % len(_COLOURS)]
            ax.plot([p[0] for p in pts], [p[1] for p in pts], "-o", ms=3, color=c, label=r.label)
            skipped = [p for p in pts if not p[2]]
            if skipped:
                ax.plot([p[0] for p in skipped], [p[1] for p in skipped], "o", ms=7, mfc="none", color="black",
                        label="round released nothing" if i == 0 else None)
        ax.set_title(key.replace("pooled/", "") + " on the pooled test sets")
        _rounds_axis(ax)
        ax.grid(alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.subplots_adjust(wspace=0.25)
    fig.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, -0.02), ncol=min(3, len(labels)),
               fontsize=7, frameon=False)  # below the axes; bbox_inches="tight" keeps it in the picture
    return _svg(fig)


def epsilon_series(run: RunData) -> dict[str, list[tuple[int, float]]]:
    """Per site, (round, ε spent so far) from ``rounds.jsonl`` (the ledgers' values as the run recorded them)."""
    out: dict[str, list[tuple[int, float]]] = {}
    for j, rec in enumerate(run.rounds):
        for site, spent in (rec.get("privacy_spent") or {}).items():
            eps = spent.get("epsilon") if isinstance(spent, dict) else None
            if _finite(eps):
                out.setdefault(site, []).append((int(rec.get("round", j)) + 1, float(eps)))
    return out


def _budget(run: RunData) -> float | None:
    for led in run.ledgers.values():
        b = led.get("budget")
        if b and _finite(b.get("epsilon_max")):
            return float(b["epsilon_max"])
    p = (run.protocol or {}).get("privacy") or {}
    return float(p["epsilon_budget"]) if _finite(p.get("epsilon_budget")) else None


def epsilon_figure(runs: list[RunData]) -> str | None:
    dp_runs = [r for r in runs if epsilon_series(r)]
    if not dp_runs:
        return None
    plt = _plt()
    fig, axes = plt.subplots(1, len(dp_runs), figsize=(min(4.2 * len(dp_runs), 12), 2.8), squeeze=False)
    for ax, r in zip(axes[0], dp_runs):
        series = epsilon_series(r)
        for i, (site, pts) in enumerate(sorted(series.items())):
            ax.plot([p[0] for p in pts], [p[1] for p in pts], "-o", ms=3, color=_COLOURS[i % len(_COLOURS)],
                    label=site)
        refused = [(int(rec.get("round", j)) + 1, site) for j, rec in enumerate(r.rounds)
                   for site, why in (rec.get("dropped") or {}).items() if "budget" in str(why)]
        for k, (rnd, site) in enumerate(refused):
            before = [e for x, e in series.get(site, []) if x <= rnd]
            ax.plot([rnd], [before[-1] if before else 0.0], "x", ms=9, mew=2, color="black",
                    label="round refused (budget)" if k == 0 else None)
        budget = _budget(r)
        if budget is not None:
            ax.axhline(budget, ls="--", color="#d62728", lw=1, label=f"budget ε = {budget:g}")
        target = ((r.protocol or {}).get("privacy") or {}).get("target_epsilon")
        if _finite(target):
            ax.axhline(float(target), ls=":", color="grey", lw=1, label=f"planned total ε = {target:g}")
        ax.set_title(f"ε spent per site: {r.label}", fontsize=8)
        _rounds_axis(ax)
        ax.set_ylabel("ε (cumulative)")
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6, frameon=False)
    return _svg(fig)


def _stage_seconds(run: RunData) -> dict[str, float]:
    st = run.summary.get("stage_seconds")
    if isinstance(st, dict) and st:
        return {k: float(v) for k, v in st.items() if _finite(v)}
    sums: dict[str, list[float]] = {}
    for rec in run.rounds:
        for k, v in (rec.get("stage_seconds") or {}).items():
            if _finite(v):
                sums.setdefault(k, []).append(float(v))
    return {k: sum(v) / len(v) for k, v in sums.items()}


def cost_figure(runs: list[RunData]) -> str | None:
    data = [(r, _stage_seconds(r)) for r in runs]
    data = [(r, s) for r, s in data if s]
    if not data:
        return None
    plt = _plt()
    stages = list(dict.fromkeys(k for _, s in data for k in s))
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(9.5, 0.9 + 0.22 * len(stages) * max(1, len(data)) ** 0.5))
    h = 0.8 / len(data)
    for i, (r, s) in enumerate(data):
        present = [(j + i * h, s[k] * 1000) for j, k in enumerate(stages) if s.get(k, 0.0) > 0]
        ax.barh([y for y, _ in present], [v for _, v in present], height=h, color=_COLOURS[i % len(_COLOURS)],
                label=r.label)
    ax.set_yticks([j + 0.4 - h / 2 for j in range(len(stages))], stages, fontsize=7)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlabel("ms per round (mean, log scale)")
    ax.set_title("seconds per stage")
    labels = [r.label for r, _ in data]
    up = [float(r.summary.get("bytes_up_per_site_round") or 0) / 1024 for r, _ in data]
    down = [float(r.summary.get("bytes_down_per_site_round") or 0) / 1024 for r, _ in data]
    ys = range(len(labels))
    bx.barh([y - 0.2 for y in ys], up, height=0.4, color="#1f77b4", label="up (site → aggregator)")
    bx.barh([y + 0.2 for y in ys], down, height=0.4, color="#ff7f0e", label="down")
    bx.set_yticks(list(ys), labels, fontsize=7)
    bx.invert_yaxis()
    bx.set_xlabel("KB per participating site per round")
    bx.set_title("bytes per site")
    bx.legend(fontsize=7, frameon=False)
    fig.subplots_adjust(wspace=1.0)
    if len(data) > 1:
        ax.legend(fontsize=6, frameon=False, loc="upper left", bbox_to_anchor=(0.0, -0.12 - 0.4 / len(stages)))
    return _svg(fig)


def views_figure(runs: list[RunData]) -> str | None:
    data = [(r, {k: sum(c.values()) for k, c in r.view_counts.items()}) for r in runs if r.view_counts]
    if not data:
        return None
    plt = _plt()
    kinds = sorted({k for _, d in data for k in d})
    colours = {"plain": "#d62728", "noised": "#ff7f0e", "ciphertext": "#2ca02c", "masked": "#1f77b4",
               "public": "#7f7f7f", "aggregate": "#9467bd"}
    fig, ax = plt.subplots(figsize=(8, 0.8 + 0.35 * len(data)))
    left = [0.0] * len(data)
    for k in kinds:
        vals = [float(d.get(k, 0)) for _, d in data]
        ax.barh(range(len(data)), vals, left=left, color=colours.get(k, "#bcbd22"), label=k)
        left = [a + b for a, b in zip(left, vals)]
    ax.set_yticks(range(len(data)), [r.label for r, _ in data], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("messages the aggregator carried, by what they reveal (all rounds)")
    ax.legend(fontsize=7, frameon=False, ncol=len(kinds), loc="upper center", bbox_to_anchor=(0.5, -0.45))
    return _svg(fig)
