"""The ``csv`` task: one table per site, named sites, a fixed test set and explicit preprocessing.

Sites and splits: :mod:`secure_fl.tasks.sites`. Labels, column types, missing values and
standardisation: :mod:`secure_fl.tasks.tabular`. Every file is read and checked before any error
is raised, so one run reports every bad file, not only the first.

Relative paths in an experiment TOML start at the TOML's folder, as protocol files do
(:mod:`secure_fl.tasks.paths`); given to :func:`build_csv` directly they start at the working folder.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import DataError, SpecError
from ..speccheck import get, one_of
from .base import SiteData
from .heart import HeartTask, tabular_params
from .sites import SiteSource, fraction_split, parse_sites
from .tabular import (
    LINE,
    MISSING,
    STANDARDISE,
    ColumnSpec,
    LabelSpec,
    Preprocessor,
    _sort_key,
    canon,
    line_of,
    parse_columns,
    parse_labels,
    read_table,
)

__all__ = ["CSV_KEYS", "build_csv"]

CSV_KEYS = ("paths", "sites", "label_column", "feature_columns", "label_map", "positive", "missing", "standardise",
            "columns", "delimiter", "decimal")


@dataclass
class _Site:
    src: SiteSource
    train: Any  # DataFrame
    test: Any | None
    dropped: int = 0


def _read(src: SiteSource, delimiter: str = ",", decimal: str = ".") -> _Site:
    paths = [src.train] + ([src.test] if src.test is not None else [])
    frames = _collect(paths, lambda path: read_table(path, delimiter, decimal))  # both files' problems
    return _Site(src, frames[0], frames[1] if src.test is not None else None)


def _collect(items: list[Any], fn: Any) -> list[Any]:
    """``fn`` on every item; every DataError is gathered and raised together."""
    out, errors = [], []
    for it in items:
        try:
            out.append(fn(it))
        except DataError as exc:
            errors.append(str(exc))
    if errors:
        raise DataError("\n".join(errors) if len(errors) == 1 else f"{len(errors)} problems:\n  " + "\n  ".join(errors))
    return out


def _per_site(sites: list[Any], fn: Any, errors: list[str]) -> list[Any]:
    """The sites on which ``fn`` raised no DataError; each error is appended to ``errors``.

    A bad file drops its site from the later checks (they would only repeat the problem) while the
    other sites go on, so one run names every bad file, whichever check each one fails."""
    kept = []
    for site in sites:
        try:
            fn(site)
        except DataError as exc:
            lines = str(exc).split("\n")
            nested = len(lines) > 1 and lines[0].endswith("problems:")  # one site's several problems, listed once
            errors.extend(line.strip() for line in lines[1:]) if nested else errors.append(str(exc))
            continue
        kept.append(site)
    return kept


def _raise(errors: list[str]) -> None:
    if errors:
        raise DataError(errors[0] if len(errors) == 1 else f"{len(errors)} problems:\n  " + "\n  ".join(errors))


def _frames(s: _Site) -> list[tuple[Any, Path]]:
    return [(s.train, s.src.train)] + ([(s.test, s.src.test or s.src.train)] if s.test is not None else [])


def _columns(sites: list[_Site], declared: list[ColumnSpec] | None, feats: list[Any] | None, label: str,
             default_missing: str, where: str, errors: list[str]) -> tuple[list[ColumnSpec], list[_Site]]:
    special = {label, LINE} | {s.src.split_column for s in sites if s.src.split_column}
    first_df, first_path = sites[0].train, sites[0].src.train
    if declared is None:
        if feats is not None:
            bad = [f for f in feats if not isinstance(f, str)]
            if bad:
                raise SpecError(f"{where}.feature_columns: expected column names, found {bad}")
            names = list(feats)
        else:
            names = [c for c in first_df.columns if c not in special]
        cols = [ColumnSpec(n, "numeric", missing=default_missing) for n in names]
    else:
        cols = declared
    leak = sorted(c.name for c in cols if c.name in special - {LINE} and c.kind != "ignore")
    if leak:
        raise SpecError(f"{where}: {leak} is the label or split column; it cannot also be a feature")
    wanted = [c.name for c in cols if c.kind != "ignore"]

    def check(item: tuple[Any, Path]) -> None:
        df, path = item
        if label not in df.columns:
            raise DataError(f"{path}: no label column {label!r}; columns are {list(df.columns)}")
        if declared is None and feats is None:
            have = [c for c in df.columns if c not in special]
            if have != wanted:
                raise DataError(f"{path}: feature columns {have} do not match {first_path} {wanted} "
                                f"(missing {sorted(set(wanted) - set(have))}, extra {sorted(set(have) - set(wanted))})")
        missing = [c for c in wanted if c not in df.columns]
        if missing:
            raise DataError(f"{path}: missing feature column(s) {missing}")
        if declared is not None:
            undeclared = [c for c in df.columns if c not in special and c not in {d.name for d in declared}]
            if undeclared:
                raise DataError(f"{path}: column(s) {undeclared} are not declared in [task.columns]; "
                                f'declare each (e.g. {undeclared[0]} = "numeric") or mark it "ignore"')
        if declared is None:
            bad = []
            for c in wanted:
                for v in df[c]:
                    cv = canon(v)
                    if cv is not None and _sort_key(cv)[0] == 1 and cv.lower() not in ("inf", "-inf", "infinity"):
                        bad.append(c)
                        break
            if bad:
                raise DataError(f"{path}: non-numeric feature column(s) {bad}; declare them in [task.columns] "
                                f"(categorical or ordinal) or encode them as numbers")

    def check_site(s: _Site) -> None:
        _collect(_frames(s), check)

    return cols, _per_site(sites, check_site, errors)


def _labels(sites: list[_Site], spec: LabelSpec, errors: list[str]) -> list[_Site]:
    """Each file's labels as classes (column ``__class__``); the sites whose labels are all good."""

    def labels_of(item: tuple[Any, Path]) -> set[str]:
        df, path = item
        labels = [canon(v) for v in df[spec.column]]
        missing = [i for i, v in enumerate(labels) if v is None]
        if missing:
            lines = ", ".join(str(line_of(df, i)) for i in missing[:5])
            raise DataError(f"{path}: label column {spec.column!r} is missing at line(s) {lines}"
                            f"{f' and {len(missing) - 5} more' if len(missing) > 5 else ''}; a row without a label "
                            "cannot be trained on or tested (drop it from the file)")
        raw = [v for v in labels if v is not None]  # all of them (none missing)
        if spec.mapping is not None:
            unknown = [(i, v) for i, v in enumerate(raw) if v not in spec.mapping]
            if unknown:
                i, v = unknown[0]
                raise DataError(f"{path}: label {v!r} at line {line_of(df, i)} is not in label_map "
                                f"(keys {sorted(spec.mapping)})")
            raw = [spec.mapping[v] for v in raw]
        df["__class__"] = raw
        return set(raw)

    return _per_site(sites, lambda s: _collect(_frames(s), labels_of), errors)


def _classes(sites: list[_Site], spec: LabelSpec, where: str) -> list[str]:
    found = {v for s in sites for df, _ in _frames(s) for v in df["__class__"]}
    classes = sorted(found, key=_sort_key)
    if len(classes) < 2:
        raise DataError(f"{where}: label column {spec.column!r} has a single class {classes} across all sites; "
                        "nothing to learn")
    if spec.positive is not None:
        if spec.positive not in found:
            raise DataError(f"{where}.positive: class {spec.positive!r} never occurs (classes found: {classes})")
        if len(classes) != 2:
            raise DataError(f"{where}: positive = {spec.positive!r} asks for a binary task, but label column "
                            f"{spec.column!r} has {len(classes)} classes {classes}; merge them with label_map "
                            f'(e.g. label_map = {{"0" = 0, "2" = 1, ...}})')
        classes.remove(spec.positive)
        classes.append(spec.positive)
    return classes


def _split(s: _Site, pre: Preprocessor, split_seed: int) -> None:
    """Drop rows (``missing = "drop"``), then cut the site's table into train and test."""
    import pandas as pd

    def drop(df: Any, path: Path) -> Any:
        rows = pre.missing_rows(df, path)
        s.dropped += int(rows.sum())
        return df.loc[~rows].reset_index(drop=True)

    s.train = drop(s.train, s.src.train)
    if s.test is not None:
        s.test = drop(s.test, s.src.test)  # type: ignore[arg-type]
        return
    df, path = s.train, s.src.train
    if s.src.split_column is not None:
        col = s.src.split_column
        if col not in df.columns:
            raise DataError(f"{path}: no split column {col!r}; columns are {list(df.columns)}")
        vals = [None if v is None else str(v).strip().lower() for v in df[col]]
        bad = [(i, v) for i, v in enumerate(vals) if v not in ("train", "test")]
        if bad:
            i, v = bad[0]
            raise DataError(f"{path}: split column {col!r} line {line_of(df, i)}: {df[col][i]!r}; "
                            f"expected 'train' or 'test' ({len(bad)} such row(s))")
        test = np.array([v == "test" for v in vals])
    else:
        fraction = s.src.test_fraction if s.src.test_fraction is not None else 0.25
        labels = np.array(df["__class__"].tolist(), dtype=object).astype(str)
        test = fraction_split(labels, fraction, split_seed, s.src.name)
    s.train, s.test = df.loc[~test].reset_index(drop=True), pd.DataFrame(df.loc[test]).reset_index(drop=True)


def _fill_levels(cols: list[ColumnSpec], sites: list[_Site], where: str) -> list[ColumnSpec]:
    out = []
    for c in cols:
        if c.kind == "categorical":
            levels = c.levels
            if not levels:
                seen = {canon(v) for s in sites for df, _ in _frames(s) for v in df[c.name]} - {None}
                levels = tuple(sorted(seen, key=_sort_key))  # type: ignore[arg-type]
            if len(levels) < 2:
                raise DataError(f"{where}.columns.{c.name}: categorical column with levels {list(levels)}; "
                                "it needs two or more to encode")
            ref = c.reference if c.reference is not None else levels[0]
            if ref not in levels:
                raise DataError(f"{where}.columns.{c.name}.reference: {ref!r} never occurs (levels {list(levels)})")
            c = ColumnSpec(c.name, c.kind, tuple(levels), ref, c.missing)
        out.append(c)
    return out


def build_csv(params: Mapping[str, Any], where: str) -> HeartTask:
    p = tabular_params(params, where, extra=CSV_KEYS)
    sources = parse_sites(params, where, p["test_fraction"], name_from="stem")
    spec = parse_labels(params, where)
    default_missing = get(params, "missing", str, where, "refuse", one_of(*MISSING))
    standardise = get(params, "standardise", str, where, "site", one_of(*STANDARDISE))
    declared = parse_columns(params, where, default_missing)
    feats = get(params, "feature_columns", list, where, None)
    if declared is not None and feats is not None:
        raise SpecError(f"{where}: give [task.columns] or feature_columns, not both")
    delimiter = get(params, "delimiter", str, where, ",", one_of(",", ";", "\t", "|"))
    decimal = get(params, "decimal", str, where, ".", one_of(".", ","))
    if decimal == delimiter:
        raise SpecError(f"{where}: decimal and delimiter are both {decimal!r}")
    errors: list[str] = []
    read: list[_Site] = []

    def read_one(src: SiteSource) -> None:
        read.append(_read(src, delimiter, decimal))

    _per_site(sources, read_one, errors)
    if not read:
        _raise(errors)
    cols, sites = _columns(read, declared, feats, spec.column, default_missing, where, errors)
    sites = _labels(sites, spec, errors)
    pre = Preprocessor(cols, standardise, delimiter=delimiter, decimal=decimal)
    sites = _per_site(sites, lambda s: _split(s, pre, p["split_seed"]), errors)
    try:  # checks over all sites: only meaningful, and only reported, when every file so far was good
        classes = _classes(sites, spec, where)
        pre.columns = _fill_levels(cols, sites, where)
    except DataError as exc:
        _raise(errors or [str(exc)])
        raise
    index = {c: i for i, c in enumerate(classes)}

    def check_sizes(s: _Site) -> None:
        test: Any = s.test  # set by the split
        if len(s.train) == 0 or len(test) == 0:
            raise DataError(f"site {s.src.name!r} ({s.src.train}): {len(s.train)} training and {len(test)} test "
                            f"rows after the split ({s.src.split}); each needs at least one")
        pre.fit(s.src.name, s.train, s.src.train)

    sites = _per_site(sites, check_sizes, errors)
    if pre.standardise == "federated" and not errors:
        if len(sites) < 2:
            raise SpecError(f'{where}.standardise: "federated" pools the statistics of two or more sites; this task '
                            f'has {len(sites)} (use "site" or "none")')
        pre.pool(np.sum([pre.moments[s.src.name] for s in sites], axis=0))  # only the total is used
    data: list[SiteData] = []

    def finish(s: _Site) -> None:
        name, test_path = s.src.name, s.src.test or s.src.train
        test: Any = s.test  # set by the split
        scale = not errors  # with errors elsewhere only the checks matter (federated statistics need every site)
        xtr = pre.transform(name, s.train, s.src.train, standardise=scale)
        xte = pre.transform(name, test, test_path, standardise=scale)
        ytr = np.array([index[v] for v in s.train["__class__"]], dtype=np.int64)
        yte = np.array([index[v] for v in test["__class__"]], dtype=np.int64)
        t = torch.tensor
        data.append(SiteData(name, t(xtr, dtype=torch.float32), t(ytr), t(xte, dtype=torch.float32), t(yte)))

    _per_site(sites, finish, errors)
    _raise(errors)  # every bad file, whichever check it failed, in one error
    positive = classes[-1] if len(classes) == 2 else None
    notes = [f"site {s.src.name}: {s.dropped} row(s) dropped for missing values" for s in sites if s.dropped]
    if positive is not None:
        notes.insert(0, f"positive class {positive!r} of column {spec.column!r}")
    if pre.pooled is not None:
        notes.append(f"federated standardisation over {pre.pooled['n']} training rows")
    info = {
        "features": pre.features,
        "labels": classes,
        "positive": positive,
        "label": spec.to_json(),
        "preprocessing": pre.to_json(),
        "sites": {s.src.name: {"train": str(s.src.train), "test": str(s.src.test) if s.src.test else None,
                               "split": s.src.split, "dropped_rows": s.dropped} for s in sites},
        "notes": notes,
    }
    federated = None
    if pre.standardise == "federated" and len(pre.bounded) == len(data):
        from .federated_stats import FederatedInputs

        federated = FederatedInputs(dict(pre.bounded), pre)
    return HeartTask("csv", len(classes), data, info, model=p["model"], hidden=p["hidden"], model_args=p["model_args"],
                     federated=federated)
