"""Batched stochastic Lanczos quadrature (SLQ) on many symmetric PSD matrices at once.

For a Gram G (n x n) and a Rademacher probe z, ``steps`` Lanczos steps from v0 = z / sqrt(n) give a
tridiagonal T whose eigenvalues (Ritz nodes) and squared first eigenvector components (weights, summing
to 1) form a Gauss quadrature of the probe's spectral measure sum_i (q_i^T z)^2 / n * delta(l_i), an
unbiased estimate of the ESD. All layers and probes run together: each step is one batched matvec
(B, P, n) @ (B, n, n) plus a full reorthogonalisation against the stored basis (two classical
Gram-Schmidt passes; without it, lost orthogonality creates ghost copies of the top eigenvalues and
skews the tail sum that Eq. 2 needs). The number of launches depends on ``steps``, never on B.

Gauss nodes and weights of the tridiagonals: ``ops.eig`` (``tridiag_eig``); the Hill quantities read off the
nodes (threshold quantile and top-half log sum): ``ops.hill`` (``hill_nodes``).
"""
from __future__ import annotations

import math

import torch


def rademacher_probes(
    bsz: int, probes: int, n: int, *, device: torch.device, dtype: torch.dtype, generator: torch.Generator | None
) -> torch.Tensor:
    """(B, P, n) unit vectors with entries +-1/sqrt(n) (Rademacher: lowest-variance trace probes)."""
    bits = torch.randint(0, 2, (bsz, probes, n), generator=generator, device="cpu", dtype=torch.int8)
    z = (bits.to(dtype) * 2 - 1).to(device)
    return z / math.sqrt(n)


def lanczos_torch(
    grams: torch.Tensor, v0: torch.Tensor, steps: int, *, reorth_passes: int = 2
) -> tuple[torch.Tensor, torch.Tensor]:
    """Lanczos tridiagonals for every (matrix, probe): diagonals (B, P, s) and off-diagonals (B, P, s-1).

    grams: (B, n, n) symmetric; v0: (B, P, n) unit start vectors; steps s <= n.
    A probe whose Krylov space is exhausted (beta ~ 0, e.g. a low-rank or scaled-identity Gram) stops
    there: its remaining diagonal and off-diagonal entries are exactly 0, which decouples them in T so the
    extra nodes get zero quadrature weight.
    """
    bsz, n, _ = grams.shape
    probes = v0.shape[1]
    if steps > n:
        raise ValueError(f"steps ({steps}) must be <= n ({n}); a Krylov space cannot exceed the matrix size")
    dt = grams.dtype
    q = torch.zeros(bsz, probes, steps, n, dtype=dt, device=grams.device)
    alpha = torch.zeros(bsz, probes, steps, dtype=dt, device=grams.device)
    beta = torch.zeros(bsz, probes, max(steps - 1, 0), dtype=dt, device=grams.device)
    # breakdown tolerance relative to the matrix scale (Frobenius norm bounds the spectral norm)
    scale = grams.flatten(1).norm(dim=1).clamp_min(torch.finfo(dt).tiny)  # (B,)
    tol = (scale * n * torch.finfo(dt).eps).view(bsz, 1)
    v = v0.to(dt)
    qf = q.view(bsz * probes, steps, n)
    active = torch.ones(bsz, probes, dtype=torch.bool, device=grams.device)
    for j in range(steps):
        q[:, :, j] = v
        w = torch.bmm(v, grams)  # (B, P, n); G symmetric so v G = (G v)^T
        a = (w * v).sum(-1)
        alpha[:, :, j] = a
        if j == steps - 1:
            break
        basis = qf[:, : j + 1]  # (B*P, j+1, n)
        wf = w.reshape(bsz * probes, n, 1)
        for _ in range(reorth_passes):  # full reorthogonalisation (also removes the a*v and b*v_prev terms)
            c = torch.bmm(basis, wf)  # (B*P, j+1, 1)
            wf = torch.baddbmm(wf, basis.transpose(1, 2), c, alpha=-1.0)
        w = wf.view(bsz, probes, n)
        b = w.norm(dim=-1)
        active = active & (b > tol)
        b = torch.where(active, b, torch.zeros_like(b))
        beta[:, :, j] = b
        v = torch.where(active.unsqueeze(-1), w / b.clamp_min(torch.finfo(dt).tiny).unsqueeze(-1), torch.zeros_like(w))
    return alpha, beta
