#!/usr/bin/env bash
# A second, shorter GPU call: re-runs what the first GPU suite (benchmarks/results/gpu_20261204) found broken, after
# the fixes, in about 5 minutes of device time:
#   1. the extension build (the cpp backend tests need it);
#   2. the tests that failed there (kernel tests now run on CUDA tensors; FSDP2 / torchrun tests on CPU ranks;
#      the cuSOLVER batch limit, SLQ's host-drawn probes, torch.compile under torch 2.11) and the CUDA-only tests;
#   3. the spectral overhead at LLaMA-1B and 7B shapes, every method (lanczos and auto failed there; 7B exact was
#      wrong past cuSOLVER's batch limit), with the most frequent kernels of each call;
#   4. the AdamW step with bf16 params and bf16 state against torch fused AdamW (the same bytes per step).
#
#   bash scripts/gpu_recheck.sh [OUT]        # OUT: results folder (default $OUT or /tmp/gpu_recheck)
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
out=${1:-${OUT:-/tmp/gpu_recheck}}
mkdir -p "$out"
PY=${PYTHON:-python3}
export PYTHONPATH="$PWD" PYTHONUNBUFFERED=1
log="$out/recheck.log"
run() { local limit=$1; shift; echo "===== $* (limit ${limit}s)" | tee -a "$log"; timeout -k 5 "$limit" "$@" 2>&1 | tee -a "$log" | tail -40; }
run 120 "$PY" benchmarks/gpu_suite.py --part build
run 60 "$PY" benchmarks/gpu_suite.py --part machine --device cuda
run 150 env LLR_REQUIRE_ALL=1 "$PY" -m pytest -q -p no:cacheprovider -n 8 --timeout 120 -rfE \
  --junitxml="$out/recheck_junit.xml" \
  tests/ops/test_adamw_kernels.py tests/optim/test_compile.py tests/optim/test_muon.py tests/optim/test_noncontiguous.py \
  tests/optim/test_optim_table.py tests/spectral/test_batched.py tests/ops/test_eig_cusolver.py tests/ops/test_gram_triton.py \
  tests/ops/test_hill_triton.py "tests/optim/test_robustness.py::test_odd_parameters_step_without_exceptions" \
  "tests/distributed/test_distributed.py::test_matches_single_process" tests/distributed/test_train_dist.py
run 75 "$PY" benchmarks/spectral_overhead.py --device cuda --models 1b --repeats 2 --public-budget-s 3 \
  --ref-budget-s 2 --budget-s 60 --out "$out/spectral_1b"
run 90 "$PY" benchmarks/spectral_overhead.py --device cuda --models 7b --skip-embedding --repeats 1 \
  --public-budget-s 3 --ref-budget-s 2 --budget-s 75 --out "$out/spectral_7b"
run 45 "$PY" benchmarks/bench_adamw_step.py --device cuda --dtype bf16 --state param --models 350m 1b --iters 20 \
  --warmup 5 --no-interleave --budget-s 35 --tag _bf16state --out "$out"
echo "recheck done" | tee -a "$log"
