# Sourced by main.sh and test.sh: make .venv, install torch pinned first (only if no torch is there), then
# this package with its test and training extras. Idempotent and fast when nothing changed.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
PY=${PYTHON:-python3}
# Never let pip resolve plain "torch": on a CPU machine that pulls gigabytes of CUDA wheels.
TORCH_SPEC=${LLR_TORCH_SPEC:-torch==2.13.0}
if [ ! -x .venv/bin/python ]; then
  if "$PY" -c "import torch" >/dev/null 2>&1; then
    "$PY" -m venv --system-site-packages .venv   # reuse the machine's torch (e.g. a CUDA build)
  else
    "$PY" -m venv .venv
  fi
fi
. .venv/bin/activate
if ! python -c "import torch" >/dev/null 2>&1; then
  echo "[setup] installing $TORCH_SPEC" >&2
  python -m pip install -q "$TORCH_SPEC"
fi
stamp=.venv/.llr_kernels_installed
want=$(cat pyproject.toml setup.py 2>/dev/null | sha256sum | cut -c1-16)
if [ "$(cat "$stamp" 2>/dev/null || true)" != "$want" ]; then
  echo "[setup] installing llr_kernels (editable, test + train extras)" >&2
  # --no-build-isolation: build against the torch installed above, never a freshly downloaded one
  python -m pip install -q --no-build-isolation -e ".[test,train]" 2> >(grep -v "is ignored" >&2)
  echo "$want" >"$stamp"
fi
