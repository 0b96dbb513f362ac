"""Eigenvalues in pure torch: of many equal-n symmetric matrices (``eigvalsh``), of the short-side Grams of
many equal-n matrices (``gram_eigvalsh``: prescale, Gram, eigvalsh), and the Gauss nodes and weights of Lanczos
tridiagonals (``tridiag_eig``). References of ``ops.eig.cpp`` (C++ threads on CPU, batched cuSOLVER on CUDA)."""
from __future__ import annotations

import math

import torch


def gram_eigvalsh_torch(
    mats: list[torch.Tensor], dtype: torch.dtype, keep_grams: bool = False
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(eigenvalues (B, n), Grams (B, n, n) or None) of the short-side Grams of equal-n matrices, computed in
    ``dtype``: a NaN row for a matrix with inf/NaN, a zero row for an all-zero one, and each matrix scaled by
    a power of two first when its max lies outside the safe range (``hill.scaled``). Reference of the C++ op
    ``ops.eig.cpp.gram_eigvalsh_cpp`` (which spreads the matrices over threads; torch's batched eigvalsh runs
    them one after another)."""
    from ..gram.naive import gram, max_exponents, scaled

    n = min(mats[0].shape) if mats else 0
    exps = max_exponents(mats)
    good = [i for i, e in enumerate(exps) if math.isfinite(e)]
    eigs = torch.zeros(len(mats), n, dtype=dtype, device=mats[0].device if mats else "cpu")
    grams = torch.zeros(len(mats), n, n, dtype=dtype, device=eigs.device) if keep_grams else None
    for i, e in enumerate(exps):
        if math.isnan(e):
            eigs[i] = float("nan")
    if good:
        g = torch.stack([gram(scaled(mats[i], int(exps[i]), dtype)) for i in good])
        eigs[good] = eigvalsh_batch_torch(g, dtype)
        if grams is not None:
            grams[good] = g
    return eigs, grams


def eigvalsh_batch_torch(grams: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(B, n) ascending eigenvalues of (B, n, n) symmetric matrices (lower triangles read) in ``dtype``; a NaN
    row where the eigensolver fails. Reference of ``ops.eig.cpp.eigvalsh_cpp``."""
    g = grams.to(dtype)
    try:
        return torch.linalg.eigvalsh(g)
    except RuntimeError:  # LAPACK did not converge for some matrix: retry one by one
        out = torch.full(g.shape[:-1], float("nan"), dtype=dtype, device=g.device)
        for i in range(g.shape[0]):
            try:
                out[i] = torch.linalg.eigvalsh(g[i])
            except RuntimeError:
                pass
        return out


def tridiag_eig_torch(alpha: torch.Tensor, beta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Gauss nodes and weights of every tridiagonal: (..., s) ascending eigenvalues and squared first
    components of their eigenvectors (Golub-Welsch), via dense batched eigh (reference path)."""
    s = alpha.shape[-1]
    t = torch.diag_embed(alpha)
    if s > 1:
        t = t + torch.diag_embed(beta, 1) + torch.diag_embed(beta, -1)
    evals, evecs = torch.linalg.eigh(t)
    return evals, evecs[..., 0, :].square()
