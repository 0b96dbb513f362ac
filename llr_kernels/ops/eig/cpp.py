"""Spectral ops through the C++/CUDA extension (csrc/spectral*).

- ``tridiag_eig_cpp``: Gauss nodes/weights of many Lanczos tridiagonals. Same contract as
  ``naive.tridiag_eig_torch``: implicit QL rotating only the first eigenvector row, O(s^2) per tridiagonal
  (dense batched eigh is O(s^3) and, on CUDA, one cuSOLVER call per matrix for s > 32).
- ``gram_eigvalsh_cpp`` / ``eigvalsh_cpp``: Gram eigenvalues of many equal-n matrices on CPU (Grams and
  eigenvalues one matrix per thread); ``eigvalsh_cpp`` on CUDA: one batched cuSOLVER call
  (``cusolverDnXsyevBatched``, csrc/spectral_eig_cuda.cu) where available. Same contracts as
  ``naive.gram_eigvalsh_torch`` / ``naive.eigvalsh_batch_torch``.
"""
from __future__ import annotations

import torch

from .. import extension


def tridiag_eig_cpp(alpha: torch.Tensor, beta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(..., s) diagonals and (..., s-1) off-diagonals -> ascending nodes and weights, (..., s) each."""
    mod = extension.require(alpha.device)
    lead, s = alpha.shape[:-1], alpha.shape[-1]
    a = alpha.reshape(-1, s)
    b = beta.reshape(-1, max(s - 1, 0))
    if alpha.device.type == "cuda":
        nodes, weights = mod.tridiag_gauss_cuda(a, b)
    else:
        nodes, weights, _ = mod.tridiag_gauss_cpu(a, b)
    return nodes.view(*lead, s), weights.view(*lead, s)


def gram_eigvalsh_cpp(
    mats: list[torch.Tensor], dtype: torch.dtype, keep_grams: bool = False
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(eigenvalues (B, n), lower-triangle Grams (B, n, n) or None) of equal-n CPU matrices in ``dtype`` (float32 or
    float64): Grams and eigenvalues one matrix per thread (csrc/spectral_cpu.cpp says why); NaN row for inf/NaN
    input or a failed eigensolver, zero row for zeros."""
    if mats and mats[0].device.type != "cpu":  # no CUDA kernel of its own: torch's (cuSOLVER) path
        from .naive import gram_eigvalsh_torch

        return gram_eigvalsh_torch(mats, dtype, keep_grams)
    eigs, grams = extension.require(torch.device("cpu")).gram_eigvalsh_cpu(list(mats), dtype, keep_grams)
    return eigs, (grams if keep_grams else None)


def eigvalsh_batched_cuda_reason(mod=None) -> str | None:
    """None when the batched cuSOLVER op (csrc/spectral_eig_cuda.cu) can run here, else why not."""
    if mod is None:
        mod = extension.load_extension()
        if mod is None:
            return "the C++/CUDA extension is unavailable"
    if not hasattr(mod, "eigvalsh_batched_cuda"):
        return "the extension was built without CUDA"
    return mod.eigvalsh_batched_cuda_unavailable() or None


SYEV_BATCHED_MAX_ELEMENTS = 2**31 - 1  # cusolverDnXsyevBatched: n * lda * batch must fit in an int32


def syev_batched_max_batch(n: int) -> int:
    """Most n x n matrices one cusolverDnXsyevBatched call takes (n * n * batch < 2^31; 127 at n = 4096). A larger
    batch made the solver return wrong eigenvalues for every matrix, silently (seen on an H200 at n = 4096)."""
    return max(1, SYEV_BATCHED_MAX_ELEMENTS // max(1, n * n))


def eigvalsh_cpp(grams: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(B, n) ascending eigenvalues of the lower triangles of (B, n, n) matrices in ``dtype``: on CPU one matrix per
    thread; on CUDA one ``cusolverDnXsyevBatched`` call for the whole batch (cuSOLVER >= 11.7), else (older
    cuSOLVER, a build without it, or a solver error) torch's eigvalsh, which loops syevd per matrix for n > 32."""
    if grams.device.type != "cpu":
        mod = extension.require(grams.device)
        if eigvalsh_batched_cuda_reason(mod) is None and dtype in (torch.float32, torch.float64):
            try:
                per = syev_batched_max_batch(grams.shape[-1])
                if grams.shape[0] <= per:
                    return mod.eigvalsh_batched_cuda(grams, dtype)
                return torch.cat([mod.eigvalsh_batched_cuda(grams[b0 : b0 + per], dtype)
                                  for b0 in range(0, grams.shape[0], per)])
            except RuntimeError:  # solver status error: the per-matrix path below still answers
                pass
        from .naive import eigvalsh_batch_torch

        return eigvalsh_batch_torch(grams, dtype)
    return extension.require(grams.device).eigvalsh_cpu(grams, dtype)
