"""The ``secure-fl`` command."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from pathlib import Path

from .errors import SecureFLError

__all__ = ["main"]

DEFAULT_EXPERIMENT = "quickstart"


def _load(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from .run.experiment import load_experiment

    exp = load_experiment(args.experiment)
    if getattr(args, "rounds", None):
        exp.rounds = args.rounds
    if getattr(args, "seeds", None):
        exp.seeds = args.seeds
    return exp


def _print_table(result) -> None:  # type: ignore[no-untyped-def]
    from rich.console import Console
    from rich.table import Table

    from .run.compare import table_rows

    header, rows = table_rows(result)
    table = Table(title=f"{result.experiment.name}: {result.task.describe()}", title_justify="left")
    for h in header:
        table.add_column(h, justify="left" if h == "protocol" else "right")
    from rich.markup import escape

    for r in rows:
        table.add_row(*(escape(c) for c in r))  # labels like "dp-sgd-local[target_epsilon=1.0]" are not markup
    console = Console(width=max(Console().width, 150))
    console.print(table)
    console.print(
        f"seeds {result.experiment.seeds}, {result.experiment.rounds} rounds; metrics on the pooled test sets of all sites "
        f"(mean ± sd over seeds); KB up/down = bytes per participating site per round; run folders under {result.out_dir}"
    )
    failed = [r for r in result.runs if r.status != "finished"]
    for r in failed:
        console.print(f"[red]{escape(r.variant)} seed {r.seed}: {escape(r.status)}[/red]")


def cmd_compare(args: argparse.Namespace) -> int:
    from .run.compare import run_experiment

    exp = _load(args)
    result = run_experiment(exp, Path(args.out), variants=args.protocol or None, show_progress=not args.quiet, threads=args.threads)
    _print_table(result)
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from .errors import SpecError
    from .run.compare import run_experiment

    exp = _load(args)
    labels = [v.label for v in exp.variants]
    chosen = args.protocol or labels[:1]
    unknown = [p for p in chosen if p not in labels]
    if unknown:
        raise SpecError(f"--protocol {unknown}: not in {exp.source} (it lists {labels})")
    result = run_experiment(exp, Path(args.out), variants=chosen, show_progress=not args.quiet, threads=args.threads)
    _print_table(result)
    return 0


def cmd_protocols(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from .protocol.spec import list_protocols, load_protocol
    from .run.experiment import REFERENCES

    table = Table(title="protocol catalogue (protocols/*.toml)", title_justify="left")
    for h in ("name", "secure sum", "aggregator sees", "privacy", "summary"):
        table.add_column(h)
    for name in list_protocols():
        try:
            spec = load_protocol(name)
        except SecureFLError as exc:
            table.add_row(name, "–", "–", "–", f"[red]invalid: {exc}[/red]")
            continue
        dp = "yes" if spec.privacy is not None else "no"
        table.add_row(spec.name, spec.secure_sum_kind, spec.threat_model.aggregator_sees, dp, spec.summary)
    for ref in REFERENCES:
        table.add_row(ref, "–", "–", "–", "reference point (not a protocol): " + ("centralised training on all sites' data" if ref == "pooled" else "each site trains alone"))
    console = Console(width=max(Console().width, 160))
    console.print(table)
    if args.sites:  # guarantees that depend on n (masking: threshold, collusion bound, failure probability)
        for name in list_protocols():
            try:
                secure_sum = load_protocol(name).build_secure_sum()
                if hasattr(secure_sum, "guarantee"):
                    secure_sum.setup([f"site-{i}" for i in range(args.sites)], 1)
                    console.print(f"{name}: {secure_sum.guarantee()}")
            except SecureFLError as exc:
                console.print(f"{name}: [red]{exc}[/red]")
    return 0


# sub-commands contributed by other modules: (module, attribute) with add_parser(subparsers)
_EXTRA_COMMANDS = [("secure_fl.cli_keys", "add_parser"), ("secure_fl.cli_ledger", "add_parser")]
_EXTRA_COMMANDS.append(("secure_fl.cli_audit", "add_parser"))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="secure-fl", description="Privacy-preserving federated learning between hospitals.")
    sub = parser.add_subparsers(dest="command", required=True)

    def experiment_args(p: argparse.ArgumentParser, optional: bool) -> None:
        if optional:
            p.add_argument("experiment", nargs="?", default=DEFAULT_EXPERIMENT, help="experiment TOML or name in experiments/ (default: quickstart)")
        else:
            p.add_argument("experiment", help="experiment TOML or name in experiments/")
        p.add_argument("--protocol", action="append", help="only this protocol (repeatable)")
        p.add_argument("--rounds", type=int, help="override the number of rounds")
        p.add_argument("--seeds", type=int, nargs="+", help="override the seeds")
        p.add_argument("--out", default="runs", help="root of the run folders (default: runs)")
        p.add_argument("--quiet", action="store_true", help="no progress bar")
        p.add_argument("--threads", type=int, default=int(os.environ.get("SECURE_FL_THREADS", "1")), help="torch threads (default 1, or $SECURE_FL_THREADS)")

    p = sub.add_parser("compare", help="several protocols on the same task and seeds; prints the table")
    experiment_args(p, optional=True)
    p.set_defaults(func=cmd_compare)
    p = sub.add_parser("run", help="one protocol of an experiment (the first listed unless --protocol)")
    experiment_args(p, optional=False)
    p.set_defaults(func=cmd_run)
    p = sub.add_parser("protocols", help="list the protocol catalogue")
    p.add_argument("--sites", type=int, help="also print each masking protocol's guarantee for this many sites")
    p.set_defaults(func=cmd_protocols)
    for module, attr in _EXTRA_COMMANDS:
        try:
            getattr(importlib.import_module(module), attr)(sub)
        except ModuleNotFoundError as exc:
            if exc.name != module:
                raise
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except SecureFLError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: finished rounds are in the run folder", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
