#!/usr/bin/env bash
# The one-call GPU suite (issue 9): extension build, tests on CUDA, CUDA-graph check, benchmarks, a 200-step
# training smoke; one results folder of at most 8 files. Details: benchmarks/gpu_suite.py.
#
#   bash scripts/gpu_suite.sh                    # on an H100/H200, <= 9 min, its preinstalled python3
#   bash scripts/gpu_suite.sh --out DIR          # results folder (default $OUT/gpu_<date> or benchmarks/results/gpu_<date>)
#   bash scripts/gpu_suite.sh --dry-run          # CPU, 1-2 min, tiny shapes, Triton interpreter (CI)
#
# Nothing is installed: python3 (or $PYTHON; in a dry run .venv/bin/python when present) runs the checkout
# with PYTHONPATH at the repository root.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
dry=0
for a in "$@"; do [[ "$a" == "--dry-run" ]] && dry=1; done
if [[ -z "${PYTHON:-}" ]]; then
  if [[ $dry == 1 && -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
# Hard stop a little after the suite's own 530 s (dry run: 300 s) budget, whatever happens inside.
limit=570; [[ $dry == 1 ]] && limit=330
exec timeout -k 10 "$limit" "$PYTHON" benchmarks/gpu_suite.py "$@"
