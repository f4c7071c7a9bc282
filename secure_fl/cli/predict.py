"""``secure-fl predict RUN_DIR --data FILE``: score new patients with a run's saved model.

For an image task ``--data`` is an image or a folder searched recursively; each image is resized
and converted (grey or RGB) as in training, and rows are named by file.


Reads ``RUN_DIR/model.json`` and ``RUN_DIR/model.pt`` (:mod:`secure_fl.tasks.export`) and applies the
saved preprocessing: the pooled statistics of ``model.json`` (``standardise = "federated"``), and
where the site's own apply (``standardise = "site"``, imputation values) those of ``--site`` from
``RUN_DIR/sites/<site>/preprocessing.json`` (needed when several sites saved theirs). It writes
one row per patient:
the file line, ``p(<class>)`` for every class and the predicted class. The label column, when the
file has one, is not read.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path
from typing import Any

__all__ = ["add_parser", "cmd_predict", "predict_file"]


def predict_file(run_dir: Path, data: Path, site: str | None = None,
                 stats: Path | None = None) -> tuple[list[str], list[list[Any]]]:
    """(header, rows) of class probabilities for every row of the CSV ``data``.

    ``stats``: the site's own ``preprocessing.json`` when it is not in the run folder (a deployed
    site keeps its own in its kit: ``KIT/state/runs/<run>/sites/<site>/preprocessing.json``).
    """
    import torch

    from ..errors import DataError
    from ..tasks.export import load_model, load_site_stats
    from ..tasks.tabular import LINE, Preprocessor, read_table

    model, card = load_model(run_dir, site)
    pre_json = card.get("preprocessing")
    if pre_json and pre_json.get("kind") == "images":
        return _predict_images(model, card, data)
    if not pre_json or pre_json.get("kind") != "tabular":
        raise DataError(f"{run_dir}/model.json: task {card['task']!r} saved no preprocessing; predict scores tables "
                        "of the csv task, the heart-disease task with split = \"flamby\", and image folders")
    pre = Preprocessor.from_json(pre_json)
    if stats is not None and site is None:
        raise DataError(f"--stats {stats}: say whose statistics these are with --site")
    if site is not None and site not in pre.stats:
        pre = Preprocessor.from_json(pre_json, {site: load_site_stats(run_dir, site, stats)})
    elif site is None and pre.needs_site():
        have = sorted(p.parent.name for p in (run_dir / "sites").glob("*/preprocessing.json")) or sorted(pre.stats)
        if len(have) != 1:
            raise DataError(f"{run_dir}: the model was trained by sites {card['sites']}, each with its own "
                            f"preprocessing statistics ({_why(pre)}); say whose to apply with --site (one of {have})")
        site = have[0]
        if site not in pre.stats:
            pre = Preprocessor.from_json(pre_json, {site: load_site_stats(run_dir, site)})
    df = read_table(data, pre.delimiter, pre.decimal)
    x = pre.transform(site, df, data)
    with torch.no_grad():
        probs = torch.softmax(model(torch.tensor(x, dtype=torch.float32)).double(), dim=1).numpy()
    classes = card["classes"]
    header = ["line"] + [f"p({c})" for c in classes] + ["predicted"]
    rows = [[int(line)] + [round(float(p), 6) for p in pr] + [classes[int(pr.argmax())]]
            for line, pr in zip(df[LINE], probs)]
    return header, rows


def _why(pre: Any) -> str:
    if pre.standardise == "site":
        return "standardise = \"site\""
    return "imputation values of " + ", ".join(c.name for c in pre.columns if c.missing == "impute")


def _predict_images(model: Any, card: dict[str, Any], data: Path) -> tuple[list[str], list[list[Any]]]:
    """Every image under ``data`` (a folder, searched recursively, or one image file), in path order."""
    import numpy as np
    import torch

    from ..errors import DataError
    from ..tasks.images import IMAGE_SUFFIXES, load_image

    pre = card["preprocessing"]
    if data.is_dir():
        files = sorted(f for f in data.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
    else:
        files = [data]
    if not files:
        raise DataError(f"{data}: no image files (suffixes {sorted(IMAGE_SUFFIXES)})")
    size = (int(pre["image_size"][0]), int(pre["image_size"][1]))
    channels = int(pre["channels"])
    classes = card["classes"]
    rows: list[list[Any]] = []
    for i in range(0, len(files), 64):
        batch = [load_image(f, size, channels) for f in files[i : i + 64]]
        x = np.stack(batch)
        x = x[:, None] if channels == 1 else x
        with torch.no_grad():
            probs = torch.softmax(model(torch.tensor(x)).double(), dim=1).numpy()
        rows += [[str(f)] + [round(float(p), 6) for p in pr] + [classes[int(pr.argmax())]]
                 for f, pr in zip(files[i : i + 64], probs)]
    return ["file"] + [f"p({c})" for c in classes] + ["predicted"], rows


def cmd_predict(args: argparse.Namespace) -> int:
    header, rows = predict_file(Path(args.run_dir), Path(args.data), args.site,
                                Path(args.stats) if args.stats else None)
    if args.out:
        with open(args.out, "w", newline="") as f:
            csv.writer(f).writerows([header, *rows])
        print(f"{len(rows)} row(s) scored -> {args.out}")
    else:
        w = csv.writer(sys.stdout)
        w.writerows([header, *rows])
    return 0


def add_parser(sub: Any) -> None:
    p = sub.add_parser("predict", help="score new patients (CSV) with a run's saved model")
    p.add_argument("run_dir", help="a run folder, e.g. runs/<experiment>/<protocol>/seed0")
    p.add_argument("--data", required=True, help="CSV with the training columns (the label column is not needed), "
                   "or for an image task an image or a folder of images")
    p.add_argument("--site", help="whose own preprocessing statistics to apply (RUN_DIR/sites/SITE/preprocessing.json; "
                   "required when several sites saved theirs)")
    p.add_argument("--stats", help="the site's own preprocessing.json when it is not in RUN_DIR (a deployed site "
                   "keeps its own in its kit's state folder)")
    p.add_argument("--out", help="write the probabilities to this CSV instead of printing them")
    p.set_defaults(func=cmd_predict)
