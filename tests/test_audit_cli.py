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


TABULAR = """
name = "audit-mia-smoke"
protocols = ["plain-fedavg", "dp-fedavg-central"]
rounds = 1
[task]
name = "synthetic-tabular"
n_per_site = 30
"""


def test_audit_membership_one_protocol_at_a_time_accumulates(tmp_path: Path) -> None:
    spec = tmp_path / "mia.toml"
    spec.write_text(TABULAR)
    out = tmp_path / "out"
    base = ["audit", str(spec), "--attack", "membership", "--shadows", "4", "--out", str(out)]
    assert main([*base, "--protocol", "plain-fedavg", "--offline"]) == 0
    assert main([*base, "--protocol", "dp-fedavg-central"]) == 0
    results = json.loads((out / "audit.json").read_text())["membership"]["results"]
    assert [r["protocol"] for r in results] == ["plain-fedavg", "dp-fedavg-central"]
    assert "offline" in results[0]["attack"] and "online" in results[1]["attack"]
    assert all(r["shadows"] == 4 and 0 <= r["tpr_at_0.1%fpr"] <= 1 and r["roc"]["fpr"] for r in results)
    assert main([*base, "--protocol", "plain-fedavg", "--shadows", "2"]) != 0  # LiRA needs 4 shadows
