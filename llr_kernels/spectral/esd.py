"""Eigenvalues of every matrix's W^T W (its squared singular values): the one home of the exact, unbatched-by-
method decomposition that the float64 reference, the metrics and the fits read.

The nonzero eigenvalues of W^T W are those of the short-side Gram (W W^T when W is wide), so each matrix yields
n = min(rows, cols) eigenvalues. Matrices of one shape and device are stacked and decomposed by one
``torch.linalg.eigvalsh`` call, in chunks that keep one stacked copy under 2^28 elements (2 GiB of float64).
Every matrix is scaled by a power of two first (``rules.prescale``: exact, no Gram over- or underflows).
>2-D weights are viewed as (shape[0], -1), as everywhere in ``llr_kernels.spectral``.
"""
from __future__ import annotations

from collections import defaultdict
from typing import Sequence

import torch

from .rules import STATUS_NON_FINITE, STATUS_ZERO, applied_exponent, as_matrix, compute_dtype, gram, prescale, scaled


def esd(matrices: Sequence[torch.Tensor], dtype: torch.dtype | None = None) -> list[torch.Tensor]:
    """Ascending eigenvalues of each matrix's short-side Gram (its squared singular values).

    Matrices of equal shape on the same device are stacked and decomposed as one batch.
    Eigenvalues are returned on the matrices' devices in the compute dtype.
    """
    mats = [as_matrix(w.detach()) for w in matrices]
    exps = [e if isinstance(e, int) else 0 for e in prescale(mats)]
    out = esd_scaled(mats, exps, dtype)
    return [x * 4.0 ** applied_exponent(e, x.dtype) for x, e in zip(out, exps)]


def esd_scaled(mats: list[torch.Tensor], exps: list[int], dtype: torch.dtype | None) -> list[torch.Tensor]:
    """Eigenvalues of the Grams of mats[i] * 2^-exps[i], batched by (shape, device)."""
    out: list[torch.Tensor | None] = [None] * len(mats)
    groups: dict[tuple, list[int]] = defaultdict(list)
    for i, w in enumerate(mats):
        groups[(tuple(w.shape), w.device)].append(i)
    for (_, device), idx in groups.items():
        cdt = dtype or compute_dtype(device)
        for chunk in _chunks(idx, mats[idx[0]]):
            batch = torch.stack([scaled(mats[i], exps[i], cdt) for i in chunk])
            eig = torch.linalg.eigvalsh(gram(batch))
            for j, i in enumerate(chunk):
                out[i] = eig[j]
    return out  # type: ignore[return-value]


def _chunks(idx: list[int], w: torch.Tensor, budget_elems: int = 1 << 28) -> list[list[int]]:
    """Split a shape group so one batch's copy stays under ~2 GiB of float64."""
    per = max(1, budget_elems // max(1, w.numel()))
    return [idx[i : i + per] for i in range(0, len(idx), per)]


def scaled_eigenvalues(mats: Sequence[torch.Tensor]) -> tuple[list[torch.Tensor], list[int], list[str | None]]:
    """(ascending float64 CPU eigenvalues of each matrix's Gram after scaling W by 2^-e, the exponents e applied,
    the status settled before any decomposition: "non_finite", "zero_matrix" or None).

    Scale-invariant quantities (alpha, entropy, stable rank) are computed from these, so a matrix whose Gram
    would over- or underflow float64 still gets them; eigenvalue x 4^e is the true eigenvalue (inf / 0 beyond float64's range). Non-finite
    matrices get NaN eigenvalues and zero matrices zeros, without a decomposition.
    """
    for i, w in enumerate(mats):
        if not isinstance(w, torch.Tensor) or w.dim() < 2 or not w.is_floating_point():
            raise ValueError(f"item {i} (shape {tuple(getattr(w, 'shape', ()))}) is not a floating matrix: pass "
                             "floating tensors with >= 2 dims (>2-D are viewed as (shape[0], -1))")
    ms = [as_matrix(w.detach()) for w in mats]
    pre = prescale(ms)
    out: list[torch.Tensor | None] = [None] * len(ms)
    exps = [0] * len(ms)
    status: list[str | None] = [None] * len(ms)
    todo = []
    for i, (w, p) in enumerate(zip(ms, pre)):
        n = min(w.shape)
        if isinstance(p, str):
            status[i] = p
            fill = float("nan") if p == STATUS_NON_FINITE else 0.0
            out[i] = torch.full((n,), fill, dtype=torch.float64)
        else:
            exps[i] = applied_exponent(p, torch.float64)
            todo.append(i)
    eigs = esd_scaled([ms[i] for i in todo], [exps[i] for i in todo], torch.float64)
    for i, ev in zip(todo, eigs):
        out[i] = ev.to(device="cpu", dtype=torch.float64).clamp_min(0)
    assert all(s in (None, STATUS_NON_FINITE, STATUS_ZERO) for s in status)
    return out, exps, status  # type: ignore[return-value]


def batched_eigenvalues(mats: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Ascending eigenvalues of each W^T W (its min(rows, cols) squared singular values), float64 on CPU,
    clamped at 0; computed batched per shape (module docstring). NaN for a matrix holding inf/NaN."""
    if isinstance(mats, torch.Tensor):
        raise ValueError("batched_eigenvalues takes a list of matrices; wrap a single tensor as [w]")
    eigs, exps, _ = scaled_eigenvalues(mats)
    return [torch.ldexp(e, torch.tensor(2 * e_)) if e_ else e for e, e_ in zip(eigs, exps)]
