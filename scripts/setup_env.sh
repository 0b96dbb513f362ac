# Sourced by main.sh and test.sh: make .venv, install torch pinned first (only if no torch is there), then
# this package with its test and training extras. Idempotent and fast when nothing changed.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
PY=${PYTHON:-python3}
# torch is installed only when the Python has none, pinned to the version the project is tested with, before the
# package (so pip never resolves torch as a dependency). What pip then downloads is pip's choice: from PyPI on
# Linux x86_64, torch==2.13.0 is the CUDA build (several GB of nvidia-* wheels). On a CPU-only machine point pip
# at PyTorch's CPU wheels: LLR_TORCH_PIP_ARGS="--index-url https://download.pytorch.org/whl/cpu". (Machines whose
# pip is configured with a local CPU wheel, like this project's CI, need nothing.)
TORCH_SPEC=${LLR_TORCH_SPEC:-torch==2.13.0}
TORCH_PIP_ARGS=${LLR_TORCH_PIP_ARGS:-}
if [ ! -x .venv/bin/python ]; then
  if "$PY" -c "import torch" >/dev/null 2>&1; then
    "$PY" -m venv --system-site-packages .venv   # reuse the machine's torch (e.g. a CUDA build)
  else
    "$PY" -m venv .venv
  fi
fi
. .venv/bin/activate
if ! python -c "import torch" >/dev/null 2>&1; then
  where=${TORCH_PIP_ARGS:-"from the default index (on Linux: the CUDA build)"}
  echo "[setup] installing $TORCH_SPEC $where" >&2
  # shellcheck disable=SC2086  # the extra pip arguments are words
  python -m pip install -q $TORCH_PIP_ARGS "$TORCH_SPEC"
fi
stamp=.venv/.llr_kernels_installed
want=$(cat pyproject.toml setup.py 2>/dev/null | sha256sum | cut -c1-16)
if [ "$(cat "$stamp" 2>/dev/null || true)" != "$want" ]; then
  echo "[setup] installing llr_kernels (editable, test + train extras)" >&2
  # --no-build-isolation: build against the torch installed above, never a freshly downloaded one
  python -m pip install -q --no-build-isolation -e ".[test,train]" 2> >(grep -v "is ignored" >&2)
  echo "$want" >"$stamp"
fi
