"""``secure-fl sweep``: an experiment over a grid of settings × protocols × seeds, resumable, with figures."""

from __future__ import annotations

import argparse
import os
from pathlib import Path


def cmd_sweep(args: argparse.Namespace) -> int:
    from ..run.experiment import load_experiment, with_overrides
    from ..run.sweep import grid_from, parse_set, run_sweep

    exp = load_experiment(args.experiment)
    if args.rounds is not None:
        exp = with_overrides(exp, rounds=args.rounds)
    grid = grid_from(exp, parse_set(args.set or []))
    folder = Path(args.dir) if args.dir else Path(args.out) / exp.name / "sweep"
    result = run_sweep(exp, grid, folder, protocols=args.protocol, seeds=args.seeds, threads=args.threads,
                       figures=not args.no_figures, collect_only=args.collect)
    print(f"{len(result.rows)} finished cells ({result.ran} run now, {result.skipped} already finished) "
          f"-> {folder / 'results.csv'}")
    for path in result.figures:
        print(f"figure: {path}")
    for failure in result.failed:
        print(f"failed: {failure}")
    return 1 if result.failed else 0


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "sweep", help="an experiment over a grid of settings x protocols x seeds (resumable; CSV and figures)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n"
               "  secure-fl sweep dp-heart --seeds 0 1                     the experiment's own [sweep] table\n"
               "  secure-fl sweep dp-heart --set privacy.target_epsilon=1,2,4,8 --set training.lr=0.05,0.5\n"
               "Rerunning the same command skips finished cells and continues an interrupted one.",
    )
    p.add_argument("experiment", help="experiment TOML or name in experiments/")
    p.add_argument("--set", action="append", metavar="KEY=V1,V2",
                   help="sweep KEY over these values (repeatable; replaces the [sweep] table's values for KEY); "
                        "KEY is rounds, task.*, training.*, federation.* or a protocol table key (privacy.*, ...)")
    p.add_argument("--protocol", action="append", help="only this protocol of the experiment (repeatable)")
    p.add_argument("--seeds", type=int, nargs="+", help="override the experiment's seeds")
    p.add_argument("--rounds", type=int, help="override the number of rounds")
    p.add_argument("--out", default="runs", help="root of the run folders (default: runs)")
    p.add_argument("--dir", help="the sweep folder (default: OUT/EXPERIMENT/sweep)")
    p.add_argument("--collect", action="store_true",
                   help="run nothing: gather the finished cells into results.csv and the figures")
    p.add_argument("--no-figures", action="store_true", help="write results.csv only")
    p.add_argument("--threads", type=int, default=int(os.environ.get("SECURE_FL_THREADS", "1")),
                   help="torch threads (default 1, or $SECURE_FL_THREADS)")
    p.set_defaults(func=cmd_sweep)
