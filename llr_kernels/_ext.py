"""Loader for the C++/CUDA extension built from csrc/ (owned by the kernels work; see csrc/README)."""
from __future__ import annotations

import torch


def unavailable_reason(device: torch.device) -> str | None:
    """None if the extension can run ops on ``device``; otherwise why not."""
    return "the C++ extension is not part of this build yet"
