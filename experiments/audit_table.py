"""Print the per-protocol attack table of issue 15 from experiments/results/audit-*/audit.json.

Run after experiments/audit_table.sh. Writes experiments/results/audit-table.md as well.
"""

from __future__ import annotations

import json
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def _load(name: str) -> dict:
    path = RESULTS / name / "audit.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def _fmt(v: object, spec: str = ".2f") -> str:
    return "–" if v is None else (v if isinstance(v, str) else format(v, spec))


def main() -> None:
    faces, heart = _load("audit-faces"), _load("audit-heart")
    rows: dict[str, dict[str, str]] = {}

    def row(p: str) -> dict[str, str]:
        return rows.setdefault(p, {})

    dp_faces = _load("audit-faces-dp")
    inversions = faces.get("inversion", {}).get("results", []) + dp_faces.get("inversion", {}).get("results", [])
    for r in inversions:
        key = "inv site" if r["target"] == "site payload" else "inv release"
        row(r["protocol"])[key] = f"{r['psnr_mean']:.1f} / {r['ssim_mean']:.2f}"
        row(r["protocol"])["baseline"] = f"{r['baseline_psnr_mean']:.1f}"
    for task, data in (("faces", faces), ("heart", heart)):
        for r in data.get("membership", {}).get("results", []):
            row(r["protocol"])[f"mia {task}"] = f"{r['tpr_at_0.1%fpr']:.3f} / {r['tpr_at_1%fpr']:.3f} / {r['auc']:.3f}"
    for r in heart.get("epsilon", {}).get("results", []):
        found = f"{r['epsilon_lower_bound']:.2f} (v={r['correct']}/{r['guesses']})"
        row(r["protocol"])["eps"] = f"{found} vs {_fmt(r['epsilon_accountant'])}"
    header = ["protocol", "inversion site payload PSNR dB / SSIM", "inversion released aggregate PSNR / SSIM",
              "baseline PSNR", "MIA faces TPR@0.1% / TPR@1% / AUC", "MIA heart TPR@0.1% / TPR@1% / AUC",
              "ε lower bound (one run, 95 %) vs accountant ε"]
    keys = ["inv site", "inv release", "baseline", "mia faces", "mia heart", "eps"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for p, r in rows.items():
        lines.append("| " + " | ".join([p, *(r.get(k, "–") for k in keys)]) + " |")
    text = "\n".join(lines)
    (RESULTS / "audit-table.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
