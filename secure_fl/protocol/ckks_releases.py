"""How many sums a CKKS key set has released, per key holder, kept where the keys live.

With ``release = "aggregator"`` the flooding noise of :mod:`secure_fl.protocol.ckks` is sized
for ``(dim + 1) x max_released_rounds`` released values under one key set (Li, Micciancio,
Schultz, Sorrell, CRYPTO 2022, Sections 4-5: the statistical distance grows with the number of
released decryptions). The guarantee therefore rests on a count that outlives a process: a
deployed site's ClientApp is rebuilt for every message, a run may be resumed, and a kit's key
set serves run after run. :class:`ReleaseCount` keeps that count in a JSON file beside the
secret key (``KIT/ckks/releases.json`` for a deployed site), per key-set fingerprint and site,
written durably (temporary file, fsync, atomic rename, under an exclusive lock) *before* the
release it pays for leaves the site. Without a file (keys generated in memory for one
simulated run, gone with the process) the count lives in memory only.

File format (``secure-fl-ckks-releases/1``)::

    {"format": "secure-fl-ckks-releases/1",
     "key_sets": {"<fingerprint>": {"<site>": <sums seen released>, ...}, ...}}

A file that cannot be read is refused with an error naming it, never treated as zero: a count
that resets would let the key set release more than the flooding was calibrated for.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..errors import ProtocolError

__all__ = ["RELEASES_FORMAT", "ReleaseCount"]

RELEASES_FORMAT = "secure-fl-ckks-releases/1"


class ReleaseCount:
    """Sums released under the key set ``fingerprint``, as each key holder has seen them.

    ``path``: the JSON file that keeps the count across processes, runs and restarts (created on
    first use, mode 0600); ``None`` keeps it in memory for the life of this object.
    """

    def __init__(self, fingerprint: str, path: str | Path | None = None) -> None:
        if not isinstance(fingerprint, str) or not fingerprint:
            raise ProtocolError(f"a release count needs the key set's fingerprint, found {fingerprint!r}")
        self.fingerprint = fingerprint
        self.path = Path(path) if path is not None else None
        self._memory: dict[str, int] = {}
        if self.path is not None:
            _read(self.path)  # a bad file is refused now, at setup, not at the first release

    def seen(self, site_id: str) -> int:
        """Sums released under this key set that ``site_id`` has counted so far."""
        if self.path is None:
            return self._memory.get(site_id, 0)
        return int(_read(self.path).get(self.fingerprint, {}).get(site_id, 0))

    def add(self, site_id: str) -> int:
        """Count one more released sum for ``site_id``; the new count is on disk when this returns."""
        if self.path is None:
            self._memory[site_id] = self._memory.get(site_id, 0) + 1
            return self._memory[site_id]
        with _locked(self.path):
            key_sets = _read(self.path)
            mine = key_sets.setdefault(self.fingerprint, {})
            mine[site_id] = int(mine.get(site_id, 0)) + 1
            _write(self.path, key_sets)
            return int(mine[site_id])


# -- the file ----------------------------------------------------------------------------------


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path.with_name(path.name + ".lock"), os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def _read(path: Path) -> dict[str, dict[str, int]]:
    try:
        text = path.read_text()
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise ProtocolError(f"{path}: cannot read the CKKS release count ({exc})") from exc
    try:
        data: Any = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ProtocolError(f"{path}: the CKKS release count is not valid JSON ({exc}); "
                            "refusing to release under this key set (provision new keys)") from exc
    if not isinstance(data, dict) or data.get("format") != RELEASES_FORMAT:
        found = data.get("format") if isinstance(data, dict) else type(data).__name__
        raise ProtocolError(f"{path}: format is {found!r}, expected {RELEASES_FORMAT!r}")
    key_sets = data.get("key_sets")
    ok = isinstance(key_sets, dict) and all(
        isinstance(sites, dict) and all(isinstance(n, int) and not isinstance(n, bool) and n >= 0
                                        for n in sites.values())
        for sites in key_sets.values()
    )
    if not ok:
        raise ProtocolError(f"{path}: 'key_sets' must map fingerprints to {{site: count >= 0}}; "
                            "refusing to release under this key set (provision new keys)")
    return key_sets  # type: ignore[no-any-return,return-value]


def _write(path: Path, key_sets: dict[str, dict[str, int]]) -> None:
    body = json.dumps({"format": RELEASES_FORMAT, "key_sets": key_sets}, indent=1, sort_keys=True).encode()
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, body)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # the rename itself survives a crash
    finally:
        os.close(dir_fd)
