"""report.html: written by `secure-fl compare`, self-contained, tolerant of missing files, and loaded in a real
headless Chromium (no console errors, every figure present and non-empty, a screenshot in the run folder)."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import tomllib

from secure_fl.cli import main
from secure_fl.report.browser import NO_BROWSER, find_chromium, load_page, print_pdf
from secure_fl.report.html import write_report
from secure_fl.report.runs import find_runs, load_run
from secure_fl.run.compare import run_experiment
from secure_fl.run.experiment import parse_experiment

TINY = """
name = "tiny-report"
protocols = ["plain-fedavg", "dp-fedavg-central"]
seeds = [0]
rounds = 2
[task]
name = "synthetic-tabular"
n_per_site = 40
[training]
local_epochs = 1
batch_size = 16
lr = 0.1
[sweep]
"privacy.epsilon_budget" = [3.0]   # below the 4.0 planned over 2 rounds: every site refuses round 2
"""


@pytest.fixture(scope="module")
def compare_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("runs")
    exp = parse_experiment(tomllib.loads(TINY), "tiny-report.toml")
    result = run_experiment(exp, root, show_progress=False)
    return Path(result.out_dir)


def _page(path: Path) -> str:
    return (path / "report.html").read_text(encoding="utf-8")


def test_compare_leaves_a_self_contained_report_in_the_compare_folder_and_each_run(compare_dir):
    page = _page(compare_dir)
    runs = find_runs(compare_dir)
    assert len(runs) == 2 and all((r / "report.html").exists() for r in runs)
    for section in ("overview", "guarantees", "accuracy", "privacy", "cost", "views", "refusals", "repro"):
        assert f"<section id='{section}'>" in page
    assert "What dp-fedavg-central guarantees" in page and "What plain-fedavg guarantees" in page
    assert page.count("<figure data-figure=") == 4 and page.count("<svg") >= 4
    # self-contained: nothing is fetched (no src/href to anything but inline data), and the CSP forbids it
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|//|file:)""", page)
    assert "default-src 'none'" in page


def test_report_numbers_are_the_runs(compare_dir):
    dp = next(p for p in find_runs(compare_dir) if "dp-fedavg-central" in str(p))
    rounds = [json.loads(line) for line in (dp / "rounds.jsonl").read_text().splitlines()]
    eps = rounds[0]["privacy_spent"]["site1"]["epsilon"]
    page = _page(dp)
    assert f"<td class='num'>{eps:.3f}</td>" in page, "ε spent per site as the run recorded it"
    assert "refused: budget exhausted" in page and "privacy budget exhausted" in rounds[1]["dropped"]["site1"]
    assert "round released nothing" in page and "budget ε = 3" in page
    run = load_run(dp)
    assert sum(sum(c.values()) for c in run.view_counts.values()) == sum(
        1 for _ in (dp / "views.jsonl").read_text().splitlines())


def test_report_tolerates_missing_and_torn_files(compare_dir, tmp_path):
    src = next(p for p in find_runs(compare_dir) if "dp-fedavg-central" in str(p))
    run = tmp_path / "run"
    shutil.copytree(src, run)
    for name in ("views.jsonl", "summary.json", "report.html"):
        (run / name).unlink()
    shutil.rmtree(run / "sites")
    (run / "resolved.json").write_text("{torn")
    with open(run / "rounds.jsonl", "a") as f:
        f.write('{"round": 2, "metr')
    page = write_report(run).read_text(encoding="utf-8")
    assert "not recorded" in page and "<section id='views'>" in page
    assert "reference point" in page or "guarantee" in page


def test_report_cli_japanese_and_errors(compare_dir, tmp_path, capsys):
    run = next(p for p in find_runs(compare_dir) if "dp-fedavg-central" in str(p))
    copy = tmp_path / "ja"
    shutil.copytree(run, copy)
    assert main(["report", str(copy), "--lang", "ja"]) == 0
    page = _page(copy)
    assert "<html lang='ja'>" in page and "差分プライバシー" in page and "隣接関係" in page
    assert main(["report", str(tmp_path / "nothing")]) == 2
    assert "no run folder" in capsys.readouterr().err


# -- in a real browser ------------------------------------------------------------------------

needs_browser = pytest.mark.skipif(find_chromium() is None, reason=NO_BROWSER)


def _check_in_browser(page: Path, screenshot: Path | None) -> str:
    result = load_page(page, screenshot=screenshot)
    errors = [c for c in result.console if re.search(r"error|uncaught|refused|violat", c, re.I)]
    assert not errors, errors
    figures = re.search(r'data-figures="(\d+)/(\d+)"', result.dom)
    assert figures, "the page's script did not run"
    ok, total = map(int, figures.groups())
    assert total >= 3 and ok == total, f"{ok} of {total} figures rendered non-empty"
    return result.dom


@needs_browser
def test_report_in_headless_chromium(compare_dir):
    shot = compare_dir / "report.png"
    dom = _check_in_browser(compare_dir / "report.html", shot)
    assert "What dp-fedavg-central guarantees" in dom
    from PIL import Image

    with Image.open(shot) as img:
        assert img.size[0] >= 1000
        colours = img.convert("RGB").resize((200, 400)).getcolors(maxcolors=100_000)
        assert colours is not None and len(colours) > 50, "the screenshot is blank"


@needs_browser
def test_japanese_report_in_headless_chromium_and_pdf(compare_dir, tmp_path):
    run = tmp_path / "ja"
    shutil.copytree(next(p for p in find_runs(compare_dir) if "dp-fedavg-central" in str(p)), run)
    write_report(run, lang="ja")
    dom = _check_in_browser(run / "report.html", run / "report-ja.png")
    assert "差分プライバシー" in dom
    pdf = print_pdf(run / "report.html", run / "report.pdf")
    assert pdf.read_bytes()[:5] == b"%PDF-" and pdf.stat().st_size > 20_000
