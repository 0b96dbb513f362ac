"""Pure-torch references for the grouped Gram (same contract as ``gram_triton.gram_batch_triton``) and a TF32
rounding emulator used to measure what TF32 tensor cores do to alpha on machines without them."""
from __future__ import annotations

import torch


def gram_batch_torch(
    mats: list[torch.Tensor], *, dtype: torch.dtype = torch.float32, precision: str = "ieee"
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Reference with the same contract as ``gram_batch_triton``: one matmul per matrix (precision is
    honoured through torch's TF32 switch on CUDA)."""
    sizes = [min(w.shape) for w in mats]
    out = torch.empty(sum(n * n for n in sizes), dtype=dtype, device=mats[0].device)
    views, off = [], 0
    prev = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = precision == "tf32"
    try:
        for w, n in zip(mats, sizes):
            v = out[off : off + n * n].view(n, n)
            a = w.to(dtype)
            a = a if a.shape[0] <= a.shape[1] else a.t()
            torch.matmul(a, a.t(), out=v)
            views.append(v)
            off += n * n
    finally:
        torch.backends.cuda.matmul.allow_tf32 = prev
    return out, views


def tf32_round(x: torch.Tensor) -> torch.Tensor:
    """Round fp32 values to TF32 (10 explicit mantissa bits, round-to-nearest-even): emulates what tensor
    cores see, so the effect of TF32 on alpha can be measured on any machine."""
    b = x.to(torch.float32).contiguous().view(torch.int32)
    lsb = (b >> 13) & 1
    r = (b + 0x0FFF + lsb) & ~0x1FFF
    return r.view(torch.float32)


def gram_eigvalsh_torch(
    mats: list[torch.Tensor], dtype: torch.dtype, keep_grams: bool = False
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(eigenvalues (B, n), Grams (B, n, n) or None) of the short-side Grams of equal-n matrices, computed in
    ``dtype``: a NaN row for a matrix with inf/NaN, a zero row for an all-zero one, and each matrix scaled by
    a power of two first when its max lies outside the safe range (``hill.scaled``). Reference of the C++ op
    ``tridiag_cpp.gram_eigvalsh_cpp`` (which spreads the matrices over threads; torch's batched eigvalsh runs
    them one after another)."""
    from .hill import STATUS_NON_FINITE, gram, prescale, scaled

    n = min(mats[0].shape) if mats else 0
    exps = prescale(mats)
    good = [i for i, e in enumerate(exps) if isinstance(e, int)]
    eigs = torch.zeros(len(mats), n, dtype=dtype, device=mats[0].device if mats else "cpu")
    grams = torch.zeros(len(mats), n, n, dtype=dtype, device=eigs.device) if keep_grams else None
    for i, e in enumerate(exps):
        if e == STATUS_NON_FINITE:
            eigs[i] = float("nan")
    if good:
        g = torch.stack([gram(scaled(mats[i], exps[i], dtype)) for i in good])
        eigs[good] = eigvalsh_batch_torch(g, dtype)
        if grams is not None:
            grams[good] = g
    return eigs, grams


def eigvalsh_batch_torch(grams: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(B, n) ascending eigenvalues of (B, n, n) symmetric matrices (lower triangles read) in ``dtype``; a NaN
    row where the eigensolver fails. Reference of ``tridiag_cpp.eigvalsh_cpp``."""
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
