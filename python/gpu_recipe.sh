#!/usr/bin/env bash
# GPU recipe: LLaMA-20M and LLaMA-60M (paper Table 8 shape), 3 learning rates x {Uniform AdamW, LLRAdamW},
# on the full Wikipedia corpus in ../shared/data, bf16 autocast, one GPU.
#
#   bash python/gpu_recipe.sh                         # gpu-20m then gpu-60m
#   PRESETS="gpu-60m gpu-135m" bash python/gpu_recipe.sh --seeds 0,1,2
#   DATA_DIR=/path/to/data bash python/gpu_recipe.sh  # corpus elsewhere
#   DATA=sample bash python/gpu_recipe.sh             # no corpus on this machine: the shipped 2.6 MB sample
#                                                     # (a smoke of the recipe, not the paper's setting)
#
# Each preset writes runs/<preset>-<time>/ (metrics.json, results.md, PNGs) and publishes the table and
# metrics to benchmarks/results/train_<preset>.{md,json}: commit those, whatever they show.
# Extra arguments go to every python/train.py call (e.g. --arms uniform,llr,muon,llr-muon, --compile).
# Budget (estimate, not measured here): 6 runs x 3000 steps x 16k tokens per preset; on one H100/H200
# about 20-30 min for gpu-20m and about 1 h for gpu-60m. The tokenizer (32k BPE on 50M characters)
# and the token ids of both shards are built once, in a few minutes, and cached in .cache/llr_data.
set -euo pipefail
cd "$(dirname "$0")/.."
# GPU images often have only python3 (the one with torch); prefer it.
PYTHON=${PYTHON:-$(command -v python3 || command -v python)}
PRESETS=${PRESETS:-"gpu-20m gpu-60m"}
DATA=${DATA:-shared}
DATA_ARGS=(--data "$DATA")
if [[ -n "${DATA_DIR:-}" ]]; then DATA_ARGS+=(--data-dir "$DATA_DIR"); fi
if [[ "$DATA" == shared ]]; then
  corpus=${DATA_DIR:-../shared/data}
  if ! ls "$corpus"/enwiki_train_*.txt.xz >/dev/null 2>&1; then
    echo "no corpus in $corpus (enwiki_train_*.txt.xz): set DATA_DIR=/path/to/data, or DATA=sample for the shipped sample" >&2
    exit 2
  fi
fi
"$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA device: this recipe needs a GPU (the CPU job is --preset cpu-demo)')"
mkdir -p benchmarks/results
case "$DATA" in shared) suffix="" ;; sample) suffix="_sample" ;; *) suffix="_custom" ;; esac  # never overwrite the corpus results
for preset in $PRESETS; do
  stamp=$(date +%Y%m%d-%H%M%S)
  "$PYTHON" python/train.py --preset "$preset" "${DATA_ARGS[@]}" --device cuda \
    --out "runs/${preset}-${stamp}" --publish "benchmarks/results/train_${preset//-/_}${suffix}" "$@"
done
