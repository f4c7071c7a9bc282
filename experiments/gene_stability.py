"""Stability of the selected genes: Jaccard overlap of each protocol's top-k genes with pooled training.

Reads one ``secure-fl compare`` folder of a feature-selection task (golub-genes, bladder-batch), ranks the
genes of every run's final model by ``|w_j|`` of its feature-selection layer, and compares the
top-k set with the pooled model's of the same seed. local-only has one model per site: its row is
the mean over the sites' models. Writes a markdown table (mean ± sd over seeds) and a JSON file.

    PYTHONPATH=. python experiments/gene_stability.py runs/golub-genes/latest --out experiments/results/golub-genes
    PYTHONPATH=. python experiments/gene_stability.py runs/bladder-batch/latest --out experiments/results/bladder-batch
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from secure_fl.tasks.feature_selection import feature_ranking, jaccard, top_k

KEY = "select.weight"


def scores_of(run_dir: Path) -> list[np.ndarray]:
    """|w| of the selection layer of each model in ``run_dir`` (one, or one per site for local-only)."""
    state = torch.load(run_dir / "model.pt", map_location="cpu", weights_only=True)
    states = [state] if KEY in state else list(state.values())
    missing = [i for i, s in enumerate(states) if KEY not in s]
    if missing:
        raise SystemExit(f"{run_dir / 'model.pt'}: no {KEY!r}: not a feature-selection model")
    return [s[KEY].abs().numpy() for s in states]


def stability(compare_dir: Path, ks: tuple[int, ...], tol: float) -> dict[str, Any]:
    data = json.loads((compare_dir / "compare.json").read_text())
    runs = data["runs"]
    pooled = {r["seed"]: scores_of(Path(r["path"]))[0] for r in runs if r["variant"] == "pooled"}
    if not pooled:
        raise SystemExit(f"{compare_dir}: no pooled run to compare with")
    genes = json.loads((Path(runs[0]["path"]) / "model.json").read_text())["features"]
    rows: dict[str, dict[str, list[float]]] = {}
    for r in runs:
        if r["seed"] not in pooled:
            continue
        ref = pooled[r["seed"]]
        row = rows.setdefault(r["variant"], {})
        row.setdefault("auc", []).append(r["metrics"].get("pooled/auc", float("nan")))
        row.setdefault("accuracy", []).append(r["metrics"].get("pooled/accuracy", float("nan")))
        eps = [v["epsilon"] for v in (r.get("epsilon") or {}).values() if isinstance(v, dict) and "epsilon" in v]
        if eps:
            row.setdefault("epsilon", []).append(float(max(eps)))
        models = scores_of(Path(r["path"]))
        for k in ks:
            row.setdefault(f"jaccard@{k}", []).append(float(np.mean([jaccard(top_k(s, k, tol), top_k(ref, k, tol))
                                                                     for s in models])))
        row.setdefault("nonzero", []).append(float(np.mean([(s > tol).sum() for s in models])))
    top = {seed: [genes[i] for i in feature_ranking(s)[:10]] for seed, s in pooled.items()}
    seeds = sorted(pooled)
    between = {f"jaccard@{k}": jaccard(top_k(pooled[seeds[0]], k, tol), top_k(pooled[seeds[-1]], k, tol))
               for k in ks}
    return {"compare": str(compare_dir), "ks": list(ks), "tol": tol, "rows": rows, "pooled_top10": top,
            "pooled_seed_to_seed": between if len(seeds) > 1 else None}


def table(result: dict[str, Any]) -> str:
    ks = result["ks"]
    cols = ["auc", "accuracy", "epsilon", *[f"jaccard@{k}" for k in ks], "nonzero"]
    names = [c if c != "nonzero" else f"genes kept (weight > {result['tol']:g})" for c in cols]
    lines = ["| protocol | " + " | ".join(names) + " |",
             "|---" * (len(cols) + 1) + "|"]
    for variant, row in result["rows"].items():
        cells = []
        for c in cols:
            v = row.get(c)
            if not v:
                cells.append("–")
            elif c == "nonzero":
                cells.append(f"{np.mean(v):.0f}")
            else:
                cells.append(f"{np.mean(v):.3f} ± {np.std(v):.3f}" if len(v) > 1 else f"{v[0]:.3f}")
        lines.append(f"| {variant} | " + " | ".join(cells) + " |")
    if result["pooled_seed_to_seed"]:
        lines.append("")
        lines.append("pooled seed against pooled seed (training randomness alone): " + ", ".join(
            f"{k} = {v:.3f}" for k, v in result["pooled_seed_to_seed"].items()))
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("compare_dir", type=Path, help="a compare folder, e.g. runs/golub-genes/latest")
    ap.add_argument("--k", type=int, nargs="+", default=[10, 50], help="sizes of the top-k gene sets (default 10 50)")
    ap.add_argument("--tol", type=float, default=1e-4,
                    help="|w| at or below this counts as zero (CKKS's approximate sum leaves ~1e-6; default 1e-4)")
    ap.add_argument("--out", type=Path, help="write <out>.md and <out>.json")
    args = ap.parse_args()
    result = stability(args.compare_dir, tuple(args.k), args.tol)
    text = table(result)
    print(text)
    print("pooled top-10 genes per seed:", json.dumps(result["pooled_top10"]))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.with_suffix(".md").write_text(text)
        args.out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
