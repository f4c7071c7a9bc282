"""Preprocessing of a hospital's table: labels, column types, missing values, standardisation.

Configured in the ``[task]`` table of a ``csv`` experiment::

    label_column = "num"
    label_map = {"0" = 0, "1" = 1, "2" = 1, "3" = 1, "4" = 1}   # optional: raw value -> class
    positive = 1                # optional: the positive class; asks for a binary task
    missing = "refuse"          # or "drop" (rows, counted per site) or "impute" (site statistics)
    standardise = "site"        # or "federated" (pooled over all sites) or "none"
    delimiter = ";"             # optional, default ","; decimal = "," for "1,5" (European exports)
    decimal = ","

    [task.columns]              # optional; without it every other column is numeric
    age = "numeric"
    cp = {type = "categorical", levels = ["typical", "atypical", "non-anginal", "asymptomatic"], reference = "typical"}
    restecg = {type = "ordinal", order = ["normal", "st-t", "lvh"]}
    notes = "ignore"
    chol = {type = "numeric", missing = "impute", range = [50, 700]}   # range: public bounds (federated)

Labels. Values are compared as numbers when they are numbers (``0``, ``0.0`` and ``"0"`` are one
class) and as stripped text otherwise. A missing label is refused with its file and line.
Classes are sorted (numerically when all are numbers) with the positive class last, so for a
binary task class 1 is the positive one and AUC scores it; without ``positive`` a binary task's
positive class is the larger of the two, and the task description says so. ``positive`` with
more than two classes is refused: a 5-class model is never trained where binary was asked for.

Columns. ``numeric``: numbers; a non-number or a non-finite value (``inf``) is refused with
file, column and line. ``categorical``: one 0/1 column per level except the reference level
(first level unless ``reference`` is given); the levels are ``levels`` if given, otherwise the
sorted union of the values seen at all sites (the coordinator then learns which values occur: give
``levels`` to avoid it). A value outside the levels is refused. ``ordinal``: the position of the
value in ``order``. Every column of a file must be the label, the split column, a declared column
or ``"ignore"`` (nothing is dropped silently).

Missing values (empty cells, ``NA``): ``refuse`` names the file, column and lines; ``drop`` drops
the rows before splitting and reports the count per site in the task description; ``impute``
fills numeric columns with the mean, ordinal and categorical columns with the most frequent value,
of the site's *training* rows.

Standardisation (``standardise``): numeric and ordinal columns are centred and scaled (ddof 0; sd
1 where it is 0); one-hot columns stay 0/1.

- ``"site"`` (the default): with the mean and sd of the site's own training rows. No statistic
  leaves the site; each site keeps its own in ``sites/<site>/preprocessing.json`` of a run folder,
  and ``secure-fl predict --site`` applies them.
- ``"federated"``: with the mean and sd of all sites' training rows pooled, computed from sums
  only, never from one site's own statistics. With a public ``range = [lo, hi]`` for every numeric
  column (``age = {type = "numeric", range = [0, 120]}``; a value outside it is refused with file,
  column and line), each site's bounded moments go through the run's own secure sum before round 0
  (:mod:`secure_fl.tasks.federated_stats`, driven by ``secure_fl/run/standardise.py``): the
  aggregator sees them as it sees the updates (ciphertext under CKKS, masked under SecAgg/SecAgg+,
  plain under plain-fedavg), and the pooled moments are released like any sum of the protocol.
  (The simulation, holding every site's rows in one process, first builds the task with the plainly
  pooled statistics; the secure sum's replace them before round 0, and only those train and are saved.)
  Without ranges the sites' ``[n, Σx, Σx²]`` (:func:`moment_sums`) are added in the clear when the
  task is built (:meth:`Preprocessor.pool`; Chan, Golub and LeVeque, "Updating formulae and a
  pairwise algorithm for computing sample variances", 1979, applied to the totals), so whoever adds
  them sees each site's count, means and variances: then only ``plain-fedavg``, ``pooled`` and
  ``local-only`` run, and a protocol that hides single updates is refused. A protocol with a DP layer
  is always refused (the moments are not noised, and not counted in ε). Only the pooled statistics
  are saved (``model.json``, key ``preprocessing.pooled``); imputation values stay per site.
- ``"none"``: the features as encoded.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DataError, SpecError
from ..speccheck import check_keys, get, one_of

__all__ = ["LINE", "line_of", "canon", "ColumnSpec", "LabelSpec", "Preprocessor", "read_table", "parse_columns",
           "parse_labels", "moment_sums", "bounded_moments", "STANDARDISE"]

MISSING = ("refuse", "drop", "impute")
STANDARDISE = ("site", "federated", "none")
TYPES = ("numeric", "categorical", "ordinal", "ignore")


def canon(value: Any) -> str | None:
    """The comparable form of a cell: ``None`` when missing; integral numbers without ``.0``."""
    if value is None:
        return None
    if isinstance(value, (bool, np.bool_)):
        return "1" if value else "0"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        v = float(value)
        if math.isnan(v):
            return None
        if math.isfinite(v) and v == int(v):
            return str(int(v))
        return repr(v)
    text = str(value).strip()
    if not text:
        return None
    try:
        return canon(float(text)) if text.lower() not in ("nan", "inf", "-inf", "infinity", "-infinity") else text
    except ValueError:
        return text


def _sort_key(v: str) -> tuple[int, float, str]:
    try:
        return (0, float(v), v)
    except ValueError:
        return (1, 0.0, v)


LINE = "__line__"  # the file line of each row (header = line 1), kept through drops and splits


def line_of(df: Any, i: int) -> int:
    return int(df[LINE].iloc[i]) if LINE in df.columns else i + 2


def _lines(rows: np.ndarray, df: Any = None, limit: int = 5) -> str:
    shown = ", ".join(str(line_of(df, int(r)) if df is not None else int(r) + 2) for r in rows[:limit])
    return f"line(s) {shown}" + (f" and {len(rows) - limit} more" if len(rows) > limit else "")


@dataclass(frozen=True)
class ColumnSpec:
    name: str
    kind: str  # numeric | categorical | ordinal | ignore
    levels: tuple[str, ...] = ()  # categorical: all levels; ordinal: the order
    reference: str | None = None
    missing: str = "refuse"
    range: tuple[float, float] | None = None  # numeric: public bounds [lo, hi] (federated standardisation)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "type": self.kind, "levels": list(self.levels), "reference": self.reference,
                "missing": self.missing, "range": list(self.range) if self.range is not None else None}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> "ColumnSpec":
        rng = d.get("range")
        return cls(d["name"], d["type"], tuple(d["levels"]), d["reference"], d["missing"],
                   (float(rng[0]), float(rng[1])) if rng is not None else None)


@dataclass(frozen=True)
class LabelSpec:
    column: str
    mapping: dict[str, str] | None
    positive: str | None

    def to_json(self) -> dict[str, Any]:
        return {"column": self.column, "map": self.mapping, "positive": self.positive}


def parse_labels(params: Mapping[str, Any], where: str) -> LabelSpec:
    column = get(params, "label_column", str, where)
    raw_map = get(params, "label_map", dict, where, None)
    mapping: dict[str, str] | None = None
    if raw_map is not None:
        mapping = {}
        for k, v in raw_map.items():
            key, val = canon(k), canon(v)
            if key is None or val is None or isinstance(v, (dict, list)):
                raise SpecError(f"{where}.label_map: {k!r} = {v!r} is not a value -> class pair")
            if key in mapping and mapping[key] != val:
                raise SpecError(f"{where}.label_map: {k!r} is mapped twice")
            mapping[key] = val
    positive = params.get("positive")
    pos = canon(positive) if positive is not None else None
    if positive is not None and (pos is None or isinstance(positive, (dict, list))):
        raise SpecError(f"{where}.positive: expected a class value, found {positive!r}")
    if pos is not None and mapping is not None and pos not in set(mapping.values()):
        classes = sorted(set(mapping.values()))
        raise SpecError(f"{where}.positive: {positive!r} is not a class of label_map (classes {classes})")
    return LabelSpec(column, mapping, pos)


def parse_columns(params: Mapping[str, Any], where: str, default_missing: str) -> list[ColumnSpec] | None:
    table = get(params, "columns", dict, where, None)
    if table is None:
        return None
    cols = []
    for name, v in table.items():
        w = f"{where}.columns.{name}"
        if isinstance(v, str):
            v = {"type": v}
        if not isinstance(v, dict):
            raise SpecError(f"{w}: expected a type name {list(TYPES)} or a table, found {v!r}")
        check_keys(v, ["type", "levels", "reference", "order", "missing", "range"], w)
        kind = get(v, "type", str, w, None, one_of(*TYPES))
        missing = get(v, "missing", str, w, default_missing, one_of(*MISSING))
        levels: tuple[str, ...] = ()
        reference = None
        if kind == "categorical":
            raw = get(v, "levels", list, w, [])
            levels = tuple(_levels(raw, f"{w}.levels"))
            ref = v.get("reference")
            reference = canon(ref) if ref is not None else None
            if levels and reference is not None and reference not in levels:
                raise SpecError(f"{w}.reference: {ref!r} is not one of the levels {list(levels)}")
        elif kind == "ordinal":
            levels = tuple(_levels(get(v, "order", list, w), f"{w}.order"))
            if len(levels) < 2:
                raise SpecError(f"{w}.order: list at least two values, lowest first")
        else:
            extra = sorted({"levels", "reference", "order"} & set(v))
            if extra:
                raise SpecError(f"{w}: {extra} apply to categorical/ordinal columns, not {kind}")
        bounds = None
        if "range" in v:
            bounds = _range(v["range"], f"{w}.range")
            if kind != "numeric":
                raise SpecError(f"{w}.range: applies to numeric columns, not {kind}")
        cols.append(ColumnSpec(name, kind, levels, reference, missing, bounds))
    if not any(c.kind != "ignore" for c in cols):
        raise SpecError(f"{where}.columns: declare at least one feature column")
    return cols


def _range(raw: Any, where: str) -> tuple[float, float]:
    ok = isinstance(raw, list) and len(raw) == 2 and all(
        isinstance(b, (int, float)) and not isinstance(b, bool) and math.isfinite(b) for b in raw)
    if not ok or raw[0] >= raw[1]:
        raise SpecError(f"{where}: expected [lowest, highest] plausible value, two finite numbers lowest first, "
                        f"found {raw!r}")
    return float(raw[0]), float(raw[1])


def _levels(raw: list[Any], where: str) -> list[str]:
    out = []
    for i, v in enumerate(raw):
        c = canon(v)
        if c is None or isinstance(v, (dict, list)):
            raise SpecError(f"{where}[{i}]: expected a value, found {v!r}")
        if c in out:
            raise SpecError(f"{where}: {v!r} listed twice")
        out.append(c)
    return out


def read_table(path: Path, delimiter: str = ",", decimal: str = ".") -> Any:
    """A CSV file as a DataFrame of strings (``None`` where empty): types are decided per column later.

    ``delimiter = ";"`` and ``decimal = ","`` read the usual European spreadsheet export
    (``1,5`` is read as 1.5 in every cell that is a number written with a decimal comma).
    """
    import re

    import pandas as pd

    if not path.exists():
        raise DataError(f"CSV file not found: {path}")
    if path.is_dir():
        raise DataError(f"{path} is a folder; expected a CSV file")
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=True, sep=delimiter)
    except Exception as exc:  # pandas raises many kinds
        raise DataError(f"unreadable CSV {path}: {exc}") from exc
    df.columns = [str(c).strip() for c in df.columns]
    if len(df.columns) == 1 and delimiter not in df.columns[0] and any(d in df.columns[0] for d in ",;\t"):
        raise DataError(f"{path}: one column {df.columns[0]!r}; is the delimiter not {delimiter!r}? "
                        "(set [task].delimiter)")
    if decimal != ".":
        number = re.compile(r"^\s*[+-]?\d+" + re.escape(decimal) + r"\d+\s*$")

        def fix(v: Any) -> Any:
            return v.replace(decimal, ".") if isinstance(v, str) and number.match(v) else v

        df = df.apply(lambda col: col.map(fix))
    df = df.astype(object).where(df.notna(), None)
    df[LINE] = np.arange(2, len(df) + 2)
    return df


@dataclass
class Preprocessor:
    """Column specs and fitted statistics. ``transform`` turns a table into features.

    ``stats``: per site, what that site alone may hold (imputation values; with ``standardise =
    "site"`` its mean and sd). ``pooled``: with ``"federated"``, the mean and sd every site applies,
    computed by :meth:`pool` from the sites' summed moments. ``moments``: each site's
    ``[n, Σx, Σx²]`` between :meth:`fit` and :meth:`pool`; never saved.
    """

    columns: list[ColumnSpec]
    standardise: str = "site"
    stats: dict[str, dict[str, Any]] = field(default_factory=dict)
    delimiter: str = ","
    decimal: str = "."
    pooled: dict[str, Any] | None = None
    moments: dict[str, np.ndarray] = field(default_factory=dict, repr=False)
    bounded: dict[str, tuple[np.ndarray, float]] = field(default_factory=dict, repr=False)

    def bounds(self) -> tuple[np.ndarray, np.ndarray] | None:
        """Public ``(lo, hi)`` per feature (numeric: ``range``; ordinal: 0 and its last position; one-hot:
        0 and 1), or ``None`` when a numeric column has no ``range`` (see :meth:`unbounded`)."""
        if self.unbounded():
            return None
        lo, hi = [], []
        for c in self.columns:
            if c.kind == "categorical":
                lo += [0.0] * (len(c.levels) - 1)
                hi += [1.0] * (len(c.levels) - 1)
            elif c.kind == "ordinal":
                lo.append(0.0)
                hi.append(float(len(c.levels) - 1))
            elif c.kind == "numeric":
                assert c.range is not None  # unbounded() is empty
                lo.append(c.range[0])
                hi.append(c.range[1])
        return np.array(lo), np.array(hi)

    def unbounded(self) -> list[str]:
        """Numeric columns without a public ``range``."""
        return [c.name for c in self.columns if c.kind == "numeric" and c.range is None]

    def _scaled_names(self) -> list[str]:
        return [c.name for c in self.columns if c.kind in ("numeric", "ordinal")]

    def pool_bounded(self, mean: np.ndarray, weight: float) -> dict[str, Any]:
        """Pooled statistics from the released *mean* (weights: row counts) of :func:`bounded_moments`."""
        bounds = self.bounds()
        if bounds is None:
            raise DataError(f"federated standardisation: numeric column(s) {self.unbounded()} have no range")
        lo, hi = bounds
        scaled = self._scaled_mask()
        span = (hi - lo)[scaled]
        d = int(scaled.sum())
        mean = np.asarray(mean, dtype=np.float64)
        if mean.shape != (2 * d,):
            raise DataError(f"federated standardisation: expected {2 * d} released values, found {mean.shape}")
        m1, m2 = np.clip(mean[:d], 0.0, 1.0), np.clip(mean[d:], 0.0, 1.0)
        mu, sd = np.zeros(len(scaled)), np.ones(len(scaled))
        mu[scaled] = lo[scaled] + span * m1
        s = span * np.sqrt(np.maximum(m2 - m1**2, 0.0))
        sd[scaled] = np.where(s <= 1e-12 * np.maximum(1.0, np.abs(mu[scaled])), 1.0, s)
        return {"n": round(float(weight)), "mean": mu.tolist(), "sd": sd.tolist()}

    @property
    def features(self) -> list[str]:
        names = []
        for c in self.columns:
            if c.kind == "categorical":
                names += [f"{c.name}={lv}" for lv in c.levels if lv != c.reference]
            elif c.kind != "ignore":
                names.append(c.name)
        return names

    def missing_rows(self, df: Any, path: Path) -> np.ndarray:
        """Rows to drop (columns whose policy is ``drop``); raises for ``refuse`` columns."""
        drop = np.zeros(len(df), dtype=bool)
        for c in self.columns:
            if c.kind == "ignore":
                continue
            miss = np.array([canon(v) is None for v in df[c.name]], dtype=bool)
            if not miss.any():
                continue
            if c.missing == "refuse":
                raise DataError(f"{path}: column {c.name!r} has missing values at {_lines(np.flatnonzero(miss), df)}; "
                                f'set missing = "drop" or "impute" for it, or fill them in')
            if c.missing == "drop":
                drop |= miss
        return drop

    def _column(self, c: ColumnSpec, df: Any, path: Path, fill: Any) -> np.ndarray:
        values = [canon(v) for v in df[c.name]]
        if c.kind == "numeric":
            out = np.empty(len(values))
            for i, v in enumerate(values):
                if v is None:
                    out[i] = np.nan
                    continue
                try:
                    out[i] = float(v)
                except ValueError:
                    raise DataError(f"{path}: column {c.name!r} line {line_of(df, i)}: {v!r} is not a number; "
                                    "declare the column categorical in [task.columns] or fix the value") from None
            bad = np.flatnonzero(np.isinf(out))
            if len(bad):
                raise DataError(f"{path}: column {c.name!r} has non-finite values at {_lines(bad, df)}")
            if fill is not None:
                out[np.isnan(out)] = float(fill)
            return out[:, None]
        if fill is not None:
            values = [fill if v is None else v for v in values]
        absent = np.flatnonzero([v is None for v in values])
        if len(absent):  # an all-zero one-hot would silently mean the reference level
            raise DataError(f"{path}: column {c.name!r} has missing values at {_lines(absent, df)} and no imputation "
                            "for them")
        unknown = [(i, v) for i, v in enumerate(values) if v is not None and v not in c.levels]
        if unknown:
            i, v = unknown[0]
            raise DataError(f"{path}: column {c.name!r} line {line_of(df, i)}: value {v!r} is not one of "
                            f"{list(c.levels)} ({len(unknown)} such row(s))")
        if c.kind == "ordinal":
            return np.array([np.nan if v is None else c.levels.index(v) for v in values], dtype=float)[:, None]
        kept = [lv for lv in c.levels if lv != c.reference]
        return np.array([[float(v == lv) for lv in kept] for v in values], dtype=float).reshape(len(values), len(kept))

    def fit(self, site: str, df: Any, path: Path) -> None:
        """Statistics of ``site`` from its training rows: imputation values, mean and sd."""
        fills: dict[str, Any] = {}
        for c in self.columns:
            if c.missing != "impute" or c.kind == "ignore":
                continue
            vals = [canon(v) for v in df[c.name]]
            present = [v for v in vals if v is not None]
            if not present:
                raise DataError(f"{path}: column {c.name!r} is empty in the training rows; nothing to impute from")
            if c.kind == "numeric":
                fills[c.name] = float(np.mean(self._column(c, df.loc[[v is not None for v in vals]], path, None)))
            else:
                uniq, counts = np.unique(present, return_counts=True)
                fills[c.name] = str(uniq[int(np.argmax(counts))])  # ties: the first in sorted order
        self.stats[site] = {"impute": fills}
        if self.standardise == "none":
            return
        x = self.transform(site, df, path, standardise=False)
        if self.standardise == "federated":
            self.moments[site] = moment_sums(x)
            bounds = self.bounds()
            if bounds is not None:
                self.bounded[site] = bounded_moments(x, *bounds, self._scaled_mask(), df, path, self._scaled_names())
            return
        scaled = self._scaled_mask()
        mu = x.mean(axis=0) if len(x) else np.zeros(x.shape[1])
        sd = x.std(axis=0) if len(x) else np.ones(x.shape[1])
        sd[sd == 0] = 1.0
        mu[~scaled], sd[~scaled] = 0.0, 1.0
        self.stats[site].update({"mean": mu.tolist(), "sd": sd.tolist()})

    def pool(self, total: np.ndarray) -> None:
        """Federated standardisation from ``total`` = the sum over sites of :func:`moment_sums` only.

        Pooled mean ``Σx / n`` and sd ``sqrt(Σx² / n - mean²)`` (ddof 0; 1 where it is 0) over every
        site's training rows; one-hot columns keep mean 0, sd 1. The per-site moments are dropped.
        """
        total = np.asarray(total, dtype=np.float64)
        d = (len(total) - 1) // 2
        if len(total) != 2 * d + 1 or total[0] <= 0:
            raise DataError(f"federated standardisation: expected [n, sum x ({d}), sum x^2 ({d})] with n > 0, "
                            f"found {len(total)} values, n = {total[0] if len(total) else None}")
        n = float(total[0])
        mu = total[1 : d + 1] / n
        sd = np.sqrt(np.maximum(total[d + 1 :] / n - mu**2, 0.0))
        sd[sd <= 1e-12 * np.maximum(1.0, np.abs(mu))] = 1.0
        scaled = self._scaled_mask()
        mu[~scaled], sd[~scaled] = 0.0, 1.0
        self.pooled = {"n": round(n), "mean": mu.tolist(), "sd": sd.tolist()}
        self.moments.clear()

    def needs_site(self) -> bool:
        """Whether scoring needs one site's own statistics (imputation values or per-site scaling)."""
        return self.standardise == "site" or any(c.missing == "impute" and c.kind != "ignore" for c in self.columns)

    def _scaled_mask(self) -> np.ndarray:
        mask = []
        for c in self.columns:
            if c.kind == "categorical":
                mask += [False] * (len(c.levels) - 1)
            elif c.kind != "ignore":
                mask.append(True)
        return np.array(mask, dtype=bool)

    def transform(self, site: str | None, df: Any, path: Path, standardise: bool = True) -> np.ndarray:
        """Features [n, d] of ``df`` with ``site``'s statistics (``fit`` first; ``pool`` too when federated).

        ``site`` may be ``None`` when nothing per site applies (no imputation, standardisation
        ``"federated"`` or ``"none"``). Every bad column of ``df`` is reported, not only the first.
        """
        if site is not None and site not in self.stats:
            raise DataError(f"no preprocessing statistics for site {site!r}; known sites are {sorted(self.stats)}")
        missing_cols = [c.name for c in self.columns if c.kind != "ignore" and c.name not in df.columns]
        if missing_cols:
            raise DataError(f"{path}: missing column(s) {missing_cols}; columns are {list(df.columns)}")
        fills = self.stats[site]["impute"] if site is not None else {}
        parts, errors = [], []
        for c in self.columns:
            if c.kind == "ignore":
                continue
            try:
                parts.append(self._column(c, df, path, fills.get(c.name)))
            except DataError as exc:
                errors.append(str(exc))
        if errors:
            raise DataError("\n".join(errors))
        x = np.concatenate(parts, axis=1) if parts else np.zeros((len(df), 0))
        if np.isnan(x).any():
            rows = np.flatnonzero(np.isnan(x).any(axis=1))
            hint = "" if site is not None else " (give the site whose imputation values apply)"
            raise DataError(f"{path}: missing values at {_lines(rows, df)} and no imputation for them{hint}")
        if standardise and self.standardise == "site":
            if site is None:
                raise DataError(f"{path}: standardise = \"site\": say whose statistics apply (the site)")
            x = (x - np.array(self.stats[site]["mean"])) / np.array(self.stats[site]["sd"])
        elif standardise and self.standardise == "federated":
            if self.pooled is None:
                raise DataError("standardise = \"federated\": the pooled statistics were not computed (pool first)")
            x = (x - np.array(self.pooled["mean"])) / np.array(self.pooled["sd"])
        return x

    def to_json(self, with_sites: bool = True) -> dict[str, Any]:
        """The preprocessing as plain data; ``with_sites=False`` leaves out every per-site statistic
        (what ``model.json`` holds; each site's own go to its own file, see :mod:`secure_fl.tasks.export`)."""
        out: dict[str, Any] = {"kind": "tabular", "columns": [c.to_json() for c in self.columns],
               "standardise": self.standardise,
               "features": self.features, "delimiter": self.delimiter, "decimal": self.decimal}
        if self.pooled is not None:
            out["pooled"] = self.pooled
        if with_sites:
            out["sites"] = self.stats
        return out

    @classmethod
    def from_json(cls, d: Mapping[str, Any], site_stats: Mapping[str, Mapping[str, Any]] | None = None
                  ) -> "Preprocessor":
        """From :meth:`to_json`; ``site_stats`` adds sites' own statistics (from their own files)."""
        stats = {k: dict(v) for k, v in (d.get("sites") or {}).items()}
        stats.update({k: dict(v) for k, v in (site_stats or {}).items()})
        return cls([ColumnSpec.from_json(c) for c in d["columns"]], d["standardise"], stats,
                   d.get("delimiter", ","), d.get("decimal", "."), d.get("pooled"))


def bounded_moments(x: np.ndarray, lo: np.ndarray, hi: np.ndarray, scaled: np.ndarray, df: Any, path: Path,
                    names: list[str]) -> tuple[np.ndarray, float]:
    """One site's input to federated standardisation through a secure sum: ``(n · v, n)`` where
    ``v = [mean(x'), mean(x'²)]`` over the scaled columns and ``x' = (x - lo) / (hi - lo)`` in [0, 1]
    with public bounds, so every unweighted coordinate lies in [0, 1] (the range a quantizing secure
    sum such as SecAgg takes). A value outside its column's range is refused with file, column and lines."""
    x = np.asarray(x, dtype=np.float64)[:, scaled]
    lo, hi = lo[scaled], hi[scaled]
    problems = []
    for j, name in enumerate(names):
        out = np.flatnonzero((x[:, j] < lo[j]) | (x[:, j] > hi[j]))
        if len(out):
            problems.append(f"{path}: column {name!r} has values outside its range [{lo[j]:g}, {hi[j]:g}] at "
                            f"{_lines(out, df)}")
    if problems:
        raise DataError("\n".join(problems))
    z = (x - lo) / (hi - lo)
    n = float(len(z))
    return n * np.concatenate([z.mean(axis=0), (z**2).mean(axis=0)]), n


def moment_sums(x: np.ndarray) -> np.ndarray:
    """``[n, Σx_j, Σx_j²]`` of a site's training features (float64): what a site contributes to
    federated standardisation. Sums add across sites, so the pooled mean and variance follow from
    their total alone (no site's own mean or variance is needed)."""
    x = np.asarray(x, dtype=np.float64)
    return np.concatenate([[float(len(x))], x.sum(axis=0), (x**2).sum(axis=0)])
