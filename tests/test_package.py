"""The package works outside its checkout: the wheel carries the catalogue and the example experiments.

``test_the_wheel_works_from_any_folder`` builds the wheel from a copy of the source tree, installs
it into a fresh virtual environment (``--no-deps``: torch, TenSEAL, Opacus come from the test's own
environment through a path file) and runs the ``secure-fl`` command from an unrelated folder.
It takes ~15 s on an idle machine (build 6 s, install 4 s, one process that imports torch).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
import tomllib

from secure_fl import catalogue
from secure_fl.errors import SpecError
from secure_fl.protocol.spec import PROTOCOLS_DIR, list_protocols, load_protocol
from secure_fl.run.experiment import EXPERIMENTS_DIR, load_experiment

ROOT = Path(__file__).resolve().parents[1]
#: what a source distribution holds (MANIFEST.in), enough to build the wheel
SOURCE = ["pyproject.toml", "setup.py", "MANIFEST.in", "README.md", "secure_fl", "protocols", "experiments"]


def _copy_source(dest: Path) -> Path:
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "results", "*.py", "*.sh", "*.md")
    dest.mkdir()
    for name in SOURCE:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=None if name == "secure_fl" else ignore)
        else:
            shutil.copy2(src, dest / name)
    shutil.rmtree(dest / "secure_fl" / "_data", ignore_errors=True)
    for cache in (dest / "secure_fl").rglob("__pycache__"):
        shutil.rmtree(cache)
    return dest


def _run(cmd: list[str], cwd: Path, env: dict[str, str]) -> str:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{cmd}: exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


@pytest.mark.slow
def test_the_wheel_works_from_any_folder(tmp_path):
    src = _copy_source(tmp_path / "src")
    dist = tmp_path / "dist"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env["SECURE_FL_THREADS"] = "1"
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
          "-w", str(dist), str(src)], tmp_path, env)
    wheel = next(dist.glob("secure_fl-*.whl"))
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], tmp_path, env)
    py = venv / "bin" / "python"
    purelib = Path(_run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], tmp_path, env)
                   .strip())
    # the dependencies from this test's environment, after the venv's own site-packages (so the wheel wins);
    # a plain path line: the editable install's .pth files there are not processed
    (purelib / "_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    _run([sys.executable, "-m", "pip", "--python", str(py), "install", "--no-deps", "--no-index", "-q", str(wheel)],
         tmp_path, env)

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    cli = str(venv / "bin" / "secure-fl")
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert _run([cli, "--version"], elsewhere, env).strip() == f"secure-fl {version}"
    # one process (torch is imported once): where the package and its data come from, every shipped
    # experiment loads (relative protocol paths included), the catalogue lists, the quickstart runs a round
    script = (
        "import secure_fl.catalogue as c, secure_fl.run.experiment as e\n"
        "from secure_fl.cli import main\n"
        "print(c.__file__); print(c.shipped_dir('protocols')); print(c.shipped_dir('experiments'))\n"
        "for n in c.spec_names('experiments'): e.load_experiment(n)\n"
        "assert main(['protocols']) == 0\n"
        "assert main(['run', 'quickstart', '--protocol', 'plain-fedavg', '--rounds', '1', '--quiet', '--json', "
        "'--out', 'runs']) == 0\n"
    )
    out = _run([str(py), "-c", script], elsewhere, {**env, "COLUMNS": "200"}).splitlines()
    assert all(line.startswith(str(venv)) for line in out[:3]), out[:3]  # the installed copy and its package data
    assert out[1].endswith("secure_fl/_data/protocols") and out[2].endswith("secure_fl/_data/experiments")
    listed = "\n".join(out)
    for name in list_protocols():
        assert name in listed
    assert "invalid" not in listed and '"variant": "plain-fedavg"' in listed
    assert (elsewhere / "runs" / "quickstart" / "latest").exists()
    assert not (elsewhere / "protocols").exists() and not (elsewhere / "experiments").exists()


def test_a_checkout_reads_the_repository_folders():
    """In a source checkout (this test run) the shipped folders are the repository's: one copy."""
    assert PROTOCOLS_DIR == ROOT / "protocols" and EXPERIMENTS_DIR == ROOT / "experiments"
    assert set(list_protocols()) >= {p.stem for p in (ROOT / "protocols").glob("*.toml")}


def test_the_users_folders_are_searched_first(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "protocols").mkdir()
    mine = (ROOT / "protocols" / "plain-fedavg.toml").read_text().replace(
        'name = "plain-fedavg"', 'name = "my-fedavg"')
    (tmp_path / "protocols" / "my-fedavg.toml").write_text(mine)
    shadow = (ROOT / "protocols" / "plain-fedavg.toml").read_text()
    assert "server_lr = 1.0" in shadow
    (tmp_path / "protocols" / "plain-fedavg.toml").write_text(shadow.replace("server_lr = 1.0", "server_lr = 0.5"))
    assert "my-fedavg" in list_protocols() and "ckks-fedavg" in list_protocols()
    assert load_protocol("my-fedavg").name == "my-fedavg"
    assert load_protocol("plain-fedavg").aggregation.server_lr == 0.5  # the user's copy wins
    assert load_protocol("ckks-fedavg").secure_sum_kind == "ckks"  # the rest from the catalogue
    (tmp_path / "experiments").mkdir()
    (tmp_path / "experiments" / "mine.toml").write_text(
        'name = "mine"\nprotocols = ["my-fedavg", "ckks-fedavg"]\n[task]\nname = "synthetic-tabular"\n')
    exp = load_experiment("mine")
    assert [v.label for v in exp.variants] == ["my-fedavg", "ckks-fedavg"]
    assert load_experiment("quickstart").name == "quickstart"  # shipped
    with pytest.raises(SpecError, match=r"experiment spec not found: nope \(known experiments \[.*'mine'.*"
                                        r"'quickstart'.*searched"):
        load_experiment("nope")
    with pytest.raises(SpecError, match="unknown protocol 'nope'"):
        load_protocol("nope")
    assert catalogue.find_spec_file("protocols", "../plain-fedavg") is None  # a name, never a path
