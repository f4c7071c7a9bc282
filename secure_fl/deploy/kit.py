"""A party's provisioning kit: layout, loading and the checks that refuse a wrong kit.

Layout (every file 0600, every folder 0700)::

    KIT/kit.json                 role, name, federation (name + random id), address, roster,
                                 per-file SHA-256 and the kit fingerprint
    KIT/tls/ca.crt               the federation CA (all kits)
    KIT/tls/server.pem, .key     the SuperLink certificate and key (aggregator only)
    KIT/node/auth.key, auth.pub  SuperNode authentication key pair, EC P-256 OpenSSH (sites only)
    KIT/nodes/SITE.pub           every site's SuperNode public key (aggregator only, to register them)
    KIT/ckks/secret.ckks         CKKS secret context (sites) | KIT/ckks/public.ckks (aggregator)
    KIT/ckks/releases.json       sums released under that key set, counted by the site (mutable, never reset)
    KIT/identity/ed25519.key     the site's SecAgg identity signing key (sites only)
    KIT/ledger/                  the site's privacy ledger (never reset by the tool)
    KIT/approved.json            hashes of the protocol specs the site approved (site only, mutable)
    KIT/state/                   per-run party state and runtime files (mutable)

The fingerprint is SHA-256 over the canonical JSON of ``kit.json`` without its
``fingerprint`` field; ``kit.json`` lists the SHA-256 of every provisioned file, so an altered,
missing or swapped file is refused by name. The federation id is a random 128-bit value drawn
at provisioning: two kits belong to one federation exactly when their ids agree.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import SecureFLError

__all__ = ["KitError", "Kit", "load_kit", "write_private", "kit_fingerprint", "KIT_FORMAT", "MUTABLE"]

KIT_FORMAT = "secure-fl-kit/1"
#: parts of a kit that change after provisioning (not covered by the fingerprint)
MUTABLE = ("ledger", "state", "approved.json", "ckks/releases.json")


class KitError(SecureFLError, ValueError):
    """A kit is unusable: altered, misplaced, for another role or for another federation."""


def write_private(path: Path, data: bytes, *, overwrite: bool = False) -> None:
    """Create ``path`` with mode 0600 from the start (no window where others can read it)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if overwrite else os.O_EXCL)
    fd = os.open(path, flags, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.chmod(path, 0o600)


def kit_fingerprint(config: dict[str, Any]) -> str:
    body = {k: v for k, v in config.items() if k != "fingerprint"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@dataclass
class Kit:
    """A loaded, checked kit. ``config`` is ``kit.json``."""

    path: Path
    config: dict[str, Any]

    @property
    def role(self) -> str:
        return str(self.config["role"])

    @property
    def name(self) -> str:
        return str(self.config["name"])

    @property
    def federation(self) -> str:
        return str(self.config["federation"])

    @property
    def federation_id(self) -> str:
        return str(self.config["federation_id"])

    @property
    def fingerprint(self) -> str:
        return str(self.config["fingerprint"])

    @property
    def address(self) -> str:
        return str(self.config["address"])

    @property
    def sites(self) -> dict[str, dict[str, Any]]:
        return dict(self.config["sites"])

    @property
    def site_config(self) -> dict[str, Any]:
        return dict(self.config.get("site", {}))

    def file(self, rel: str) -> Path:
        return self.path / rel

    @property
    def ca_cert(self) -> Path:
        return self.path / "tls" / "ca.crt"

    @property
    def state_dir(self) -> Path:
        d = self.path / "state"
        d.mkdir(mode=0o700, exist_ok=True)
        return d

    @property
    def ledger_dir(self) -> Path:
        rel = self.site_config.get("ledger_dir", "ledger")
        d = (self.path / rel) if not Path(rel).is_absolute() else Path(rel)
        d.mkdir(mode=0o700, parents=True, exist_ok=True)
        return d

    def identity_public_keys(self) -> dict[str, bytes]:
        return {s: bytes.fromhex(v["identity_public_key"]) for s, v in self.sites.items()}

    # --- approvals (sites) -----------------------------------------------------------
    def approvals(self) -> dict[str, Any]:
        path = self.path / "approved.json"
        if not path.exists():
            return {}
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise KitError(f"{path}: not valid JSON ({exc})") from exc
        if not isinstance(data, dict):
            raise KitError(f"{path}: expected a JSON object of spec hash -> approval")
        return data

    def approve(self, spec_hash: str, spec_name: str, source: str) -> None:
        import datetime as _dt

        data = self.approvals()
        now = _dt.datetime.now(_dt.timezone.utc).isoformat()
        data[spec_hash] = {"name": spec_name, "source": source, "approved_utc": now}
        write_private(self.path / "approved.json", json.dumps(data, indent=2, sort_keys=True).encode(), overwrite=True)

    def check_peer(self, federation_id: str, federation: str, what: str) -> None:
        """Refuse a party of another federation (``what`` names it in the message)."""
        if federation_id != self.federation_id:
            raise KitError(
                f"{what} belongs to federation {federation!r} (id {federation_id[:12]}...), but this kit ({self.path}) "
                f"is for federation {self.federation!r} (id {self.federation_id[:12]}...): "
                "kits from another provisioning are refused"
            )


def load_kit(path: Path | str, role: str | None = None, name: str | None = None) -> Kit:
    """Load and check a kit: format, permissions, every file's digest, the fingerprint, the role.

    Raises :class:`KitError` naming the file and what is wrong.
    """
    root = Path(path).expanduser().resolve()
    cfg_path = root / "kit.json"
    if not cfg_path.is_file():
        raise KitError(f"{root}: not a secure-fl kit (no kit.json); give the folder written by `secure-fl provision`")
    try:
        config = json.loads(cfg_path.read_text())
    except json.JSONDecodeError as exc:
        raise KitError(f"{cfg_path}: not valid JSON ({exc})") from exc
    if not isinstance(config, dict) or config.get("format") != KIT_FORMAT:
        found = config.get("format") if isinstance(config, dict) else None
        raise KitError(f"{cfg_path}: format is {found!r}, expected {KIT_FORMAT!r}")
    for key in ("role", "name", "federation", "federation_id", "address", "sites", "files", "fingerprint"):
        if key not in config:
            raise KitError(f"{cfg_path}: missing key {key!r}")
    mode = stat.S_IMODE(root.stat().st_mode)
    if mode & 0o077:
        raise KitError(f"{root}: kit folder is open to other users (mode {mode:o}); run `chmod 700 {root}`")
    for rel, digest in sorted(config["files"].items()):
        f = root / rel
        if not f.is_file():
            raise KitError(f"{f}: listed in {cfg_path} but missing (the kit was moved or assembled from parts)")
        fmode = stat.S_IMODE(f.stat().st_mode)
        if fmode & 0o077:
            raise KitError(f"{f}: readable by other users (mode {fmode:o}); run `chmod 600 {f}`")
        if _sha256(f) != digest:
            raise KitError(f"{f}: its SHA-256 differs from the one recorded in {cfg_path} "
                           "(altered, or swapped from another kit)")
    if kit_fingerprint(config) != config["fingerprint"]:
        raise KitError(f"{cfg_path}: the kit fingerprint does not match its contents (kit.json was edited)")
    kit = Kit(root, config)
    if role is not None and kit.role != role:
        raise KitError(f"{root} is the kit of {kit.role} {kit.name!r}, not a {role} kit: "
                       f"give this command the {role}'s own kit")
    if name is not None and kit.name != name:
        raise KitError(f"{root} is the kit of site {kit.name!r}, but it is used as site {name!r}")
    return kit
