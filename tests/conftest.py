"""Test setup: Triton kernels run through the interpreter when no CUDA device is present."""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# One thread: on 2-core machines, two threads contend with the Triton interpreter and other ranks (measured: 5-10x slower small-model steps).
torch.set_num_threads(1)
