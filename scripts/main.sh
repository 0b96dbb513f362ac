#!/usr/bin/env bash
# The main job: sets up .venv, then trains Uniform AdamW vs LLRAdamW side by side on the shipped text sample
# (CPU-sized, 3 seeds), prints the per-layer table of each LLR run, the comparison table, and how this run
# compares with the published one the README shows (benchmarks/results/train_cpu_demo.json, ±5% per arm mean).
# Extra arguments go to python/train.py (the README's command adds --threads 2).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup_env.sh"
python python/train.py --preset cpu-demo "$@"
