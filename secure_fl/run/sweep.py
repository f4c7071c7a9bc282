"""Sweeps: an experiment run over a grid of settings × protocols × seeds, one folder per cell, resumable.

A *grid* maps dotted keys to lists of values. A key names a value anywhere a run reads one:

- ``rounds`` (a top-level key of the experiment);
- ``task.<key>``, ``training.<key>``, ``federation.<key>``: the experiment's own tables;
- ``<table>.<key>`` for any other table (``privacy``, ``aggregation``, ``secure_sum``, ...): the
  protocol specs. Such a key applies to the listed protocols that have that table (``privacy.*``
  leaves plain FedAvg alone: it is drawn at ε = ∞); a key no listed protocol has is refused.

The grid comes from the experiment's ``[sweep]`` table and from ``--set KEY=V1,V2,...`` (which
replaces the table's values for that key). Every cell is validated before the first one runs, so a
misspelt key or a value out of range fails at once with the key named, not an hour in.

Layout of a sweep folder (``runs/<experiment>/sweep`` unless given)::

    cells/<cell-id>/run/        the run folder of one cell (rounds.jsonl, summary.json, ...)
    cells/<cell-id>/cell.json   written last, when the cell finished: its row of results.csv
    sweep.json                  the grid, the protocols, the seeds and the cells planned
    results.csv                 one row per finished cell
    *.png                       figures (see :mod:`secure_fl.report.sweep_figures`)

A cell's id is readable (protocol, settings, seed) plus a digest of its whole resolved
configuration, so re-running the same sweep skips every finished cell, continues an interrupted
one from its last checkpointed round, and a changed setting (another learning rate, a changed
protocol file) makes new cells instead of reusing stale ones.
"""

from __future__ import annotations

import copy
import csv
import hashlib
import itertools
import json
import math
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import tomllib

from ..errors import SecureFLError, SpecError
from ..protocol.spec import parse_protocol
from ..tasks.base import Task
from .experiment import REFERENCES, Experiment, Variant, _resolve_protocol, _set_dotted, parse_experiment
from .records import strict_json, utc_now, write_json

__all__ = ["EXPERIMENT_TABLES", "Cell", "parse_set", "parse_value", "grid_from", "plan_cells", "run_sweep",
           "read_results", "write_results", "SweepResult"]

#: tables of the experiment spec itself; every other table of a dotted key is a protocol table
EXPERIMENT_TABLES = ("task", "training", "federation")
#: top-level experiment keys a sweep may change (seeds are the sweep's own axis: ``--seeds``)
TOP_LEVEL_KEYS = ("rounds",)


def parse_value(text: str) -> Any:
    """One grid value from the command line: a TOML literal (``1``, ``0.5``, ``inf``, ``true``, ``"x"``)
    or, failing that, the bare text as a string (``--set training.optimizer=sgd,adam``)."""
    text = text.strip()
    if not text:
        raise SpecError("--set: empty value (write KEY=V1,V2 with no empty item)")
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def parse_set(items: Sequence[str]) -> dict[str, list[Any]]:
    """``["privacy.target_epsilon=1,2,4", "training.lr=0.1,0.5"]`` -> ``{key: [values]}``."""
    grid: dict[str, list[Any]] = {}
    for item in items:
        key, sep, values = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise SpecError(f"--set {item!r}: expected KEY=V1,V2,... (e.g. privacy.target_epsilon=1,2,4,8)")
        if key in grid:
            raise SpecError(f"--set {key}: given twice; list all its values once (KEY=V1,V2,...)")
        grid[key] = [parse_value(v) for v in values.split(",")]
    return grid


def grid_from(exp: Experiment, overrides: Mapping[str, list[Any]] | None = None) -> dict[str, list[Any]]:
    """The experiment's ``[sweep]`` table with ``overrides`` (from ``--set``) replacing or adding keys."""
    grid = {str(k): list(v) for k, v in dict(exp.raw.get("sweep", {})).items()}
    grid.update({k: list(v) for k, v in (overrides or {}).items()})
    return grid


@dataclass
class Cell:
    """One run of a sweep: a protocol (or reference) with the settings that apply to it, under one seed."""

    protocol: str
    settings: dict[str, Any]
    seed: int
    experiment: Experiment
    variant: Variant
    digest: str = ""

    @property
    def label(self) -> str:
        shown = " ".join(f"{k.split('.')[-1]}={_fmt(v)}" for k, v in self.settings.items())
        return f"{self.protocol} {shown} seed {self.seed}".replace("  ", " ")

    @property
    def cell_id(self) -> str:
        parts = [self.protocol] + [f"{k}={_fmt(v)}" for k, v in self.settings.items()] + [f"seed{self.seed}"]
        readable = "".join(c if c.isalnum() or c in "-_.=" else "_" for c in ",".join(parts))
        return f"{readable}-{self.digest[:10]}"


def _fmt(v: Any) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def _check_grid(grid: Mapping[str, list[Any]], protocol_tables: Mapping[str, set[str]]) -> None:
    for key, values in grid.items():
        where = f"sweep key {key!r}"
        if not isinstance(values, list) or not values:
            raise SpecError(f"{where}: expected a non-empty list of values, found {values!r}")
        if len(set(map(repr, values))) != len(values):
            raise SpecError(f"{where}: a value is listed twice in {values!r}")
        if "." not in key:
            if key not in TOP_LEVEL_KEYS:
                raise SpecError(f"{where}: unknown key; a sweep key is {list(TOP_LEVEL_KEYS)} or a dotted key "
                                f"TABLE.KEY into {list(EXPERIMENT_TABLES)} or a protocol table (e.g. "
                                "privacy.target_epsilon); seeds are swept with --seeds")
            continue
        table = key.split(".")[0]
        if table in EXPERIMENT_TABLES:
            continue
        having = [p for p, tables in protocol_tables.items() if table in tables]
        if not having:
            known = sorted({t for tables in protocol_tables.values() for t in tables})
            raise SpecError(f"{where}: no listed protocol has a table {table!r}, so the key would change nothing; "
                            f"the experiment tables are {list(EXPERIMENT_TABLES)} and the protocols' tables {known}")
        for j, v in enumerate(values):
            if isinstance(v, float) and not math.isfinite(v):
                raise SpecError(f"{where}[{j}]: {v!r} is not a setting of a protocol; ε = ∞ is the protocol without "
                                "DP: list plain-fedavg in the experiment (it is drawn at ε = ∞)")


def _digest(cell_exp: Experiment, variant: Variant, seed: int) -> str:
    resolved = cell_exp.resolved()
    for k in ("source", "base_dir", "raw", "summary", "name"):
        resolved.pop(k, None)
    resolved["protocol"] = variant.spec.raw if variant.spec is not None else variant.reference
    resolved["seed"] = seed
    return hashlib.sha256(strict_json(resolved, sort_keys=True).encode()).hexdigest()


def plan_cells(exp: Experiment, grid: Mapping[str, list[Any]], protocols: Sequence[str] | None = None,
               seeds: Sequence[int] | None = None) -> list[Cell]:
    """Every cell of the sweep, each parsed and validated (SpecError naming the sweep key otherwise).

    ``protocols`` keeps only those of the experiment's list (by name as listed or by spec name).
    """
    listed = [str(p) for p in exp.raw.get("protocols", [])]
    raws: dict[str, dict[str, Any] | None] = {}
    for i, p in enumerate(listed):
        if p in REFERENCES:
            raws[p] = None
            continue
        resolved, _ = _resolve_protocol(p, f"{exp.source}.protocols[{i}]", exp.base_dir)
        raws[str(resolved.get("name", p))] = resolved
    if protocols:
        unknown = [p for p in protocols if p not in raws]
        if unknown:
            raise SpecError(f"--protocol {unknown}: not in {exp.source} (it lists {list(raws)})")
        raws = {p: r for p, r in raws.items() if p in protocols}
    tables = {p: {t for t, v in (r or {}).items() if isinstance(v, dict)} for p, r in raws.items()}
    _check_grid(grid, tables)
    seeds = list(seeds) if seeds is not None else list(exp.seeds)
    cells: list[Cell] = []
    for name, raw in raws.items():
        own = [k for k in grid if "." not in k or k.split(".")[0] in EXPERIMENT_TABLES
               or (raw is not None and k.split(".")[0] in raw)]
        for combo in itertools.product(*(grid[k] for k in own)):
            settings = dict(zip(own, combo))
            for seed in seeds:
                cells.append(_make_cell(exp, name, raw, settings, seed))
    return cells


def _make_cell(exp: Experiment, name: str, raw: dict[str, Any] | None, settings: dict[str, Any], seed: int) -> Cell:
    data = copy.deepcopy(exp.raw)
    data.pop("sweep", None)
    data["protocols"] = [name if raw is None else _listed_as(exp, name)]
    data["seeds"] = [seed]
    patched = copy.deepcopy(raw) if raw is not None else None
    for key, value in settings.items():
        where = f"sweep key {key!r} = {value!r}"
        if "." not in key or key.split(".")[0] in EXPERIMENT_TABLES:
            _set_dotted(data, key, value, where)
        elif patched is not None:
            _set_dotted(patched, key, value, where)
    try:
        cell_exp = parse_experiment(data, f"{exp.source} (sweep cell {name} {settings})", exp.base_dir)
        if patched is None:
            variant = cell_exp.variants[0]
        else:
            shown = ", ".join(f"{k} = {v!r}" for k, v in settings.items() if k.split(".")[0] in patched)
            spec = parse_protocol(patched, f"{name} with {shown}" if shown else name)
            overrides = {k: v for k, v in settings.items() if k.split(".")[0] in patched}
            variant = Variant(spec.name, spec, overrides=overrides)
            cell_exp.variants = [variant]
    except SpecError as exc:
        keys = ", ".join(f"{k} = {v!r}" for k, v in settings.items())
        raise SpecError(f"sweep cell {name} [{keys}]: {exc}") from exc
    return Cell(name, settings, seed, cell_exp, variant, _digest(cell_exp, variant, seed))


def _listed_as(exp: Experiment, name: str) -> str:
    """The protocol entry of the experiment's list whose spec is named ``name`` (a path or catalogue name)."""
    for i, p in enumerate(exp.raw.get("protocols", [])):
        if p == name:
            return str(p)
        if str(p).endswith(".toml"):
            raw, _ = _resolve_protocol(str(p), f"{exp.source}.protocols[{i}]", exp.base_dir)
            if raw.get("name") == name:
                return str(p)
    return name


@dataclass
class SweepResult:
    folder: Path
    rows: list[dict[str, Any]]
    ran: int = 0
    skipped: int = 0
    failed: list[str] = field(default_factory=list)
    figures: list[Path] = field(default_factory=list)


def cell_row(cell: Cell, summary: Any, task: Task, seconds: float) -> dict[str, Any]:
    """The results.csv row of a finished cell: its settings, metrics, ε spent, bytes and seconds per round."""
    row: dict[str, Any] = {"cell": cell.cell_id, "protocol": cell.protocol, "seed": cell.seed}
    row.update({k: v for k, v in cell.settings.items()})
    row["status"] = summary.status
    row["rounds"] = summary.rounds_done
    row["primary_metric"] = f"pooled/{task.primary_metric}"
    for k in sorted(summary.metrics):
        if k.startswith(("pooled/", "site-mean/", "gallery/")):
            row[k] = summary.metrics[k]
    found = [v.get("epsilon") for v in summary.epsilon.values() if isinstance(v, dict)]
    spent = [float(e) for e in found if isinstance(e, (int, float)) and math.isfinite(e)]
    row["epsilon_spent_max"] = max(spent) if spent else ""
    units = sorted({str(v.get("adjacency")) for v in summary.epsilon.values()
                    if isinstance(v, dict) and v.get("adjacency")})
    row["adjacency"] = "; ".join(units)
    row["bytes_up_per_site_round"] = summary.bytes_up_per_site_round
    row["bytes_down_per_site_round"] = summary.bytes_down_per_site_round
    row["seconds_per_round"] = summary.seconds_per_round
    row["aborted_rounds"] = summary.aborted_rounds
    row["wall_seconds"] = round(seconds, 3)
    return row


def read_results(folder: Path) -> list[dict[str, Any]]:
    """The rows of every finished cell under ``folder/cells`` (from their ``cell.json``)."""
    rows = []
    for path in sorted((folder / "cells").glob("*/cell.json")):
        try:
            rows.append(json.loads(path.read_text())["row"])
        except (json.JSONDecodeError, KeyError) as exc:
            raise SecureFLError(f"{path}: unreadable cell record ({exc}); delete the file to rerun the cell") from exc
    return rows


def write_results(rows: Sequence[Mapping[str, Any]], path: Path) -> None:
    """``results.csv``: one row per cell, columns in first-seen order (missing values empty)."""
    columns: list[str] = []
    for r in rows:
        columns += [k for k in r if k not in columns]
    tmp = path.with_suffix(".tmp")
    with tmp.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=columns, restval="")
        w.writeheader()
        for r in rows:
            w.writerow({k: ("" if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()})
    tmp.replace(path)


def _duration(s: float) -> str:
    s = int(round(s))
    return f"{s // 3600} h {s % 3600 // 60:02d} min" if s >= 3600 else f"{s // 60} min {s % 60:02d} s"


def run_sweep(
    exp: Experiment, grid: Mapping[str, list[Any]], folder: Path, protocols: Sequence[str] | None = None,
    seeds: Sequence[int] | None = None, threads: int = 1, figures: bool = True, log: TextIO | None = sys.stderr,
    run_cell: Callable[[Cell, Task, Path], Any] | None = None, collect_only: bool = False,
) -> SweepResult:
    """Run every cell not yet finished in ``folder``; write ``results.csv`` (and figures) after each cell.

    A cell that fails is recorded in the log and in ``failed`` and the others go on (a rerun retries
    it); ``KeyboardInterrupt`` stops the sweep, and a rerun continues the interrupted cell from its
    last checkpointed round. ``run_cell`` replaces the federation (tests). ``collect_only``: run
    nothing, only gather the finished cells into ``results.csv`` and the figures (e.g. while other
    processes still work on the same sweep folder).
    """
    import torch

    from ..tasks.registry import build_task
    from .federation import run_variant

    torch.set_num_threads(threads)
    cells = plan_cells(exp, grid, protocols, seeds)
    ids = [c.cell_id for c in cells]
    if len(set(ids)) != len(ids):
        raise SpecError(f"sweep: two cells with the same configuration: {sorted({i for i in ids if ids.count(i) > 1})}")
    folder.mkdir(parents=True, exist_ok=True)
    write_json(folder / "sweep.json", {
        "experiment": exp.name, "source": exp.source, "grid": dict(grid), "seeds": list(seeds or exp.seeds),
        "protocols": sorted({c.protocol for c in cells}), "cells": ids, "updated_utc": utc_now(),
    })
    tasks: dict[str, Task] = {}

    def task_for(cell: Cell) -> Task:
        key = strict_json({"name": cell.experiment.task_name, **cell.experiment.task_params}, sort_keys=True)
        if key not in tasks:
            tasks[key] = build_task(cell.experiment.task_name, cell.experiment.task_params,
                                    f"{cell.experiment.source} [task]")
        return tasks[key]

    def default_run(cell: Cell, task: Task, run_dir: Path) -> Any:
        from .experiment import check_against_task

        check_against_task(cell.experiment, task, [cell.variant])
        return run_variant(cell.experiment, task, cell.variant, cell.seed, run_dir, resume=run_dir.exists())

    runner = run_cell or default_run
    result = SweepResult(folder, [])
    order = list(dict.fromkeys(c.seed for c in cells))  # seed by seed: a sweep cut short has every setting once
    todo = sorted((c for c in cells if not _finished(folder / "cells" / c.cell_id)), key=lambda c: order.index(c.seed))
    if collect_only:
        _say(log, f"sweep {exp.name}: collecting only; {len(todo)} of {len(cells)} cells not finished")
        todo = []
    result.skipped = len(cells) - len(todo)
    _say(log, f"sweep {exp.name}: {len(cells)} cells ({len(todo)} to run, {result.skipped} finished) in {folder}")
    spent: list[float] = []
    for i, cell in enumerate(todo):
        cell_dir = folder / "cells" / cell.cell_id
        cell_dir.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        try:
            task = task_for(cell)
            summary = runner(cell, task, cell_dir / "run")
        except KeyboardInterrupt:
            _say(log, f"interrupted in {cell.label}; rerun the same command to continue")
            raise
        except Exception as exc:  # one failing cell never costs the others their run; a rerun retries it
            result.failed.append(f"{cell.label}: {type(exc).__name__}: {exc}")
            _say(log, f"[{i + 1}/{len(todo)}] {cell.label}: FAILED ({type(exc).__name__}: {exc})")
            continue
        seconds = time.monotonic() - started
        spent.append(seconds)
        row = cell_row(cell, summary, task, seconds)
        write_json(cell_dir / "cell.json", {"row": row, "digest": cell.digest, "finished_utc": utc_now()})
        result.ran += 1
        left = len(todo) - i - 1
        eta = f"ETA {_duration(sum(spent) / len(spent) * left)}" if left else "done"
        metric = row.get(row["primary_metric"])
        shown = f"{row['primary_metric']}={metric:.3f}" if isinstance(metric, float) else ""
        _say(log, f"[{i + 1}/{len(todo)}] {cell.label}: {shown} ({_duration(seconds)}); {left} left, {eta}")
        result.rows = [r for r in read_results(folder) if r["cell"] in set(ids)]
        write_results(result.rows, folder / "results.csv")
    result.rows = [r for r in read_results(folder) if r["cell"] in set(ids)]
    if result.rows:
        write_results(result.rows, folder / "results.csv")
        if figures:
            from ..report.sweep_figures import sweep_figures

            result.figures = sweep_figures(result.rows, folder, title=exp.name)
    return result


def _finished(cell_dir: Path) -> bool:
    path = cell_dir / "cell.json"
    if not path.is_file():
        return False
    try:
        return str(json.loads(path.read_text())["row"].get("status")) == "finished"
    except (json.JSONDecodeError, KeyError):
        return False


def _say(log: TextIO | None, text: str) -> None:
    if log is not None:
        print(text, file=log, flush=True)
