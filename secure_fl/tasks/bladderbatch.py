"""Gene selection on a bladder-cancer expression matrix whose five processing batches are the sites.

Data: Dyrskjøt et al., "Gene expression in the urinary bladder: a common carcinoma in situ gene
expression signature exists disregarding histopathological classification", Cancer Res.
64:4040-4048, 2004 (GEO GSE3167), as packaged by J. T. Leek for Bioconductor's ``bladderbatch``
(Artistic-2.0) to illustrate batch effects (Leek et al., "Tackling the widespread and critical
impact of batch effects in high-throughput data", Nat. Rev. Genet. 11:733-739, 2010). 57 samples
on Affymetrix HG-U133A arrays, 22,283 probe sets, RMA-normalised log2 expression (normalised by
the publishers over all 57 arrays together), with a phenotype table giving each sample's outcome
(Normal, Biopsy, sTCC-CIS, sTCC+CIS, mTCC), its ``cancer`` class (Normal, Biopsy, Cancer) and the
processing ``batch`` (1-5). The file is ``data/bladderdata.rda`` of the R package, shipped by
Debian as ``r-bioc-bladderbatch`` and read with the PyPI package ``rdata`` (no R needed).

Sites: the five batches, as they are in the data (natural sites, not a split). They are strongly
confounded with the outcome, which is what the data set exists to show: batch 1 holds only
cancers (11), batch 3 only normal mucosa (4), batch 4 only biopsies (5); batches 2 (4 normal,
14 cancer) and 5 (4 biopsy, 15 cancer) are mixed. A site alone therefore often cannot learn the
label at all, and per-site standardisation (each gene centred and scaled by the site's own
training statistics, so that no statistic leaves a site) also removes a single-class site's
class signal along with its batch offset. Label: Cancer = 1, Normal or Biopsy = 0 (40 against
17). Each site holds out a stratified ``test_fraction`` of its own samples.

Model: :class:`~secure_fl.tasks.feature_selection.FeatureSelectionNet` over all probe sets (or the
first ``n_genes`` in the file's order, a choice that looks at no value, for quick runs and tests);
``info["features"]`` holds the probe ids in column order.
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DataError
from ..speccheck import check_keys, get, in_range
from .genes import GeneTask
from .heart import split_site

__all__ = ["APT_SPEC", "PIP_SPEC", "BladderData", "bladder_file", "build_bladder_batch", "load_bladder"]

APT_SPEC = "r-bioc-bladderbatch"
PIP_SPEC = "rdata==1.1.0"
RDA = "bladderdata.rda"
#: where ``scripts/setup.sh`` puts the file (inside the environment it sets up), then where Debian's package does
SEARCH = (Path(sys.prefix) / "share" / "bladderbatch" / RDA,
          Path("/usr/lib/R/site-library/bladderbatch/data") / RDA)
HOW = (f"run `bash scripts/setup.sh` (it fetches the Debian package {APT_SPEC} and copies its {RDA} into the "
       f"environment), or `apt-get install {APT_SPEC}`, or give [task] path = \"…/{RDA}\"")


class BladderData:
    """The matrix as shipped: ``x`` [57, genes] log2 expression, the phenotype columns per sample."""

    def __init__(self, x: np.ndarray, genes: list[str], samples: list[str], batch: np.ndarray, cancer: list[str],
                 outcome: list[str]) -> None:
        self.x, self.genes, self.samples = x, genes, samples
        self.batch, self.cancer, self.outcome = batch, cancer, outcome


def bladder_file(path: str | Path | None = None) -> Path:
    """``path``, or the first of :data:`SEARCH` that exists; a clear error naming the packages otherwise."""
    if path is not None:
        p = Path(path).expanduser()
        if not p.is_file():
            raise DataError(f"bladder-batch: {p} not found; {HOW}")
        return p
    for p in SEARCH:
        if p.is_file():
            return p
    raise DataError(f"the bladder-batch task needs {RDA} (looked in {[str(p) for p in SEARCH]}); {HOW}")


def load_bladder(path: str | Path | None = None) -> BladderData:
    """Read the ``bladderEset`` ExpressionSet of ``bladderdata.rda``: exprs and phenoData."""
    p = bladder_file(path)
    try:
        import rdata
    except ImportError:
        raise DataError(f"the bladder-batch task reads {RDA} with the rdata package: pip install {PIP_SPEC}") from None
    try:
        with warnings.catch_warnings():  # S4 classes (ExpressionSet, AnnotatedDataFrame) come back as namespaces
            warnings.simplefilter("ignore")
            eset = rdata.read_rda(str(p))["bladderEset"]
        exprs = eset.assayData.maps[0]["exprs"]
        pheno = eset.phenoData.data
    except (KeyError, AttributeError, IndexError, TypeError, ValueError, OSError, EOFError, RuntimeError) as exc:
        # rdata: NotImplementedError (a RuntimeError) for an unknown format, EOFError for a truncated file
        raise DataError(f"{p}: not the bladderEset ExpressionSet of {APT_SPEC} ({type(exc).__name__}: {exc})") from exc
    x = np.asarray(exprs.values, dtype=np.float64).T
    genes = [str(g) for g in exprs.coords["dim_0"].values]
    samples = [str(s) for s in exprs.coords["dim_1"].values]
    missing = [c for c in ("batch", "cancer", "outcome") if c not in pheno.columns]
    if missing:
        raise DataError(f"{p}: phenoData has no column(s) {missing} (found {list(pheno.columns)})")
    if [str(s) for s in pheno.index] != samples:
        raise DataError(f"{p}: the phenoData rows are not the expression columns ({len(pheno)} rows, {len(samples)} "
                        "samples)")
    if not np.isfinite(x).all():
        raise DataError(f"{p}: {int((~np.isfinite(x)).sum())} expression values are missing or infinite")
    batch = pheno["batch"].to_numpy(dtype=np.float64)
    if not np.isfinite(batch).all():
        raise DataError(f"{p}: phenoData batch is missing for some samples")
    cancer = [str(c) for c in pheno["cancer"]]
    bad = sorted(set(cancer) - {"Cancer", "Normal", "Biopsy"})
    if bad:
        raise DataError(f"{p}: phenoData cancer must be Cancer, Normal or Biopsy, found {bad}")
    return BladderData(x, genes, samples, batch.astype(np.int64), cancer, [str(o) for o in pheno["outcome"]])


def build_bladder_batch(params: Mapping[str, Any], where: str) -> GeneTask:
    """The five batches of ``bladderbatch`` as sites, cancer against normal or biopsy (module docstring)."""
    check_keys(params, ["path", "n_genes", "test_fraction", "split_seed", "hidden", "l1"], where)
    path = get(params, "path", str, where, None)
    n_genes = get(params, "n_genes", int, where, 0, in_range(0))
    test_fraction = get(params, "test_fraction", float, where, 0.25, in_range(0, 1, lo_open=True, hi_open=True))
    split_seed = get(params, "split_seed", int, where, 0)
    hidden = get(params, "hidden", int, where, 16, in_range(0))
    l1 = get(params, "l1", float, where, 1e-3, in_range(0))
    data = load_bladder(path)
    x, genes = data.x, data.genes
    if n_genes:
        if n_genes > len(genes):
            raise DataError(f"{where}.n_genes: {n_genes}, but the matrix has {len(genes)} probe sets")
        x, genes = x[:, :n_genes], genes[:n_genes]
    y = np.array([c == "Cancer" for c in data.cancer], dtype=np.int64)
    rng = np.random.default_rng(split_seed)
    sites = []
    notes = []
    for b in sorted(set(data.batch.tolist())):
        idx = np.flatnonzero(data.batch == b)
        site = split_site(f"batch{b}", x[idx], y[idx], test_fraction, rng)
        if site.n_train == 0 or site.n_test == 0:
            raise DataError(f"{where}: batch {b} ({len(idx)} samples) has no training or test samples with "
                            f"test_fraction = {test_fraction}")
        sites.append(site)
        counts = {c: sum(data.cancer[i] == c for i in idx) for c in ("Cancer", "Normal", "Biopsy")}
        notes.append(f"batch{b}: " + ", ".join(f"{n} {c.lower()}" for c, n in counts.items() if n))
    info = {"features": genes, "labels": ["normal or biopsy", "cancer"], "positive": "cancer",
            "notes": ["the five processing batches of bladderbatch are the sites; " + "; ".join(notes)]}
    return GeneTask("bladder-batch", 2, sites, info, hidden=hidden, l1=l1)
