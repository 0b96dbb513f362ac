"""``hill_alpha``: PL_Alpha_Hill (paper Eq. 2) of any list of weight matrices, the front door of the spectral
package. It validates the options and hands the matrices to the float64 reference (``method="exact"``) or to the
batched path (``"auto"``, ``"lanczos"``); both apply the rules and statuses of ``rules``."""
from __future__ import annotations

from typing import Sequence

import torch

from .batched import hill_alpha_fast
from .reference import hill_alpha_reference
from .rules import DEFAULT_ALPHA_MAX, DEFAULT_MIN_EIGS, METHODS, HillResult, as_matrix, check_args


def hill_alpha(
    matrices: Sequence[torch.Tensor] | torch.Tensor,
    *,
    method: str = "exact",
    variant: str = "paper",
    min_eigs: int = DEFAULT_MIN_EIGS,
    dtype: torch.dtype | None = None,
    rank_deficient: str = "nonzero",
    alpha_max: float | None = DEFAULT_ALPHA_MAX,
    return_status: bool = False,
    **method_kwargs,
) -> torch.Tensor | HillResult:
    """PL_Alpha_Hill of each matrix, in input order, as a float64 CPU tensor (NaN where there is no tail).

    matrices: a tensor or a list of tensors (any float dtype, any device; >2-D viewed as (shape[0], -1)).
    method: "exact" (the float64 reference, ``reference.hill_alpha_reference``); "auto" (what the optimizers
        use) and "lanczos" are ``batched.hill_alpha_fast``: on CPU "auto" is batched exact in float32 with a
        measured error bound, re-run in float64 for every matrix whose bound exceeds 1e-5 relative.
    variant: "paper" (Eq. 2) or "reference" (the public code's index convention).
    min_eigs: matrices with fewer eigenvalues (min dimension) get NaN with status "too_few_eigenvalues"; with
        rank_deficient="nonzero" also the minimum numerical rank.
    dtype: compute dtype; default float64 on CPU and float32 elsewhere.
    rank_deficient: "nonzero" (Eq. 2 on the nonzero eigenvalues when its threshold is numerically zero) or "nan".
    alpha_max: alphas above it are NaN with status "out_of_range"; None disables the bound.
    return_status: also return a status string per matrix (``rules`` lists every status).
    target_error (keyword, default None): |d alpha| every alpha must meet against float64 Eq. 2; see
        ``batched.hill_alpha_fast`` (exact meets any target).
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    check_args(variant, min_eigs, rank_deficient, alpha_max)
    if isinstance(matrices, torch.Tensor):
        matrices = [matrices]
    mats = [as_matrix(w) for w in matrices]
    if method != "exact":
        result = hill_alpha_fast(
            mats, method=method, variant=variant, min_eigs=min_eigs, dtype=dtype, rank_deficient=rank_deficient,
            alpha_max=alpha_max, **method_kwargs,
        )
        return result if return_status else result.alpha
    method_kwargs.pop("target_error", None)  # float64 Eq. 2 itself: meets any target
    if method_kwargs:
        raise TypeError(f"unexpected arguments for method='exact': {sorted(method_kwargs)}")
    result = hill_alpha_reference(mats, variant=variant, min_eigs=min_eigs, dtype=dtype,
                                  rank_deficient=rank_deficient, alpha_max=alpha_max)
    return result if return_status else result.alpha
