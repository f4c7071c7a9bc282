"""``secure-fl compare``, ``run`` and ``protocols``: experiments on the in-process engine."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from ..errors import SecureFLError

DEFAULT_EXPERIMENT = "quickstart"


def _load(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from ..run.experiment import load_experiment, with_overrides

    exp = load_experiment(args.experiment)
    if args.rounds is not None or args.seeds is not None:
        exp = with_overrides(exp, rounds=args.rounds, seeds=args.seeds)
    return exp


def _print_table(result, as_json: bool = False) -> None:  # type: ignore[no-untyped-def]
    if as_json:  # the same strict JSON as compare.json, for scripts
        from ..run.compare import compare_json

        print(compare_json(result))
        return
    from rich.console import Console
    from rich.table import Table

    from ..run.compare import table_rows

    header, rows = table_rows(result)
    table = Table(title=f"{result.experiment.name}: {result.task.describe()}", title_justify="left")
    for h in header:  # narrower than the table: cells fold, nothing is cut off (protocol names stay whole)
        table.add_column(h, justify="left" if h == "protocol" else "right", no_wrap=h == "protocol", overflow="fold")
    from rich.markup import escape

    for r in rows:
        table.add_row(*(escape(c) for c in r))  # labels like "dp-sgd-local[target_epsilon=1.0]" are not markup
    console = Console()  # rich fits the table to the terminal (wrapping cells) and prints 80 columns into a pipe
    console.print(table)
    from ..run.compare import site_rows

    site_header, srows = site_rows(result)
    if srows:
        from ..run.compare import SITE_LEGEND

        sites = Table(title="per site", caption=SITE_LEGEND, title_justify="left", caption_justify="left")
        for h in site_header:
            left = h in ("protocol", "site")
            sites.add_column(h, justify="left" if left else "right", no_wrap=left, overflow="fold")
        for r in srows:
            sites.add_row(*(escape(c) for c in r))
        console.print(sites)
    from ..run.compare import guarantee_lines

    for label, guarantee in guarantee_lines(result):  # what each protected row buys (its spec's first guarantee)
        console.print(f"[bold]{escape(label)}[/bold]: {escape(guarantee)}")
    console.print(
        f"seeds {result.experiment.seeds}, {result.experiment.rounds} rounds; metrics on the pooled test sets of all sites "  # noqa: E501 (a table row or a translated phrase reads best whole)
        f"(mean ± sd over seeds); KB up/down = bytes per participating site per round; "
        f"run {result.run_id} in {result.out_dir}"
    )
    failed = [r for r in result.runs if r.status != "finished"]
    for r in failed:
        console.print(f"[red]{escape(r.variant)} seed {r.seed}: {escape(r.status)}[/red]")


def _start(args: argparse.Namespace, chosen: list[str] | None, exp=None) -> int:  # type: ignore[no-untyped-def]
    from ..run.compare import run_experiment

    result = run_experiment(
        exp or _load(args),
        Path(args.out),
        variants=chosen,
        show_progress=not args.quiet,
        threads=args.threads,
        run_id=args.run_id,
        overwrite=args.overwrite,
    )
    _print_table(result, args.json)
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    return _start(args, args.protocol or None)


def cmd_run(args: argparse.Namespace) -> int:
    from ..errors import SpecError

    if args.resume is not None:
        given = [f for f in ("experiment", "protocol", "rounds", "seeds", "run_id") if getattr(args, f) is not None]
        if given or args.overwrite:
            given += ["overwrite"] if args.overwrite else []
            raise SpecError(f"--resume continues a run with its own settings; drop {given}")
        from ..run.compare import resume_experiment

        result = resume_experiment(Path(args.resume), show_progress=not args.quiet, threads=args.threads)
        _print_table(result, args.json)
        return 0
    if args.experiment is None:
        raise SpecError("run: give an EXPERIMENT (TOML or name in experiments/), or --resume RUN_DIR")
    exp = _load(args)
    return _start(args, args.protocol or [exp.variants[0].label], exp)


def cmd_protocols(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from ..catalogue import search_dirs
    from ..protocol.spec import list_protocols, load_protocol
    from ..run.experiment import REFERENCES

    folders = ", ".join(str(d) for d in search_dirs("protocols"))
    table = Table(title=f"protocol catalogue (*.toml in {folders}; the first folder wins)", title_justify="left")
    for h in ("name", "secure sum", "aggregator sees", "privacy", "summary"):
        table.add_column(h, no_wrap=h == "name")
    for name in list_protocols():
        try:
            spec = load_protocol(name)
        except SecureFLError as exc:
            table.add_row(name, "–", "–", "–", f"[red]invalid: {exc}[/red]")
            continue
        dp = "yes" if spec.privacy is not None else "no"
        table.add_row(spec.name, spec.secure_sum_kind, spec.threat_model.aggregator_sees, dp, spec.summary)
    for ref in REFERENCES:
        table.add_row(
            ref,
            "–",
            "–",
            "–",
            "reference point (not a protocol): "
            + ("centralised training on all sites' data" if ref == "pooled" else "each site trains alone"),
        )
    console = Console()  # rich fits the table to the terminal
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


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    def experiment_args(p: argparse.ArgumentParser, optional: bool) -> None:
        if optional:
            p.add_argument(
                "experiment",
                nargs="?",
                default=DEFAULT_EXPERIMENT,
                help="experiment TOML or name in experiments/ (default: quickstart)",
            )
        else:
            p.add_argument("experiment", nargs="?", help="experiment TOML or name in experiments/")
        p.add_argument("--protocol", action="append", help="only this protocol (repeatable)")
        p.add_argument("--rounds", type=int, help="override the number of rounds")
        p.add_argument("--seeds", type=int, nargs="+", help="override the seeds")
        p.add_argument("--out", default="runs", help="root of the run folders (default: runs)")
        p.add_argument("--run-id", help="name of the run folder (default: UTC start time + random hex)")
        p.add_argument("--overwrite", action="store_true", help="replace an existing run folder named by --run-id")
        p.add_argument("--quiet", action="store_true", help="no progress bar")
        p.add_argument("--json", action="store_true", help="print compare.json (strict JSON) instead of the tables")
        p.add_argument(
            "--threads",
            type=int,
            default=int(os.environ.get("SECURE_FL_THREADS", "1")),
            help="torch threads (default 1, or $SECURE_FL_THREADS)",
        )

    p = sub.add_parser(
        "compare",
        help="several protocols on the same task and seeds; prints the table",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n  secure-fl compare                                   the quickstart (four hospitals)\n"
        "  secure-fl compare heart-protocols --seeds 0 --protocol ckks-fedavg",
    )
    experiment_args(p, optional=True)
    p.set_defaults(func=cmd_compare)
    p = sub.add_parser("run", help="one protocol of an experiment (the first listed unless --protocol)")
    experiment_args(p, optional=False)
    p.add_argument(
        "--resume",
        metavar="RUN_DIR",
        help="continue a crashed run (runs/<experiment>/<run-id>) from its last finished round",
    )
    p.set_defaults(func=cmd_run)
    p = sub.add_parser("protocols", help="list the protocol catalogue")
    p.add_argument("--sites", type=int, help="also print each masking protocol's guarantee for this many sites")
    p.set_defaults(func=cmd_protocols)
