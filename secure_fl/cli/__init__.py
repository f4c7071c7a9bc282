"""The ``secure-fl`` command."""

from __future__ import annotations

import argparse
import importlib
import sys
import warnings

from ..errors import SecureFLError

__all__ = ["main"]

# one module per command group: (module, attribute) with add_parser(subparsers)
_EXTRA_COMMANDS = [
    ("secure_fl.cli.experiments", "add_parser"),
    ("secure_fl.cli.keys", "add_parser"),
    ("secure_fl.cli.ledger", "add_parser"),
    ("secure_fl.cli.predict", "add_parser"),
    ("secure_fl.cli.deploy", "add_parser"),
    ("secure_fl.cli.report", "add_parser"),
    ("secure_fl.cli.audit", "add_parser"),
    ("secure_fl.cli.sweep", "add_parser"),
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="secure-fl", description="Privacy-preserving federated learning between hospitals.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n  secure-fl compare                       every protection on four real hospitals\n"
               "  secure-fl guarantee ckks-fedavg --sites 4   what a protocol guarantees, in plain language",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)

    for module, attr in _EXTRA_COMMANDS:
        try:
            getattr(importlib.import_module(module), attr)(sub)
        except ModuleNotFoundError as exc:
            if exc.name != module:
                raise
    return parser


def _version() -> str:
    from .. import __version__

    return __version__


def _quiet_library_warnings() -> None:
    """Show each library warning once per process, not once per site and round.

    Opacus registers full backward hooks; PyTorch warns "Full backward hook is firing when gradients
    are computed with respect to module outputs..." on every backward pass whose first layer's input
    needs no gradient (harmless there): ≈1,900 lines for dp-heart. The ``"once"`` filter action is
    not enough: its registry is cleared whenever any ``warnings.catch_warnings()`` block changes the
    filters (the accountants use one each round), so repeats are dropped here, by message and category.
    """
    show = warnings.showwarning
    if getattr(show, "secure_fl_once", False):
        return
    shown: set[tuple[type, str]] = set()

    def show_once(message, category, filename, lineno, file=None, line=None):  # type: ignore[no-untyped-def]
        key = (category, str(message))
        if key not in shown:
            shown.add(key)
            show(message, category, filename, lineno, file, line)

    show_once.secure_fl_once = True  # type: ignore[attr-defined]
    warnings.showwarning = show_once


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _quiet_library_warnings()
    try:
        return int(args.func(args))
    except SecureFLError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: finished rounds are in the run folder", file=sys.stderr)
        return 130

