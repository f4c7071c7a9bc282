"""Run folders: one per run, with an id, a lock, and files written so that nothing is lost.

Layout (``runs/`` is ``--out``)::

    runs/<experiment>/
      latest -> <run-id>             symlink (a text file holding the id where symlinks fail)
      <run-id>/                      e.g. 20261123T184500Z-3fa9c2 (UTC start time + 6 random hex)
        lock                         while a process writes here: {"pid", "host", "started_utc"}
        resolved.json                the effective config after CLI overrides, versions, git, data digests
        summary.json                 status (running | finished | failed | interrupted), pid, host, per run
        compare.json, compare.md     the comparison table (written when every run is done)
        <variant>/seed<k>/
          resolved.json              the variant's protocol spec as run
          summary.json               written at start (status running, pid), updated after each round
          rounds.jsonl               one line per finished round (flushed at once)
          views.jsonl                what the aggregator saw: round, stage, sender, kind, bytes
          checkpoint.pt              state after the last finished round (for ``--resume``)
          model.pt                   final weights
          sites/<site>/ledger.sqlite the simulated sites' privacy ledgers (DP protocols)

A new run never touches an earlier run's folder, so a rerun keeps the earlier results and
simulated ledgers; ``--run-id NAME`` with an existing folder is refused unless ``--overwrite``.
A real site's ledger lives in its own folder, outside any run folder, and is never reset here.

Every JSON file is written atomically (temp file + ``os.replace``) and in strict JSON (NaN and
infinities become ``null``). A ``summary.json`` that says ``running`` while its process is gone
(same host, pid not alive) reads as ``crashed`` through :func:`run_status`.
"""

from __future__ import annotations

import datetime as _dt
import errno
import json
import math
import os
import secrets
import socket
from pathlib import Path
from typing import Any

from ..errors import SecureFLError

__all__ = [
    "RunFolder", "RunLock", "RunLocked", "read_rounds", "read_jsonl", "read_json", "write_json", "strict_json",
    "new_run_id", "point_latest", "resolve_latest", "resolve_folder", "find_runs", "pid_alive", "run_status", "utc_now",
    "site_stats", "refusal_kind", "REFUSALS",
]


class RunLocked(SecureFLError):
    """Another live process is writing into this run folder."""


def utc_now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def new_run_id() -> str:
    """``YYYYMMDDTHHMMSSZ-xxxxxx``: sortable by start time; 24 random bits keep two starts in one second apart."""
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ") + "-" + secrets.token_hex(3)


def _clean(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "item") and callable(obj.item):
        return _clean(obj.item())
    return obj


def strict_json(data: Any, **kwargs: Any) -> str:
    """JSON that strict parsers accept: NaN/±inf -> ``null``; numpy scalars -> numbers."""
    return json.dumps(_clean(data), allow_nan=False, default=str, **kwargs)


def write_json(path: Path, data: Any) -> None:
    """Write ``data`` to ``path`` atomically: a reader sees the old file or the new one, never half."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w") as f:
        f.write(strict_json(data, indent=2, sort_keys=True))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this host (a zombie counts as gone)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a killed child not yet reaped by its parent is a zombie: it runs nothing
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


class RunLock:
    """An exclusive lock on a run folder: ``lock`` created with ``O_CREAT | O_EXCL``.

    A lock left by a process that is gone (same host, pid not alive) is stale and taken over;
    a lock held by a live process, or by another host (whose pids cannot be checked), is refused
    with :class:`RunLocked` naming the holder.
    """

    def __init__(self, folder: Path) -> None:
        self.path = folder / "lock"
        self.held = False

    def acquire(self) -> "RunLock":
        me = {"pid": os.getpid(), "host": socket.gethostname(), "started_utc": utc_now()}
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = self._holder()
                if holder is None or self._stale(holder):
                    self.path.unlink(missing_ok=True)  # a dead writer's lock (or a torn one): take it over
                    continue
                raise RunLocked(
                    f"{self.path.parent} is being written by pid {holder.get('pid')} on host {holder.get('host')!r} "
                    f"(since {holder.get('started_utc')}); wait for it to finish, or start a new run "
                    f"(if that process is gone for good, remove {self.path})"
                ) from None
            with os.fdopen(fd, "w") as f:
                f.write(json.dumps(me))
            self.held = True
            return self
        raise RunLocked(f"{self.path}: could not take the lock (another process keeps re-creating it)")

    def _holder(self) -> dict[str, Any] | None:
        try:
            data = json.loads(self.path.read_text())
        except (OSError, json.JSONDecodeError):
            return None
        return data if isinstance(data, dict) else None

    @staticmethod
    def _stale(holder: dict[str, Any]) -> bool:
        pid = holder.get("pid")
        return holder.get("host") == socket.gethostname() and isinstance(pid, int) and not pid_alive(pid)

    def release(self) -> None:
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def point_latest(exp_dir: Path, run_id: str) -> None:
    """Make ``exp_dir/latest`` name ``run_id``: a relative symlink, replaced atomically; a text file where
    the file system refuses symlinks."""
    link = exp_dir / "latest"
    tmp = exp_dir / f".latest.{os.getpid()}.tmp"
    tmp.unlink(missing_ok=True)
    try:
        os.symlink(run_id, tmp)
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.ENOSYS, errno.EACCES):
            raise
        tmp.write_text(run_id + "\n")
    if link.is_dir() and not link.is_symlink():
        raise SecureFLError(f"{link} is a folder, not the pointer to the latest run; move it away")
    os.replace(tmp, link)


def resolve_latest(exp_dir: Path) -> Path | None:
    """The run folder ``exp_dir/latest`` points to (symlink or text file), or ``None``."""
    link = exp_dir / "latest"
    if link.is_symlink():
        return exp_dir / os.readlink(link)
    if link.is_file():
        return exp_dir / link.read_text().strip()
    return None


def run_status(folder: Path) -> str:
    """The status in ``folder/summary.json``, with ``running`` told apart from ``crashed``
    (the writing process is gone) -- or ``missing`` when there is no summary."""
    try:
        data = json.loads((folder / "summary.json").read_text())
    except FileNotFoundError:
        return "missing"
    except json.JSONDecodeError:
        return "unreadable"
    status = str(data.get("status", "unknown"))
    if status == "running" and data.get("host") == socket.gethostname() and not pid_alive(int(data.get("pid", 0))):
        return "crashed"
    return status


class RunFolder:
    """One variant and seed of a run: appends JSON lines, writes JSON atomically. Deletes nothing."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.mkdir(parents=True, exist_ok=True)

    def write_json(self, name: str, data: Any) -> None:
        write_json(self.path / name, data)

    def append(self, name: str, *records: Any) -> None:
        if not records:
            return
        with open(self.path / name, "a") as f:
            f.write("".join(strict_json(r, sort_keys=True) + "\n" for r in records))
            f.flush()
            os.fsync(f.fileno())

    def rewrite_jsonl(self, name: str, records: list[Any]) -> None:
        """Replace a JSON-lines file atomically (used by ``--resume`` to drop a torn last line)."""
        tmp = self.path / f".{name}.{os.getpid()}.tmp"
        tmp.write_text("".join(strict_json(r, sort_keys=True) + "\n" for r in records))
        os.replace(tmp, self.path / name)


def read_jsonl(file: Path) -> list[dict[str, Any]]:
    """Records (JSON objects) of a JSON-lines file, ``[]`` if it is missing; reading stops at a torn line
    (a crash mid-write), and a line that is not an object is skipped."""
    out: list[dict[str, Any]] = []
    try:
        text = Path(file).read_text()
    except FileNotFoundError:
        return out
    for line in text.splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            break
        if isinstance(rec, dict):
            out.append(rec)
    return out


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object from ``path``, or ``{}`` when it is missing, unreadable, torn or not an object
    (for readers of finished or crashed runs, e.g. reports; the writer uses :func:`write_json`)."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def read_rounds(path: Path) -> list[dict[str, Any]]:
    """Rounds of a run folder; a torn last line (crash mid-write) is skipped."""
    return read_jsonl(path / "rounds.jsonl")


def resolve_folder(path: Path) -> Path:
    """``path``, or the run ``path/latest`` points to when ``path`` is an experiment folder."""
    return resolve_latest(Path(path)) or Path(path)


def find_runs(path: Path) -> list[Path]:
    """Run folders of one variant and seed (holding ``rounds.jsonl``) at or below ``path``: a run folder, a
    compare folder (``<run-id>``) or an experiment folder (through ``latest``); ``latest`` is not followed below."""
    path = resolve_folder(path)
    if (path / "rounds.jsonl").exists():
        return [path]
    found = sorted({p.parent for depth in ("*", "*/*", "*/*/*") for p in path.glob(f"{depth}/rounds.jsonl")})
    return [p for p in found if "latest" not in p.relative_to(path).parts]


#: why a site's update did not count in a round, from the reason text in ``rounds.jsonl`` ``dropped``
REFUSALS = ("budget exhausted", "dropped", "rejected")


def refusal_kind(reason: str) -> str:
    """``budget exhausted`` (its ledger refused the round), ``dropped`` (went offline: simulated dropout)
    or ``rejected`` (a failure in local training, or the protocol refused its message)."""
    if "privacy budget exhausted" in reason:
        return "budget exhausted"
    if reason.startswith("dropped out"):
        return "dropped"
    return "rejected"


def site_stats(rounds: list[dict[str, Any]], sites: list[str]) -> dict[str, dict[str, Any]]:
    """Per site, over the rounds of one run: rounds it took part in (its update was in the sum),
    of those the rounds whose result was released, rounds it was picked but refused and why,
    rounds it was not picked, rounds that aborted before any sum (no participants; the record does
    not say who was picked then), and its ε at the end (``None`` without DP)."""
    out: dict[str, dict[str, Any]] = {
        s: {"took_part": 0, "released": 0, "refused": {k: 0 for k in REFUSALS}, "not_picked": 0, "round_aborted": 0,
            "epsilon": None, "last_refusal": None}
        for s in sites
    }
    for rec in rounds:
        participants = set(rec.get("participants", []))
        dropped = rec.get("dropped", {}) or {}
        for s, st in out.items():
            if s in participants:
                st["took_part"] += 1
                st["released"] += bool(rec.get("applied"))
            elif s in dropped:
                st["refused"][refusal_kind(str(dropped[s]))] += 1
                st["last_refusal"] = str(dropped[s])
            elif rec.get("aborted") and not participants:
                st["round_aborted"] += 1  # the record does not say which sites were picked in such a round
            else:
                st["not_picked"] += 1
        for s, spent in (rec.get("privacy_spent") or {}).items():
            if s in out and isinstance(spent, dict):
                out[s]["epsilon"] = spent.get("epsilon")
    return out
