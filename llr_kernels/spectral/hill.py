"""PL_Alpha_Hill: the Hill estimator of a weight matrix's spectral tail (paper Eq. 2).

This module is the exact reference every fast spectral path is held to. For a matrix W (n x m after
viewing >2-D weights as (shape[0], -1)) the nonzero eigenvalues of W^T W are the eigenvalues of the
n x n Gram on the short side. Sorted ascending l_1 <= ... <= l_n, with k = floor(n / 2):

    paper     : alpha = 1 + k / sum_{i=1..k} ln(l_{n-i+1} / l_{n-k})
    reference : i = n // 2 (0-based), alpha = 1 + (n - i) / sum_{j >= i} ln(l_j / l_i)
                (the public code's convention, one index off from Eq. 2)

Matrices that cannot give a meaningful alpha yield NaN, never an exception; ``return_status=True``
tells the caller why (see ``STATUS_*``).
"""
from __future__ import annotations

from collections import defaultdict
from typing import NamedTuple, Sequence

import torch

STATUS_OK = "ok"
STATUS_TOO_FEW = "too_few_eigenvalues"  # min(rows, cols) < min_eigs
STATUS_NON_FINITE = "non_finite"  # the matrix holds inf or NaN
STATUS_ZERO = "zero_matrix"  # every entry is zero
STATUS_RANK_DEFICIENT = "rank_deficient"  # the threshold eigenvalue l_{n-k} is numerically zero
STATUS_FLAT = "flat_spectrum"  # top half all equal to the threshold: alpha would be +inf

VARIANTS = ("paper", "reference")
METHODS = ("exact", "lanczos", "auto")
DEFAULT_MIN_EIGS = 50  # as the public code: fewer eigenvalues make the tail estimate meaningless


class HillResult(NamedTuple):
    """alpha (float64 CPU tensor, one per input matrix) and a status string per matrix."""

    alpha: torch.Tensor
    status: list[str]


def as_matrix(w: torch.Tensor) -> torch.Tensor:
    """View a weight as a 2-D matrix: (shape[0], -1) for >2-D tensors (conv kernels, fused stacks)."""
    if w.dim() < 2:
        raise ValueError(f"hill_alpha needs matrices (>= 2-D tensors), got a tensor of shape {tuple(w.shape)}")
    return w.reshape(w.shape[0], -1) if w.dim() > 2 else w


def gram(w: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Gram matrix on the short side, (..., n, n) with n = min(rows, cols); batched over leading dims."""
    w = w if dtype is None else w.to(dtype)
    if w.shape[-2] <= w.shape[-1]:
        return w @ w.transpose(-1, -2)
    return w.transpose(-1, -2) @ w


def compute_dtype(device: torch.device) -> torch.dtype:
    """float64 on CPU (cheap and exact enough to be the reference), float32 on accelerators."""
    return torch.float64 if device.type == "cpu" else torch.float32


def esd(matrices: Sequence[torch.Tensor], dtype: torch.dtype | None = None) -> list[torch.Tensor]:
    """Ascending eigenvalues of each matrix's short-side Gram (its squared singular values).

    Matrices of equal shape on the same device are stacked and decomposed as one batch.
    Eigenvalues are returned on the matrices' devices in the compute dtype.
    """
    mats = [as_matrix(w.detach()) for w in matrices]
    out: list[torch.Tensor | None] = [None] * len(mats)
    groups: dict[tuple, list[int]] = defaultdict(list)
    for i, w in enumerate(mats):
        groups[(tuple(w.shape), w.device)].append(i)
    for (_, device), idx in groups.items():
        cdt = dtype or compute_dtype(device)
        for chunk in _chunks(idx, mats[idx[0]]):
            batch = torch.stack([mats[i] for i in chunk]).to(cdt)
            eig = torch.linalg.eigvalsh(gram(batch))
            for j, i in enumerate(chunk):
                out[i] = eig[j]
    return out  # type: ignore[return-value]


def _chunks(idx: list[int], w: torch.Tensor, budget_elems: int = 1 << 28) -> list[list[int]]:
    """Split a shape group so one batch's copy stays under ~2 GiB of float64."""
    per = max(1, budget_elems // max(1, w.numel()))
    return [idx[i : i + per] for i in range(0, len(idx), per)]


def hill_from_eigenvalues(
    eigs: torch.Tensor, variant: str = "paper", min_eigs: int = DEFAULT_MIN_EIGS
) -> HillResult:
    """Hill alpha from ascending eigenvalues, (n,) or batched (B, n), in their own dtype."""
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    e = eigs.unsqueeze(0) if eigs.dim() == 1 else eigs
    bsz, n = e.shape
    status = [STATUS_OK] * bsz
    if n < max(2, min_eigs):
        return HillResult(torch.full((bsz,), float("nan"), dtype=torch.float64), [STATUS_TOO_FEW] * bsz)
    if variant == "paper":
        k = n // 2
        thr_idx, top = n - k - 1, slice(n - k, n)
        num = k
    else:
        i = n // 2
        thr_idx, top = i, slice(i, n)
        num = n - i
    e = e.clamp_min(0)
    lmax = e[:, -1]
    thr = e[:, thr_idx]
    tol = lmax * n * torch.finfo(e.dtype).eps
    finite = torch.isfinite(e).all(dim=1)
    ok_thr = thr > tol
    safe_thr = torch.where(ok_thr, thr, torch.ones_like(thr))
    logsum = torch.log(e[:, top] / safe_thr.unsqueeze(1)).sum(dim=1)
    alpha = 1.0 + num / logsum
    # A mean log-ratio within rounding of zero means the top half equals the threshold: no tail to fit.
    flat = logsum <= num * 10 * n * torch.finfo(e.dtype).eps
    bad = ~finite | ~ok_thr | flat
    alpha = torch.where(bad, torch.full_like(alpha, float("nan")), alpha)
    for b in torch.nonzero(bad).flatten().tolist():
        if not bool(finite[b]):
            status[b] = STATUS_NON_FINITE
        elif float(lmax[b]) <= 0:
            status[b] = STATUS_ZERO
        elif not bool(ok_thr[b]):
            status[b] = STATUS_RANK_DEFICIENT
        else:
            status[b] = STATUS_FLAT
    return HillResult(alpha.to(device="cpu", dtype=torch.float64), status)


def hill_alpha(
    matrices: Sequence[torch.Tensor] | torch.Tensor,
    *,
    method: str = "exact",
    variant: str = "paper",
    min_eigs: int = DEFAULT_MIN_EIGS,
    dtype: torch.dtype | None = None,
    return_status: bool = False,
    **method_kwargs,
) -> torch.Tensor | HillResult:
    """PL_Alpha_Hill of each matrix, in input order, as a float64 CPU tensor.

    matrices: a tensor or a list of tensors (any float dtype, any device; >2-D viewed as (shape[0], -1)).
    method: "exact" (batched eigendecomposition of the short-side Gram; the reference); "lanczos" and
        "auto" are served by the fast spectral path when it is installed (see ``llr_kernels.spectral``).
    variant: "paper" (Eq. 2) or "reference" (the public code's index convention).
    min_eigs: matrices with fewer eigenvalues (min dimension) get NaN with status "too_few_eigenvalues".
    dtype: compute dtype; default float64 on CPU and float32 elsewhere. Measured on CPU, float32 instead of
        float64 changes alpha by at most 6e-7 relative (256 x 1024 Gaussian and power-law, 1024 x 2048 Gaussian).
    return_status: also return a status string per matrix ("ok" or why alpha is NaN).
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    if min_eigs < 2:
        raise ValueError(f"min_eigs must be >= 2 (Eq. 2 needs a threshold and a tail), got {min_eigs}")
    if isinstance(matrices, torch.Tensor):
        matrices = [matrices]
    mats = [as_matrix(w) for w in matrices]
    if method != "exact":
        from . import fast  # the fast path (issue: spectral kernels) lives beside this reference

        result = fast.hill_alpha_fast(mats, method=method, variant=variant, min_eigs=min_eigs, **method_kwargs)
        return result if return_status else result.alpha
    elif method_kwargs:
        raise TypeError(f"unexpected arguments for method='exact': {sorted(method_kwargs)}")
    alpha = torch.full((len(mats),), float("nan"), dtype=torch.float64)
    status = [STATUS_TOO_FEW] * len(mats)
    todo = []
    for i, w in enumerate(mats):
        if min(w.shape) < max(2, min_eigs):
            continue
        if not bool(torch.isfinite(w).all()):
            status[i] = STATUS_NON_FINITE
            continue
        todo.append(i)
    eigs = esd([mats[i] for i in todo], dtype=dtype)
    for i, e in zip(todo, eigs):
        r = hill_from_eigenvalues(e, variant=variant, min_eigs=min_eigs)
        alpha[i], status[i] = r.alpha[0], r.status[0]
    return HillResult(alpha, status) if return_status else alpha
