"""Headless Chromium for reports: print to PDF, take a screenshot, read the DOM and the console.

Started with ``--headless --no-sandbox --disable-gpu --disable-background-networking
--disable-component-update --no-first-run`` and a throw-away profile, so it neither phones home
nor keeps state. :func:`find_chromium` returns ``None`` where no browser is installed; callers
(the browser test) then skip with that reason.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ..errors import SecureFLError

__all__ = ["find_chromium", "BrowserResult", "load_page", "print_pdf", "NO_BROWSER"]

NO_BROWSER = ("no Chromium found (apt-get install -y chromium fonts-noto-cjk, or set $SECURE_FL_CHROMIUM); "
              "scripts/setup.sh installs it when run as root")
_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
          "--disable-component-update", "--no-first-run", "--disable-dev-shm-usage", "--hide-scrollbars")


def find_chromium() -> str | None:
    """The browser executable: ``$SECURE_FL_CHROMIUM``, else the first of chromium/chrome on PATH."""
    env = os.environ.get("SECURE_FL_CHROMIUM")
    if env:
        return env if Path(env).exists() else None
    for name in _NAMES:
        found = shutil.which(name)
        if found:
            return found
    return None


@dataclass
class BrowserResult:
    dom: str
    console: list[str]  # console messages and JS errors Chromium logged
    stderr: str


def _run(page: Path, extra: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    exe = find_chromium()
    if exe is None:
        raise SecureFLError(NO_BROWSER)
    with tempfile.TemporaryDirectory(prefix="secure-fl-chromium-") as profile:
        cmd = [exe, *_FLAGS, f"--user-data-dir={profile}", *extra, Path(page).resolve().as_uri()]
        try:
            return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
        except subprocess.TimeoutExpired as exc:
            raise SecureFLError(f"chromium did not finish within {timeout:g} s on {page}") from exc


def _console(stderr: str) -> list[str]:
    return [ln for ln in stderr.splitlines() if "CONSOLE" in ln or "Uncaught" in ln or ":ERROR:CONSOLE" in ln]


def load_page(page: Path, screenshot: Path | None = None, width: int = 1200, height: int = 3200,
              timeout: float = 60.0) -> BrowserResult:
    """Load ``page``; return the DOM after its scripts ran and the console lines. With ``screenshot``,
    a second load writes a PNG of the first ``height`` pixels."""
    proc = _run(page, ["--enable-logging=stderr", "--v=0", "--virtual-time-budget=5000", "--dump-dom"], timeout)
    result = BrowserResult(proc.stdout, _console(proc.stderr), proc.stderr)
    if screenshot is not None:
        shot = _run(page, [f"--screenshot={Path(screenshot).resolve()}", f"--window-size={width},{height}",
                           "--virtual-time-budget=5000"], timeout)
        if not Path(screenshot).exists():
            raise SecureFLError(f"chromium wrote no screenshot ({shot.stderr.strip()[-300:]})")
    return result


def print_pdf(page: Path, pdf: Path, timeout: float = 90.0) -> Path:
    """Print ``page`` to ``pdf`` (A4, the page's print CSS)."""
    pdf = Path(pdf)
    proc = _run(page, [f"--print-to-pdf={pdf.resolve()}", "--no-pdf-header-footer", "--virtual-time-budget=5000"],
                timeout)
    if not pdf.exists() or pdf.stat().st_size == 0:
        raise SecureFLError(f"chromium printed no PDF to {pdf} ({proc.stderr.strip()[-300:]})")
    return pdf
