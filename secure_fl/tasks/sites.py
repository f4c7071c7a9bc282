"""Which files make up which site, and how each site's rows split into train and test.

A site is named explicitly in the experiment TOML::

    [[task.sites]]
    name = "Cleveland"
    train = "data/cleveland_train.csv"     # rows to train on
    test = "data/cleveland_test.csv"       # a fixed test file (optional)

    [[task.sites]]
    name = "Hungary"
    data = "data/hungary.csv"              # one file, split by a column ...
    split_column = "split"                 # ... whose values are "train" or "test"

    [[task.sites]]
    name = "Basel"
    data = "data/basel.csv"                # ... or by a seeded, stratified fraction
    test_fraction = 0.3                    # default: [task].test_fraction (0.25)

Rules, each refused with an error naming the key or file: two sites with one name; one file
used twice (by two sites, or as a site's train and test file); ``data`` together with ``train``;
a site with neither.

The seeded split (:func:`fraction_split`) is exactly reproducible: per label class, in class
order, the rows of that class (in file order) are permuted by numpy's PCG64 generator seeded
with ``SeedSequence([split_seed, crc32(site name)])``, and the first
``round(test_fraction × class size)`` of them are the test rows. A site's split depends only on
its own rows, its name and ``split_seed``: adding or removing another site changes nothing.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DataError, SpecError
from ..speccheck import check_keys, get, in_range

__all__ = ["SiteSource", "parse_sites", "fraction_split", "check_unique_names"]

SITE_KEYS = ("name", "data", "train", "test", "split_column", "test_fraction")


@dataclass(frozen=True)
class SiteSource:
    """Where one site's rows come from.

    ``train`` holds the training rows, or every row when the site is split by ``split_column``
    or ``test_fraction``; ``test`` is a fixed test file. Exactly one way of splitting applies.
    """

    name: str
    train: Path
    test: Path | None = None
    split_column: str | None = None
    test_fraction: float | None = None

    @property
    def split(self) -> str:
        if self.test is not None:
            return f"test file {self.test}"
        if self.split_column is not None:
            return f"column {self.split_column!r}"
        return f"seeded fraction {self.test_fraction}"


def _path(value: Any, where: str) -> Path:
    if not isinstance(value, str) or not value:
        raise SpecError(f"{where}: expected a file or folder path, found {value!r}")
    return Path(value).expanduser()


def parse_sites(
    params: Mapping[str, Any], where: str, default_fraction: float, name_from: str = "stem"
) -> list[SiteSource]:
    """Sites from ``[[task.sites]]``, or from the older ``paths = [...]`` list (one site per path).

    With ``paths`` a site is named after its file (``name_from="stem"``) or folder
    (``"name"``); two paths giving one name (``hA/data.csv`` and ``hB/data.csv``) are refused
    rather than merged into one site.
    """
    if "sites" in params and "paths" in params:
        raise SpecError(f"{where}: give either [[task.sites]] or paths, not both")
    if "paths" in params:
        raw = get(params, "paths", list, where)
        if not raw:
            raise SpecError(f"{where}.paths: give at least one site folder or file")
        paths = [_path(p, f"{where}.paths[{i}]") for i, p in enumerate(raw)]
        names = [getattr(p, name_from) for p in paths]
        for _i, n in enumerate(names):
            if names.count(n) > 1:
                clash = [str(p) for p, m in zip(paths, names) if m == n]
                raise SpecError(
                    f"{where}.paths: {clash} would all be site {n!r}; name each site with "
                    f'[[task.sites]] name = "...", data = "..."'
                )
        sites = [SiteSource(n, p, test_fraction=default_fraction) for n, p in zip(names, paths)]
    else:
        raw_sites = get(params, "sites", list, where)
        if not raw_sites:
            raise SpecError(f"{where}.sites: list at least one [[task.sites]]")
        sites = [_site(t, f"{where}.sites[{i}]", default_fraction) for i, t in enumerate(raw_sites)]
    check_unique_names([s.name for s in sites], f"{where}.sites")
    seen: dict[Path, str] = {}
    for s in sites:
        for role, p in (("train", s.train), ("test", s.test)):
            if p is None:
                continue
            key = p.resolve()
            if key in seen:
                raise SpecError(f"{where}.sites: {p} is used twice ({seen[key]} and site {s.name!r} {role}); "
                                "each file belongs to one site and one role")
            seen[key] = f"site {s.name!r} {role}"
    return sites


def _site(t: Any, where: str, default_fraction: float) -> SiteSource:
    if not isinstance(t, dict):
        raise SpecError(f"{where}: expected a [[task.sites]] table, found {t!r}")
    check_keys(t, SITE_KEYS, where)
    name = get(t, "name", str, where)
    if not name.strip() or "/" in name:
        raise SpecError(f"{where}.name: must be a non-empty name without '/', found {name!r}")
    if "data" in t and "train" in t:
        raise SpecError(f"{where}: give data (one file to split) or train (with an optional test), not both")
    if "data" not in t and "train" not in t:
        raise SpecError(f"{where}: site {name!r} needs data = \"...\" or train = \"...\"")
    train = _path(t.get("data", t.get("train")), f"{where}.{'data' if 'data' in t else 'train'}")
    test = _path(t["test"], f"{where}.test") if "test" in t else None
    split_column = get(t, "split_column", str, where, None)
    fraction = get(t, "test_fraction", float, where, None, in_range(0, 1, lo_open=True, hi_open=True))
    given = (("test", test), ("split_column", split_column), ("test_fraction", fraction))
    ways = [k for k, v in given if v is not None]
    if len(ways) > 1:
        raise SpecError(f"{where}: site {name!r} gives {ways}; choose one way to make its test set")
    if test is not None and "data" in t:
        raise SpecError(f"{where}: a site with a test file names its training file with train = \"...\", not data")
    if not ways:
        fraction = default_fraction
    return SiteSource(name, train, test, split_column, fraction)


def check_unique_names(names: list[str], where: str) -> None:
    """Refuse two sites with one name: they would share a ledger and overwrite each other's update."""
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise DataError(f"{where}: site name(s) {dup} given more than once; every site needs its own name")


def fraction_split(labels: np.ndarray, test_fraction: float, split_seed: int, site: str) -> np.ndarray:
    """Boolean test mask: stratified by label, seeded by ``(split_seed, crc32(site))`` (see module doc)."""
    rng = np.random.default_rng(np.random.SeedSequence([split_seed, zlib.crc32(site.encode())]))
    test = np.zeros(len(labels), dtype=bool)
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        test[idx[: int(round(test_fraction * len(idx)))]] = True
    return test
