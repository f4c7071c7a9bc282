"""The committee report shows the audit: reconstructions under plain FedAvg beside each protection with PSNR/SSIM,
the membership ROC, and the ε lower bound beside the accountant's (marked as a bug when above) — checked in the page
and in a real headless Chromium, as the report tests do."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import tomllib

from secure_fl.audit.runner import run_audit
from secure_fl.report.browser import NO_BROWSER, find_chromium, load_page
from secure_fl.report.html import write_report
from secure_fl.run.compare import run_experiment
from secure_fl.run.experiment import parse_experiment

pytestmark = pytest.mark.filterwarnings("ignore:Full backward hook")

TABULAR = """
name = "tiny-audit"
protocols = ["plain-fedavg", "dp-fedavg-central"]
seeds = [0]
rounds = 1
[task]
name = "synthetic-tabular"
n_per_site = 40
[training]
local_epochs = 1
batch_size = 16
lr = 0.1
"""

FACES = """
name = "tiny-inversion"
protocols = ["ckks-fedavg", "plain-fedavg", "secagg-plus-fedavg"]
rounds = 1
[task]
name = "synthetic-faces"
n_sites = 3
partition = "iid"
image_size = [8, 8]
"""


@pytest.fixture(scope="module")
def audited(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("audit-report")
    exp = parse_experiment(tomllib.loads(TABULAR), "tiny-audit.toml")
    out = Path(run_experiment(exp, root, show_progress=False).out_dir)
    (root / "faces.toml").write_text(FACES)
    run_audit(str(root / "faces.toml"), "inversion", out=out, batch=2, iterations=3)
    (root / "tiny-audit.toml").write_text(TABULAR)
    run_audit(str(root / "tiny-audit.toml"), "membership", out=out, shadows=4)
    run_audit(str(root / "tiny-audit.toml"), "epsilon", out=out, canaries=40, guesses=5, audit_rounds=1)
    write_report(out)
    return out


def test_report_shows_reconstructions_plain_first_with_the_audits_numbers(audited: Path) -> None:
    page = (audited / "report.html").read_text(encoding="utf-8")
    audit = json.loads((audited / "audit.json").read_text())
    assert "<section id='attacks'>" in page
    inv = audit["inversion"]["results"]
    # originals + one row per (protocol, target), 2 images each, all inline PNG
    assert page.count("<img class='recon' src='data:image/png;base64,") == 2 * (1 + len(inv))
    rows = re.findall(r"<tr><td>([a-z+-]+)</td><td>(site payload|released aggregate)<br>", page)
    assert rows[0] == ("plain-fedavg", "site payload") and {p for p, _ in rows} == {r["protocol"] for r in inv}
    for r in inv:
        assert f"{r['psnr_mean']:.1f}" in page and f"{r['ssim_mean']:.2f}" in page
    mia = audit["membership"]["results"]
    assert {r["protocol"] for r in mia} == {"plain-fedavg", "dp-fedavg-central"} and all(r["shadows"] == 4 for r in mia)
    assert "LiRA" in page and "<figure data-figure='roc'>" in page
    eps = audit["epsilon"]["results"]
    assert [r["protocol"] for r in eps] == ["dp-fedavg-central"]
    assert f"{eps[0]['epsilon_lower_bound']:.2f}" in page and "BUG" not in page
    run = next(p for p in audited.rglob("report.html") if "dp-fedavg-central" in str(p))
    assert "<section id='attacks'>" not in run.read_text(encoding="utf-8")  # no audit in that run folder


def test_report_marks_a_lower_bound_above_the_accountant_as_a_bug(audited: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(audited, copy, symlinks=True)
    audit = json.loads((copy / "audit.json").read_text())
    audit["epsilon"]["results"][0]["epsilon_lower_bound"] = audit["epsilon"]["results"][0]["epsilon_accountant"] + 1
    (copy / "audit.json").write_text(json.dumps(audit))
    (copy / "inversion.npz").unlink()  # without the arrays, the page says so instead of failing
    page = write_report(copy).read_text(encoding="utf-8")
    assert "<td class='bad'>BUG: the lower bound exceeds the accountant" in page
    assert "not stored with this audit" in page and "<img class='recon'" not in page


@pytest.mark.skipif(find_chromium() is None, reason=NO_BROWSER)
def test_audit_section_in_headless_chromium(audited: Path) -> None:
    result = load_page(audited / "report.html", screenshot=audited / "report.png")
    errors = [c for c in result.console if re.search(r"error|uncaught|refused|violat", c, re.I)]
    assert not errors, errors
    images = re.search(r'data-audit-images="(\d+)/(\d+)"', result.dom)
    assert images, "the audit section's script did not run"
    ok, total = map(int, images.groups())
    assert total > 0 and ok == total, f"{ok} of {total} reconstructions decoded"
    figures = re.search(r'data-figures="(\d+)/(\d+)"', result.dom)
    assert figures and figures.group(1) == figures.group(2), "the ROC (or another figure) rendered empty"
    assert "What an attacker gets" in result.dom
