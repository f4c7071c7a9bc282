"""The PySyft extra's tests, run from the main suite in their own environment.

syft 0.9.5 pins numpy 1.24.4, which flwr 1.40 (in the main .venv) cannot share, so the extra lives in
``.venv-syft`` (``bash scripts/setup.sh --syft``). When that environment exists, this test runs there
tests/test_syft.py (steward approval, protected bytes only, the local engine's model) and a subset of the
core's tests (secure sums, the deployed run that syft carries, DP mechanisms, audit metrics): the proof
that the core keeps working with numpy 1.24. Without it the test is skipped, saying how to make it.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".venv-syft"
PYTHON = VENV / "bin" / "python"
#: the core's tests that also run under numpy 1.24 (no flwr there): protocols, the deployed run, DP, audits
CORE = ["tests/test_secagg_protocol.py", "tests/test_ckks_protocol.py", "tests/test_quantize.py",
        "tests/test_dp_mechanisms.py", "tests/test_deploy.py", "tests/test_audit_membership.py"]


def _ready() -> str | None:
    """Why the syft environment cannot run, or None when it can."""
    failed = VENV / ".setup-failed"
    if failed.exists():
        return f"syft could not be installed: {failed.read_text().strip()}"
    if not PYTHON.exists() or not (VENV / ".secure-fl-setup").exists():
        return ("no .venv-syft: `bash scripts/setup.sh --syft` makes it "
                "(syft 0.9.5 pins numpy 1.24.4, which flwr cannot share)")
    return None


@pytest.mark.slow
@pytest.mark.skipif(_ready() is not None, reason=_ready() or "")
def test_the_syft_extra_and_the_core_pass_in_their_own_environment() -> None:
    probe = subprocess.run([str(PYTHON), "-c", "import numpy, syft; print(numpy.__version__, syft.__version__)"],
                           capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert probe.returncode == 0, probe.stderr[-2000:]
    numpy_version, syft_version = probe.stdout.split()
    assert numpy_version.startswith("1.24.") and syft_version == "0.9.5", probe.stdout
    try:  # the main environment has flwr; the syft one must not (it is the reason for two environments)
        subprocess.run([str(PYTHON), "-c", "import flwr"], capture_output=True, cwd=ROOT, timeout=120, check=True)
        pytest.fail(".venv-syft has flwr installed: it would drag numpy past syft's pin")
    except subprocess.CalledProcessError:
        pass
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    done = subprocess.run(
        [str(PYTHON), "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_syft.py", *CORE],
        capture_output=True, text=True, cwd=ROOT, env=env, timeout=1200,
    )
    tail = (done.stdout + done.stderr)[-4000:]
    assert done.returncode == 0, tail
    summary = [line for line in done.stdout.splitlines() if re.search(r"\d+ passed", line)]
    assert summary and "skipped" not in summary[-1] and "failed" not in summary[-1], tail
    print(f"{sys.executable} -> {PYTHON}: {summary[-1]}")
