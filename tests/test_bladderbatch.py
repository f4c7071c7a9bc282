"""The bladder-batch task: Bioconductor's bladderbatch matrix, its five processing batches as sites."""

from __future__ import annotations

import builtins
import gzip
import importlib.util

import numpy as np
import pytest

from secure_fl.errors import DataError, SpecError
from secure_fl.tasks import bladderbatch
from secure_fl.tasks.registry import build_task


def _real_file_or_skip() -> str:
    try:
        path = bladderbatch.bladder_file()
    except DataError as exc:
        pytest.skip(f"bladderbatch matrix not installed: {exc}")
    if importlib.util.find_spec("rdata") is None:
        pytest.skip(f"rdata not installed: pip install {bladderbatch.PIP_SPEC}")
    return str(path)


@pytest.fixture(scope="module")
def real() -> bladderbatch.BladderData:
    return bladderbatch.load_bladder(_real_file_or_skip())  # one parse (~2 s) for the module


def test_real_matrix_loads_with_its_batches_and_classes(real):
    assert real.x.shape == (57, 22283) and len(real.genes) == 22283 and len(real.samples) == 57
    assert real.genes[0] == "1007_s_at" and real.samples[0] == "GSM71019.CEL"
    assert 2 < real.x.min() and real.x.max() < 16  # RMA log2 expression
    counts = {(int(b), c): 0 for b in range(1, 6) for c in ("Cancer", "Normal", "Biopsy")}
    for b, c in zip(real.batch, real.cancer):
        counts[(int(b), c)] += 1
    # the confounded design the data set illustrates (Leek et al. 2010)
    assert counts == {(1, "Cancer"): 11, (1, "Normal"): 0, (1, "Biopsy"): 0,
                      (2, "Cancer"): 14, (2, "Normal"): 4, (2, "Biopsy"): 0,
                      (3, "Cancer"): 0, (3, "Normal"): 4, (3, "Biopsy"): 0,
                      (4, "Cancer"): 0, (4, "Normal"): 0, (4, "Biopsy"): 5,
                      (5, "Cancer"): 15, (5, "Normal"): 0, (5, "Biopsy"): 4}


def test_batches_are_the_sites_on_a_slice_of_the_genes(real, monkeypatch):
    monkeypatch.setattr(bladderbatch, "load_bladder", lambda path=None: real)  # no second parse
    task = build_task("bladder-batch", {"n_genes": 40, "test_fraction": 0.25, "split_seed": 0})
    assert [s.name for s in task.sites] == ["batch1", "batch2", "batch3", "batch4", "batch5"]
    sizes = {s.name: (s.n_train + s.n_test, int(s.y_train.sum() + s.y_test.sum())) for s in task.sites}
    assert sizes == {"batch1": (11, 11), "batch2": (18, 14), "batch3": (4, 0), "batch4": (5, 0), "batch5": (19, 15)}
    assert task.info["features"] == real.genes[:40]
    assert task.make_model(0).select.weight.shape == (40,)
    site = task.sites[1]  # standardised with its own training statistics
    np.testing.assert_allclose(site.x_train.numpy().mean(0), 0, atol=1e-5)
    with pytest.raises(DataError, match="n_genes"):
        build_task("bladder-batch", {"n_genes": 30000})


def test_missing_data_names_the_apt_and_pip_specs(monkeypatch, tmp_path):
    monkeypatch.setattr(bladderbatch, "SEARCH", (tmp_path / "none.rda",))
    with pytest.raises(DataError, match=r"scripts/setup\.sh.*r-bioc-bladderbatch.*apt-get install r-bioc-bladderbatch"):
        build_task("bladder-batch", {})
    with pytest.raises(DataError, match=r"nowhere\.rda not found.*apt-get install r-bioc-bladderbatch"):
        build_task("bladder-batch", {"path": str(tmp_path / "nowhere.rda")})
    present = tmp_path / "bladderdata.rda"
    present.write_bytes(b"RDX3\nX\n" + b"\0" * 16)  # the header of an .rda, then nothing readable
    real_import = builtins.__import__

    def no_rdata(name, *args, **kwargs):
        if name == "rdata":
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    with monkeypatch.context() as m:
        m.setattr(builtins, "__import__", no_rdata)
        with pytest.raises(DataError, match=r"pip install rdata==1\.1\.0"):
            bladderbatch.load_bladder(present)
    with pytest.raises(SpecError, match="n_gene"):
        build_task("bladder-batch", {"n_gene": 10})


def test_a_file_that_is_not_the_expression_set_is_refused(tmp_path):
    if importlib.util.find_spec("rdata") is None:
        pytest.skip(f"rdata not installed: pip install {bladderbatch.PIP_SPEC}")
    bad = tmp_path / "bladderdata.rda"
    for content in (b"not an R data file at all", gzip.compress(b"RDX3\nX\n" + b"\0" * 64)[:30]):
        bad.write_bytes(content)
        with pytest.raises(DataError, match="bladderdata.rda: not the bladderEset ExpressionSet"):
            bladderbatch.load_bladder(bad)
