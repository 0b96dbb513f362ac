"""Gauss nodes/weights of many Lanczos tridiagonals through the C++/CUDA extension (csrc/spectral*).

Same contract as ``lanczos.tridiag_eig_torch``: implicit QL rotating only the first eigenvector row,
O(s^2) per tridiagonal (dense batched eigh is O(s^3) and, on CUDA, one cuSOLVER call per matrix for s > 32).
"""
from __future__ import annotations

import torch


def tridiag_eig_cpp(alpha: torch.Tensor, beta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(..., s) diagonals and (..., s-1) off-diagonals -> ascending nodes and weights, (..., s) each."""
    from .. import _ext

    mod = _ext.load_extension()
    if mod is None:
        raise RuntimeError(f"backend='cpp' is unavailable: {_ext.unavailable_reason(alpha.device)}")
    lead, s = alpha.shape[:-1], alpha.shape[-1]
    a = alpha.reshape(-1, s)
    b = beta.reshape(-1, max(s - 1, 0))
    if alpha.device.type == "cuda":
        nodes, weights = mod.tridiag_gauss_cuda(a, b)
    else:
        nodes, weights, _ = mod.tridiag_gauss_cpu(a, b)
    return nodes.view(*lead, s), weights.view(*lead, s)
