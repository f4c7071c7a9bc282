"""``secure-fl keys``: provision and inspect CKKS key sets (run by the key holder, not the aggregator).

    secure-fl keys provision --sites N --out DIR [--preset NAME]
    secure-fl keys show DIR

``provision`` writes one secret context per site and one public context for the aggregator
(files 0600, directory 0700) and prints the manifest; ``show`` loads every file of a key set
with the role it is meant for and prints its kind, preset and fingerprint, so a wrong or
altered file is caught before a run.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

__all__ = ["add_parser", "cmd_provision", "cmd_show"]


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--sites: expected a positive integer, found {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"--sites: expected a positive integer, found {value}")
    return value


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``keys provision`` and ``keys show`` to the ``secure-fl`` sub-commands."""
    from ..crypto.ckks_params import DEFAULT_PRESET, PRESETS

    keys = subparsers.add_parser("keys", help="provision or inspect CKKS key sets")
    sub = keys.add_subparsers(dest="keys_command", required=True)
    p = sub.add_parser("provision", help="write one secret context per site and a public one for the aggregator")
    p.add_argument("--sites", type=_positive, required=True, help="number of sites")
    p.add_argument("--out", type=Path, required=True, help="empty directory for the key set (created 0700)")
    p.add_argument(
        "--preset",
        default=DEFAULT_PRESET,
        choices=sorted(PRESETS),
        help=f"CKKS parameters (default: {DEFAULT_PRESET}); "
        + "; ".join(f"{k}: {v.note}" for k, v in sorted(PRESETS.items())),
    )
    p.set_defaults(func=cmd_provision)
    p = sub.add_parser("show", help="check a key set and print fingerprints, kinds and preset")
    p.add_argument("dir", type=Path, help="directory written by `keys provision`")
    p.set_defaults(func=cmd_show)
    return keys


def cmd_provision(args: argparse.Namespace) -> int:
    from ..crypto.ckks import provision
    from ..errors import SecureFLError

    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise SecureFLError(f"--out {out}: is a file, not a folder; give a new or empty folder for the key set")
    if out.is_dir() and any(out.iterdir()):
        raise SecureFLError(
            f"--out {out}: the folder is not empty; give a new or empty folder (its files and "
            "permissions were left as they are)"
        )
    manifest = provision(args.sites, out, args.preset)
    params = manifest["params"]
    print(f"key set {manifest['fingerprint']} written to {args.out}")
    print(
        f"preset {manifest['preset']}: N = {params['poly_degree']}, moduli {params['coeff_mod_bit_sizes']}, "
        f"{params['encryption']} encryption, {params['security_bits']}-bit security (HE standard)"
    )
    for site, name in manifest["sites"].items():
        print(f"  {site:<10} secret  {name}")
    print(f"  {'aggregator':<10} public  {manifest['aggregator']}")
    print("hand each site only its own file; the aggregator gets only the public one")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    from ..crypto.ckks import CkksKeyError, load_context, load_manifest

    directory = Path(args.dir)
    manifest = load_manifest(directory)
    files = [(f, "secret") for f in manifest["sites"].values()] + [(manifest["aggregator"], "public")]
    print(f"key set in {directory}: preset {manifest['preset']}, fingerprint {manifest['fingerprint']}")
    for name, kind in files:
        ctx = load_context(directory / name, kind)  # type: ignore[arg-type]
        if ctx.fingerprint != manifest["fingerprint"]:
            raise CkksKeyError(
                f"{directory / name}: fingerprint {ctx.fingerprint} differs from the manifest's {manifest['fingerprint']}"  # noqa: E501 (a table row or a translated phrase reads best whole)
            )
        p = ctx.preset
        print(
            f"  {name:<28} {ctx.kind:<7} {p.name:<8} N={p.poly_degree} moduli={list(p.coeff_mod_bit_sizes)} {ctx.fingerprint}"  # noqa: E501 (a table row or a translated phrase reads best whole)
        )
    return 0
