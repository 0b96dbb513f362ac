#!/usr/bin/env bash
# The main job: sets up .venv, then trains Uniform AdamW vs LLRAdamW side by side on the shipped text
# sample (CPU-sized, 3 seeds) and prints the comparison table. Extra arguments go to python/train.py.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup_env.sh"
python python/train.py --preset cpu-demo "$@"
