"""Writes the example hospital tables of this folder (synthetic patients, fixed seed)."""

from __future__ import annotations

import numpy as np

CP = ["typical", "atypical", "non-anginal", "asymptomatic"]
ECG = ["normal", "st-t", "lvh"]


def patients(rng: np.random.Generator, n: int, shift: float) -> list[list[str]]:
    rows = []
    for _ in range(n):
        age = rng.normal(55 + shift, 9)
        sex = rng.choice(["M", "F"], p=[0.7, 0.3])
        cp = rng.choice(CP, p=[0.1, 0.2, 0.25, 0.45])
        chol = rng.normal(240, 45)
        ecg = rng.choice(ECG, p=[0.6, 0.2, 0.2])
        risk = 0.06 * (age - 55) + 0.8 * (sex == "M") + 1.4 * (cp == "asymptomatic") + 0.004 * (chol - 240)
        num = int(np.clip(np.floor(risk + rng.normal(0, 1)), 0, 4))
        chol_cell = "" if rng.random() < 0.05 else f"{chol:.0f}"  # some cholesterol values are missing
        rows.append([f"{age:.0f}", sex, cp, chol_cell, ecg, str(num)])
    return rows


def write(path: str, header: list[str], rows: list[list[str]]) -> None:
    with open(path, "w") as f:
        f.write(",".join(header) + "\n" + "\n".join(",".join(r) for r in rows) + "\n")


if __name__ == "__main__":
    rng = np.random.default_rng(2026)
    header = ["age", "sex", "cp", "chol", "restecg", "num"]
    write("hospA_train.csv", header, patients(rng, 120, 0.0))
    write("hospA_test.csv", header, patients(rng, 40, 0.0))
    b = patients(rng, 100, 4.0)
    write("hospB.csv", header + ["split"], [r + ["test" if i % 4 == 0 else "train"] for i, r in enumerate(b)])
    write("hospC.csv", header, patients(rng, 80, -3.0))
    write("new_patients.csv", header[:-1], [r[:-1] for r in patients(rng, 5, 0.0)])
