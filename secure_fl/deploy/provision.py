"""``secure-fl provision FEDERATION.toml --out DIR``: one kit per site and one for the aggregator.

``FEDERATION.toml``::

    name = "heart-demo"                 # federation name (a plain folder name)
    address = "127.0.0.1:19000"         # where sites reach the aggregator (SuperLink host:port)
    ckks_preset = "compact"             # CKKS parameters of the federation's key set (optional)
    hosts = ["hospital-agg.example"]    # extra names/IPs in the server certificate (optional;
                                        # 127.0.0.1, localhost and the address host are always in)

    [sites.cleveland]                   # one table per site; the key is the site's name
    data = "Cleveland"                  # this site's data: its partition of the experiment's task
                                        # (a heart-disease hospital) ...
    data_path = "/data/cleveland.csv"   # ... or its own file/folder (csv and image-folder tasks)
    ledger_dir = "/var/lib/secure-fl/ledger"   # optional; default KIT/ledger
    budget_epsilon = 8.0                # optional: the site's own total (ε, δ) budget for DP protocols
    budget_delta = 1e-5                 # (a DP protocol runs only at a site with a budget; its δ must not exceed it)
    allow_seeded_noise = false          # optional: run DP specs with secure_noise = false (tests only)

Site names are lowercase ``[a-z0-9-]`` (they become Flower node names). The output holds
``DIR/aggregator/`` and ``DIR/sites/NAME/`` plus ``DIR/fingerprints.json`` (public: kit
fingerprints, to read out over the phone). Hand each kit to its party only: a site kit holds
the federation's CKKS secret key and the site's private keys.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import tomllib

from ..crypto.ckks import _pack, generate_keys
from ..crypto.ckks_params import DEFAULT_PRESET, PRESETS, get_preset
from ..errors import SpecError
from ..speccheck import check_keys, get, get_table, in_range
from .kit import KIT_FORMAT, kit_fingerprint, write_private
from .pki import identity_public, make_identity_key, make_node_key, make_tls

__all__ = ["parse_federation", "provision", "site_names", "federation_toml"]

_SITE_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")


def parse_federation(data: dict[str, Any], where: str) -> dict[str, Any]:
    check_keys(data, ["name", "address", "ckks_preset", "hosts", "sites"], where)
    name = get(data, "name", str, where)
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}", name):
        raise SpecError(f"{where}.name: a federation name is letters, digits, '-', '_' or '.', found {name!r}")
    address = get(data, "address", str, where)
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise SpecError(f"{where}.address: expected HOST:PORT, found {address!r}")
    preset = get(data, "ckks_preset", str, where, DEFAULT_PRESET)
    if preset not in PRESETS:
        raise SpecError(f"{where}.ckks_preset: unknown preset {preset!r}; known: {sorted(PRESETS)}")
    hosts = get(data, "hosts", list, where, [])
    for i, h in enumerate(hosts):
        if not isinstance(h, str) or not h:
            raise SpecError(f"{where}.hosts[{i}]: expected a host name or IP address, found {h!r}")
    sites_t = get_table(data, "sites", where)
    if len(sites_t) < 2:
        raise SpecError(f"{where} [sites]: a federation needs at least two sites, found {len(sites_t)}")
    sites: dict[str, dict[str, Any]] = {}
    for site, t in sites_t.items():
        w = f"{where} [sites.{site}]"
        if not _SITE_NAME.match(site):
            raise SpecError(f"{w}: site names are lowercase letters, digits and '-', found {site!r}")
        if not isinstance(t, dict):
            raise SpecError(f"{w}: expected a table")
        check_keys(t, ["data", "data_path", "ledger_dir", "budget_epsilon", "budget_delta", "allow_seeded_noise"], w)
        entry: dict[str, Any] = {"data": get(t, "data", str, w, site)}
        for key in ("data_path", "ledger_dir"):
            if key in t:
                entry[key] = get(t, key, str, w)
        if "allow_seeded_noise" in t:
            entry["allow_seeded_noise"] = get(t, "allow_seeded_noise", bool, w)
        if ("budget_epsilon" in t) != ("budget_delta" in t):
            raise SpecError(f"{w}: give both budget_epsilon and budget_delta, or neither")
        if "budget_epsilon" in t:
            entry["budget"] = {
                "epsilon": get(t, "budget_epsilon", float, w, check=in_range(0, lo_open=True)),
                "delta": get(t, "budget_delta", float, w, check=in_range(0, 1, lo_open=True, hi_open=True)),
            }
        sites[site] = entry
    return {"name": name, "address": address, "host": host, "ckks_preset": preset, "hosts": list(hosts), "sites": sites}


def site_names(data: Iterable[str]) -> dict[str, str]:
    """A site name for each task site in ``data`` (e.g. ``"VA Long Beach"`` -> ``"va-long-beach"``: lowercase,
    every run of other characters one ``-``), as ``{site name: data}`` for a federation file's ``[sites]``."""
    out: dict[str, str] = {}
    for d in data:
        name = re.sub(r"[^a-z0-9]+", "-", d.lower()).strip("-")
        if not _SITE_NAME.match(name):
            raise SpecError(f"task site {d!r}: no site name in [a-z0-9-] (1-63 characters) can be made from it")
        if name in out:
            raise SpecError(f"task sites {out[name]!r} and {d!r} make the same site name {name!r}")
        out[name] = d
    return out


def federation_toml(
    name: str, address: str, sites: Mapping[str, str], site_keys: Mapping[str, Any] | None = None
) -> str:
    """The text of a ``FEDERATION.toml``: one ``[sites.NAME]`` with ``data`` per entry of ``sites``
    (``{site name: task site}``, e.g. from :func:`site_names`), each with the extra keys ``site_keys``
    (e.g. ``budget_epsilon``). For tests and measurements on loopback; :func:`parse_federation` checks it."""
    lines = [f"name = {json.dumps(name)}", f"address = {json.dumps(address)}"]
    for site, d in sites.items():
        lines += [f"[sites.{site}]", f"data = {json.dumps(d)}"]
        lines += [f"{k} = {json.dumps(v)}" for k, v in (site_keys or {}).items()]
    return "\n".join(lines) + "\n"


def _mkdir(path: Path) -> None:
    path.mkdir(mode=0o700, parents=True, exist_ok=False)
    os.chmod(path, 0o700)


def _finish(root: Path, config: dict[str, Any], files: dict[str, bytes]) -> str:
    digests = {}
    for rel, blob in sorted(files.items()):
        write_private(root / rel, blob)
        digests[rel] = hashlib.sha256(blob).hexdigest()
    for sub in ("state",) + (("ledger",) if config["role"] == "site" else ()):
        (root / sub).mkdir(mode=0o700, exist_ok=True)
    config["files"] = digests
    config["fingerprint"] = kit_fingerprint(config)
    write_private(root / "kit.json", json.dumps(config, indent=2, sort_keys=True).encode())
    return str(config["fingerprint"])


def provision(federation_toml: Path | str, out_dir: Path | str) -> dict[str, Any]:
    """Write the kits; return ``{"federation", "federation_id", "kits": {party: fingerprint}}``."""
    src = Path(federation_toml)
    try:
        raw = tomllib.loads(src.read_text())
    except FileNotFoundError:
        raise SpecError(f"{src}: federation file not found") from None
    except tomllib.TOMLDecodeError as exc:
        raise SpecError(f"{src}: not valid TOML ({exc})") from exc
    fed = parse_federation(raw, str(src))
    out = Path(out_dir).expanduser().resolve()
    if out.exists() and any(out.iterdir()):
        raise SpecError(f"--out {out}: not empty; kits are never overwritten (choose a new folder)")
    out.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(out, 0o700)
    fed_id = secrets.token_hex(16)
    tls = make_tls(fed["name"], [fed["host"], *fed["hosts"]])
    ckks = generate_keys(get_preset(fed["ckks_preset"]))
    node_keys = {s: make_node_key() for s in fed["sites"]}
    identities = {s: make_identity_key() for s in fed["sites"]}
    roster = {
        s: {"node_public_key": node_keys[s][1].decode().strip(),
            "identity_public_key": identity_public(identities[s]).hex()}
        for s in fed["sites"]
    }
    common = {
        "format": KIT_FORMAT,
        "federation": fed["name"],
        "federation_id": fed_id,
        "address": fed["address"],
        "sites": roster,
        "ckks": {"preset": ckks.preset.name, "fingerprint": ckks.fingerprint},
    }
    fingerprints: dict[str, str] = {}
    (out / "sites").mkdir(mode=0o700)
    for s, entry in fed["sites"].items():
        root = out / "sites" / s
        _mkdir(root)
        files = {"tls/ca.crt": tls.ca_cert, "node/auth.key": node_keys[s][0], "node/auth.pub": node_keys[s][1],
                 "ckks/secret.ckks": _pack("secret", ckks, ckks.secret_bytes), "identity/ed25519.key": identities[s]}
        fingerprints[s] = _finish(root, {**common, "role": "site", "name": s, "site": entry}, files)
    agg = out / "aggregator"
    _mkdir(agg)
    files = {"tls/ca.crt": tls.ca_cert, "tls/server.pem": tls.server_cert, "tls/server.key": tls.server_key,
             "ckks/public.ckks": _pack("public", ckks, ckks.public_bytes)}
    files.update({f"nodes/{s}.pub": node_keys[s][1] for s in fed["sites"]})
    agg_config = {**common, "role": "aggregator", "name": "aggregator", "site_kits": dict(fingerprints)}
    fingerprints["aggregator"] = _finish(agg, agg_config, files)
    summary = {"federation": fed["name"], "federation_id": fed_id, "address": fed["address"], "kits": fingerprints}
    write_private(out / "fingerprints.json", json.dumps(summary, indent=2).encode())
    return summary
