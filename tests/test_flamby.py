"""FLamby's Fed-Heart-Disease split and preprocessing (split = "flamby")."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from secure_fl.errors import SpecError
from secure_fl.tasks.flamby_heart import FLAMBY_FEATURES, flamby_records, flamby_test_mask
from secure_fl.tasks.heart import load_heart_frame
from secure_fl.tasks.registry import build_task

# The first ten test-row indices (position in the centre's UCI file after dropping incomplete rows)
# and the sum of all of them, as scikit-learn 1.9.1 gives them for FLamby's call
# train_test_split(arange(n), test_size=1-0.66, train_size=0.66, random_state=43, shuffle=True,
# stratify=num>0 when both classes have more than 2 rows).
SKLEARN_TEST_ROWS = {
    "Cleveland": ([5, 13, 16, 24, 26, 34, 40, 42, 43, 46], 16832),
    "Hungary": ([3, 7, 16, 21, 25, 26, 27, 28, 29, 32], 11704),
    "Switzerland": ([5, 6, 7, 8, 13, 14, 18, 19, 20, 22], 326),
    "VA Long Beach": ([1, 5, 6, 9, 12, 26, 29, 33, 35, 36], 3089),
}


@pytest.fixture(scope="module")
def records():
    return flamby_records(load_heart_frame())


def test_records_rebuild_the_uci_files(records):
    assert {c: len(r[1]) for c, r in records.items()} == {"Cleveland": 303, "Hungary": 261, "Switzerland": 46,
                                                           "VA Long Beach": 130}
    # the row the Kaggle export files under Cleveland heads processed.hungarian.data
    first = records["Hungary"][0][0]
    np.testing.assert_array_equal(first, [28, 1, 2, 130, 132, 0, 2, 185, 0, 0])


def test_split_matches_scikit_learn_and_flamby_sizes(records):
    sizes = {}
    for centre, (_, num) in records.items():
        mask = flamby_test_mask(num)
        idx = np.flatnonzero(mask)
        first, total = SKLEARN_TEST_ROWS[centre]
        assert idx[:10].tolist() == first and int(idx.sum()) == total
        sizes[centre] = (int((~mask).sum()), int(mask.sum()))
    assert sizes == {"Cleveland": (199, 104), "Hungary": (172, 89), "Switzerland": (30, 16), "VA Long Beach": (85, 45)}


def test_task_features_and_standardisation():
    task = build_task("heart-disease", {"split": "flamby", "model": "sigmoid"})
    assert task.info["features"] == FLAMBY_FEATURES and len(FLAMBY_FEATURES) == 13
    assert [(s.n_train, s.n_test) for s in task.sites] == [(199, 104), (172, 89), (85, 45), (30, 16)]
    for s in task.sites:
        x = s.x_train
        sd = x.std(0)
        live = sd > 0  # Switzerland's chol is 0 in every row (its code for "missing")
        torch.testing.assert_close(x.mean(0), torch.zeros(13), atol=1e-5, rtol=0)
        torch.testing.assert_close(sd[live], torch.ones(int(live.sum())), atol=1e-5, rtol=0)
    pooled = task.pooled()
    torch.testing.assert_close(pooled.x_train.std(0), torch.ones(13), atol=1e-5, rtol=0)
    assert "pooled" in task.info["preprocessing"]["sites"]
    logits = task.make_model(0)(task.sites[0].x_test)
    assert logits.shape == (104, 2) and torch.all(logits[:, 0] == 0)


def test_flamby_split_refuses_a_test_fraction():
    with pytest.raises(SpecError, match=r"\['test_fraction'\] do not apply with split = \"flamby\""):
        build_task("heart-disease", {"split": "flamby", "test_fraction": 0.3})
    with pytest.raises(SpecError, match="expected one of"):
        build_task("heart-disease", {"split": "kfold"})
