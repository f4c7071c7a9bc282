"""``secure-fl audit`` writes audit.json and the figure into the output folder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from secure_fl.cli import main

SPEC = """
name = "audit-smoke"
protocols = ["plain-fedavg", "pooled"]
rounds = 1
[task]
name = "synthetic-faces"
n_sites = 3
partition = "iid"
image_size = [8, 8]
"""


def test_audit_inversion_cli_writes_json_and_figure(tmp_path: Path) -> None:
    spec = tmp_path / "smoke.toml"
    spec.write_text(SPEC)
    out = tmp_path / "out"
    args = ["audit", str(spec), "--attack", "inversion", "--iterations", "3", "--batch", "1", "--out", str(out)]
    assert main(args) == 0
    record = json.loads((out / "audit.json").read_text())["inversion"]
    assert [r["protocol"] for r in record["results"]] == ["plain-fedavg", "plain-fedavg"]  # references are skipped
    assert {r["target"] for r in record["results"]} == {"site payload", "released aggregate"}
    assert record["results"][0]["iterations_done"] == 3 and record["results"][0]["labels_known"] is True
    assert (out / "inversion.png").stat().st_size > 1000


def test_audit_refuses_a_folder_that_is_not_a_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["audit", str(tmp_path), "--attack", "membership"]) != 0
    assert "without resolved.json is not a run folder" in capsys.readouterr().err
