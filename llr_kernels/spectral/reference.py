"""The float64 reference of PL_Alpha_Hill: Eq. 2 (and the statuses of ``rules``) on the eigenvalues of ``esd``.
Every batched path (``batched.hill_alpha_fast``: exact tiers and SLQ) is tested against it."""
from __future__ import annotations

from typing import Sequence

import torch

from .esd import esd_scaled
from .rules import (
    DEFAULT_ALPHA_MAX,
    DEFAULT_MIN_EIGS,
    STATUS_NON_FINITE,
    STATUS_OK,
    STATUS_OK_RANK_DEFICIENT,
    STATUS_RANK_DEFICIENT,
    STATUS_TOO_FEW,
    STATUS_ZERO,
    HillResult,
    check_args,
    decide,
    hill_params,
    noise_level,
    prescale,
    zero_floor,
)


def hill_row(
    e: torch.Tensor,
    *,
    variant: str,
    min_eigs: int,
    input_dtype: torch.dtype,
    rank_deficient: str,
    alpha_max: float | None,
) -> tuple[float, str]:
    """Alpha and status (rules 2, 3, 5-8) from one matrix's ascending Gram eigenvalues, in their own dtype."""
    n = e.shape[0]
    if n < max(2, min_eigs):
        return float("nan"), STATUS_TOO_FEW
    if not bool(torch.isfinite(e).all()):
        return float("nan"), STATUS_NON_FINITE
    e = e.clamp_min(0)
    lmax = float(e[-1])
    if lmax <= 0:
        return float("nan"), STATUS_ZERO
    nu = noise_level(n, input_dtype, e.dtype)
    floor = zero_floor(n, lmax, float(e.mean()), nu, e.dtype)
    thr_idx, top, num, _ = hill_params(n, variant)
    ok = STATUS_OK
    if not float(e[thr_idx]) > floor:
        if rank_deficient == "nan":
            return float("nan"), STATUS_RANK_DEFICIENT
        r = int((e > floor).sum())
        if r < max(2, min_eigs):
            return float("nan"), STATUS_RANK_DEFICIENT
        e = e[n - r :]
        thr_idx, top, num, _ = hill_params(r, variant)
        ok = STATUS_OK_RANK_DEFICIENT
    logsum = float(torch.log(e[top:] / e[thr_idx]).sum())
    return decide(num, logsum, nu, alpha_max, ok)


def hill_from_eigenvalues(
    eigs: torch.Tensor,
    variant: str = "paper",
    min_eigs: int = DEFAULT_MIN_EIGS,
    *,
    input_dtype: torch.dtype | None = None,
    rank_deficient: str = "nonzero",
    alpha_max: float | None = DEFAULT_ALPHA_MAX,
) -> HillResult:
    """Hill alpha from ascending Gram eigenvalues, (n,) or batched (B, n), computed in their own dtype.

    input_dtype: dtype of the matrices the eigenvalues came from (sets the noise level; default eigs.dtype).
    """
    check_args(variant, min_eigs, rank_deficient, alpha_max)
    e = eigs.unsqueeze(0) if eigs.dim() == 1 else eigs
    rows = [
        hill_row(x, variant=variant, min_eigs=min_eigs, input_dtype=input_dtype or e.dtype,
                 rank_deficient=rank_deficient, alpha_max=alpha_max)
        for x in e
    ]
    return HillResult(torch.tensor([a for a, _ in rows], dtype=torch.float64), [s for _, s in rows])


def hill_alpha_reference(
    mats: Sequence[torch.Tensor],
    *,
    variant: str = "paper",
    min_eigs: int = DEFAULT_MIN_EIGS,
    dtype: torch.dtype | None = None,
    rank_deficient: str = "nonzero",
    alpha_max: float | None = DEFAULT_ALPHA_MAX,
) -> HillResult:
    """Eq. 2 of each 2-D matrix from one batched eigendecomposition per shape, in ``dtype`` (default float64 on
    CPU, float32 elsewhere): the reference, exact up to the eigensolver."""
    check_args(variant, min_eigs, rank_deficient, alpha_max)
    alpha = torch.full((len(mats),), float("nan"), dtype=torch.float64)
    status = [STATUS_TOO_FEW] * len(mats)
    todo = [i for i, w in enumerate(mats) if min(w.shape) >= max(2, min_eigs)]
    exps = prescale([mats[i].detach() for i in todo])
    keep = []
    for i, e in zip(todo, exps):
        if isinstance(e, str):
            status[i] = e
        else:
            keep.append((i, e))
    eigs = esd_scaled([mats[i].detach() for i, _ in keep], [e for _, e in keep], dtype)
    for (i, _), ev in zip(keep, eigs):
        alpha[i], status[i] = hill_row(
            ev, variant=variant, min_eigs=min_eigs, input_dtype=mats[i].dtype, rank_deficient=rank_deficient,
            alpha_max=alpha_max,
        )
    return HillResult(alpha, status)
