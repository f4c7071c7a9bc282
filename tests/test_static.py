"""Lint and type checks, run by the test command (so CI fails on a lint or type error).

The tools and their settings: ``[tool.ruff]`` and ``[tool.mypy]`` in pyproject.toml, versions pinned
in the ``dev`` extra that scripts/setup.sh installs. The same checks by hand, from the repository root::

    .venv/bin/python -m ruff check .
    .venv/bin/python -m mypy          # files, strictness and cache dir (.mypy_cache) come from pyproject.toml

mypy keeps its cache in .mypy_cache, so a second run takes seconds.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(tool: str, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    if importlib.util.find_spec(tool) is None:
        pytest.fail(f"{tool} is not installed in {sys.executable}; run scripts/setup.sh (it installs the dev extra)")
    return subprocess.run(
        [sys.executable, "-m", tool, *args], cwd=ROOT, input=stdin, capture_output=True, text=True, timeout=600
    )


def test_ruff_finds_nothing() -> None:
    done = _run("ruff", "check", "--no-cache", ".")
    assert done.returncode == 0, f"ruff check . found problems:\n{done.stdout}{done.stderr}"


def test_mypy_finds_nothing() -> None:
    done = _run("mypy")
    assert done.returncode == 0, f"mypy found problems:\n{done.stdout}{done.stderr}"


def test_the_line_length_limit_is_in_force() -> None:
    """The configuration is the one read: a 121-character line in new code is refused."""
    line = "x = " + repr("a" * 115) + "\n"
    assert len(line.rstrip("\n")) == 121
    done = _run("ruff", "check", "--no-cache", "--stdin-filename", "secure_fl/new_module.py", "-", stdin=line)
    assert done.returncode != 0 and "E501" in done.stdout, done.stdout + done.stderr
