#!/usr/bin/env bash
# The test suite: sets up .venv (torch pinned first) and runs pytest. Triton kernels run through the
# interpreter (TRITON_INTERPRET=1) when there is no GPU. Extra arguments go to pytest.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup_env.sh"
python -m pytest -q "$@"
