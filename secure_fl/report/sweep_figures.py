"""Figures of a sweep (PNG files beside its ``results.csv``): metric against ε per protocol, and costs.

- ``metric-vs-<key>.png``: the primary metric against the swept privacy key (``target_epsilon``,
  else the first numeric swept key), one line per protocol and other setting: mean over seeds,
  a band of ±1 sd and every seed as a dot; a protocol without that key (plain FedAvg, the
  references) is a dashed horizontal line (its mean over seeds, ε = ∞).
- ``cost.png``: KB sent up per site and round, and seconds per round, per protocol (mean over cells).
- ``rounds.png``: the primary metric over rounds (from each cell's ``run/rounds.jsonl``), one panel per
  value of the x key (no-DP protocols dashed in every panel), mean over seeds with a ±1 sd band.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["sweep_figures", "x_key", "series", "mean_sd", "round_curves"]

_COLOURS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf", "#7f7f7f"]
_FIXED = {"cell", "protocol", "seed", "status", "rounds", "primary_metric", "epsilon_spent_max", "adjacency",
          "bytes_up_per_site_round", "bytes_down_per_site_round", "seconds_per_round", "aborted_rounds",
          "wall_seconds"}


#: fixed colours for the catalogue's protocols, so one protocol has one colour in every panel and figure
_KNOWN = {"plain-fedavg": "#7f7f7f", "dp-sgd-local": "#2ca02c", "dp-fedavg-central": "#d62728",
          "dp-distributed-ckks": "#1f77b4", "dp-distributed-ckks-head": "#1f77b4", "dp-fedavg-secagg": "#ff7f0e",
          "dp-distributed-secagg": "#9467bd", "pooled": "#000000", "local-only": "#8c564b"}


def _colour(label: str, i: int) -> str:
    """A protocol's fixed colour (other settings in the label, e.g. ``unit=person``, get a palette colour)."""
    return _KNOWN.get(label, _COLOURS[(i + 3) % len(_COLOURS)])


def _num(v: Any) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


def _swept(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if "." in k and k.split("/")[0] == k and k not in _FIXED and k not in keys]
    return keys


def x_key(rows: Sequence[Mapping[str, Any]]) -> str | None:
    """The key drawn on the x axis: ``privacy.target_epsilon`` when swept, else the first numeric swept key."""
    keys = _swept(rows)
    if "privacy.target_epsilon" in keys:
        return "privacy.target_epsilon"
    for k in keys:
        if all(not math.isnan(_num(r[k])) for r in rows if r.get(k, "") != ""):
            return k
    return None


def series(rows: Sequence[Mapping[str, Any]], x: str, metric: str) -> dict[str, dict[float, list[float]]]:
    """label -> x value -> the seeds' metric values; label = protocol plus the other swept settings.
    Rows without ``x`` get x = inf (no DP / not swept)."""
    others = [k for k in _swept(rows) if k != x]
    out: dict[str, dict[float, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        extra = " ".join(f"{k.split('.')[-1]}={r[k]}" for k in others if r.get(k, "") != "")
        label = f"{r['protocol']} {extra}".strip()
        xv = _num(r.get(x, "")) if r.get(x, "") != "" else math.inf
        out[label][xv].append(_num(r.get(metric)))
    return {k: dict(v) for k, v in out.items()}


def mean_sd(vals: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation of the non-NaN values (0 for one value, NaN for none)."""
    vals = [v for v in vals if not math.isnan(v)]
    if not vals:
        return math.nan, math.nan
    mean = sum(vals) / len(vals)
    sd = math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1)) if len(vals) > 1 else 0.0
    return mean, sd


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def metric_figure(rows: Sequence[Mapping[str, Any]], x: str, metric: str, path: Path, title: str,
                  ax: Any = None) -> None:
    """Draw ``metric`` against ``x`` per protocol (into ``ax``, or a new figure saved at ``path``)."""
    plt = _plt()
    own = ax is None
    if own:
        fig, ax = plt.subplots(figsize=(6.0, 4.2))
    data = series(rows, x, metric)
    finite = sorted({v for s in data.values() for v in s if math.isfinite(v)})
    for i, (label, by_x) in enumerate(sorted(data.items())):
        colour = _colour(label, i)
        xs = sorted(v for v in by_x if math.isfinite(v))
        if not xs:
            mean, sd = mean_sd(by_x.get(math.inf, []))
            ax.axhline(mean, color=colour, ls="--", label=f"{label} (no DP)")
            if sd > 0:
                ax.axhspan(mean - sd, mean + sd, color=colour, alpha=0.1)
            continue
        stats = [mean_sd(by_x[v]) for v in xs]
        ax.plot(xs, [s[0] for s in stats], "o-", color=colour, label=label)
        ax.fill_between(xs, [s[0] - s[1] for s in stats], [s[0] + s[1] for s in stats], color=colour, alpha=0.18)
        for v in xs:
            ax.scatter([v] * len(by_x[v]), by_x[v], s=9, color=colour, alpha=0.55)
    if finite and min(finite) > 0:
        ax.set_xscale("log", base=2)
        ax.set_xticks(finite, [f"{v:g}" for v in finite])
    ax.set_xlabel("target ε over all rounds" if x == "privacy.target_epsilon" else x)
    ax.set_ylabel(metric)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    ax.set_title(title, fontsize=9)
    if own:
        fig.tight_layout()
        fig.savefig(path, dpi=130)
        plt.close(fig)


def cost_figure(rows: Sequence[Mapping[str, Any]], path: Path, title: str) -> None:
    plt = _plt()
    by: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    for r in rows:
        by[str(r["protocol"])].append(r)
    names = list(by)
    kb = [mean_sd([_num(r["bytes_up_per_site_round"]) / 1024 for r in by[n]])[0] for n in names]
    sec = [mean_sd([_num(r["seconds_per_round"]) for r in by[n]])[0] for n in names]
    fig, axes = plt.subplots(1, 2, figsize=(9.0, 3.6))
    for ax, vals, label in ((axes[0], kb, "KB up per site and round"), (axes[1], sec, "seconds per round")):
        ax.barh(names, vals, color=[_COLOURS[i % len(_COLOURS)] for i in range(len(names))])
        ax.set_xlabel(label)
        pos = [v for v in vals if v > 0]
        if pos and min(pos) > 0 and max(pos) / min(pos) > 100:
            ax.set_xscale("log")
        ax.grid(alpha=0.3, axis="x")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def round_curves(rows: Sequence[Mapping[str, Any]], folder: Path, x: str | None,
                 metric: str) -> dict[float, dict[str, list[list[float]]]]:
    """x value -> label -> one list per seed of ``metric`` after each round (NaN where a round released
    nothing), read from ``folder/cells/<cell>/run/rounds.jsonl``; cells without x are under ``inf``."""
    xk = x or ""
    others = [k for k in _swept(rows) if k != xk]
    out: dict[float, dict[str, list[list[float]]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        path = folder / "cells" / str(r["cell"]) / "run" / "rounds.jsonl"
        if not path.is_file():
            continue
        curve = []
        for line in path.read_text().splitlines():
            if line.strip():
                curve.append(_num((json.loads(line).get("metrics") or {}).get(metric)))
        extra = " ".join(f"{k.split('.')[-1]}={r[k]}" for k in others if r.get(k, "") != "")
        xv = _num(r.get(xk, "")) if x and r.get(xk, "") != "" else math.inf
        out[xv][f"{r['protocol']} {extra}".strip()].append(curve)
    return {k: dict(v) for k, v in out.items()}


def rounds_figure(rows: Sequence[Mapping[str, Any]], folder: Path, x: str | None, metric: str, path: Path,
                  title: str) -> bool:
    """Draw :func:`round_curves` (one panel per x value); ``False`` when no cell has a round record."""
    curves = round_curves(rows, folder, x, metric)
    if not curves:
        return False
    plt = _plt()
    xs = sorted(v for v in curves if math.isfinite(v)) or [math.inf]
    fig, axes = plt.subplots(1, len(xs), figsize=(3.2 * len(xs) + 0.8, 3.4), sharey=True, squeeze=False)
    labels = sorted({label for by in curves.values() for label in by})
    colour = {label: _colour(label, i) for i, label in enumerate(labels)}
    for ax, xv in zip(axes[0], xs):
        panels = [(curves.get(xv, {}), "-")] + ([(curves[math.inf], "--")] if math.isfinite(xv) and math.inf in curves
                                                else [])
        for by_label, style in panels:
            for label, seeds in by_label.items():
                n = max(len(c) for c in seeds)
                stats = [mean_sd([c[i] for c in seeds if i < len(c)]) for i in range(n)]
                rounds = list(range(1, n + 1))
                ax.plot(rounds, [m for m, _ in stats], style, color=colour[label],
                        label=label if style == "-" else f"{label} (no DP)")
                ax.fill_between(rounds, [m - sd for m, sd in stats], [m + sd for m, sd in stats],
                                color=colour[label], alpha=0.15)
        name = "ε" if x == "privacy.target_epsilon" else (x or "").split(".")[-1]
        ax.set_title(f"{name} = {xv:g}" if math.isfinite(xv) else "no swept value", fontsize=8)
        ax.set_xlabel("round")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel(metric)
    axes[0][-1].legend(fontsize=6, loc="best")
    fig.suptitle(f"{title}: {metric} over rounds (mean ± sd over seeds)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return True


def sweep_figures(rows: Sequence[Mapping[str, Any]], folder: Path, title: str) -> list[Path]:
    """Write the sweep's figures into ``folder``; returns their paths."""
    finished = [r for r in rows if r.get("status") == "finished"]
    if not finished:
        return []
    out = []
    metric = str(finished[0]["primary_metric"])
    x = x_key(finished)
    if x is not None:
        path = folder / f"metric-vs-{x.split('.')[-1]}.png"
        metric_figure(finished, x, metric, path, title)
        out.append(path)
    path = folder / "cost.png"
    cost_figure(finished, path, title)
    out.append(path)
    path = folder / "rounds.png"
    if rounds_figure(finished, folder, x, metric, path, title):
        out.append(path)
    return out
