"""Batched empirical spectral densities: the ascending eigenvalues of every matrix's W^T W, float64 on CPU.

The nonzero eigenvalues of W^T W are those of the short-side Gram (W W^T when W is wide), so each matrix
yields n = min(rows, cols) eigenvalues: its squared singular values. Matrices of one shape and device are
stacked and decomposed by one ``torch.linalg.eigvalsh`` call on float64 Grams, in chunks that keep one
stacked copy under 2^28 elements (2 GiB of float64; ``hill._chunks``). >2-D weights are viewed as
(shape[0], -1), as everywhere in ``llr_kernels.spectral``.
"""
from __future__ import annotations

from typing import Sequence

import torch

from .hill import STATUS_NON_FINITE, STATUS_ZERO, _esd_scaled, applied_exponent, as_matrix, prescale


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
    eigs = _esd_scaled([ms[i] for i in todo], [exps[i] for i in todo], torch.float64)
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
