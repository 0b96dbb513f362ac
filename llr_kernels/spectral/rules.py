"""The rules every spectral path shares, and the one status vocabulary of the library (a leaf: imports only ops).

PL_Alpha_Hill (paper Eq. 2) of a matrix W (n x m after viewing >2-D weights as (shape[0], -1)) is read off the
ascending eigenvalues l_1 <= ... <= l_n of the n x n Gram on the short side, with k = floor(n / 2):

    paper     : alpha = 1 + k / sum_{i=1..k} ln(l_{n-i+1} / l_{n-k})
    reference : i = n // 2 (0-based), alpha = 1 + (n - i) / sum_{j >= i} ln(l_j / l_i)   (the public code's indices)

Alphas that are not estimates of a tail are NaN with a status, never an exception. Every path (the float64
reference, batched exact, SLQ) applies the same rules, in this order:

1. "too_few_eigenvalues": min dimension < ``min_eigs`` (default 50, as the public code).
2. "non_finite": an inf or NaN entry.  3. "zero_matrix": every entry zero.
4. Noise level ``noise_level``: the relative singular-value spread that the input's precision and the arithmetic
   alone explain, nu = 4 u_in + 8 sqrt(n) u_work, at least 1e-8 (SLQ's resolution).
5. Numerically zero eigenvalues: l <= ``zero_floor`` = max(n eps lmax, (2 nu)^2 mean(l), 1e-8 lmax), the floor
   below which exact and SLQ cannot tell an eigenvalue from zero; both read the same rank.
6. Rank deficiency: when Eq. 2's threshold is numerically zero (rank r <= k), ``rank_deficient="nonzero"``
   (default) applies Eq. 2 to the r nonzero eigenvalues ("ok_rank_deficient"; "rank_deficient" if r < min_eigs);
   "nan" gives "rank_deficient".
7. "flat_spectrum": the top half's mean log-excess is within the noise level (an orthogonal matrix's).
8. "out_of_range": alpha > ``alpha_max`` (default 50): only near-flat spectra get there, and their alpha would
   pin the top of Eq. 3's range and squash every other layer.

The measurements behind the constants (noise margins, the zero floor, the rank-deficient bias) are in
docs/spectral.md.
"""
from __future__ import annotations

import math
from typing import NamedTuple, Sequence

import torch

from ..ops.gram.naive import applied_exponent, gram, max_exponents, scaled

__all__ = ["applied_exponent", "gram", "scaled"]  # re-exported: the scaling rule lives with the Gram op

# ----- statuses: per matrix from the spectral paths, per layer from the optimizers ---------------------------------
STATUS_OK = "ok"
STATUS_OK_RANK_DEFICIENT = "ok_rank_deficient"  # Eq. 2 on the numerically nonzero part (rank-aware k)
STATUS_TOO_FEW = "too_few_eigenvalues"  # min(rows, cols) < min_eigs
STATUS_NON_FINITE = "non_finite"  # the matrix holds inf or NaN
STATUS_ZERO = "zero_matrix"  # every entry is zero
STATUS_RANK_DEFICIENT = "rank_deficient"  # threshold numerically zero, and mode "nan" or fewer than min_eigs nonzero
STATUS_FLAT = "flat_spectrum"  # top half as flat as rounding makes an orthogonal matrix
STATUS_OUT_OF_RANGE = "out_of_range"  # alpha > alpha_max: not the estimate of a tail
STATUS_OUTLIER = "outlier"  # a layer's alpha far from the other layers' (policies.llr.robust_outliers)
STATUS_NO_GRAD = "no_grad"  # a layer without a gradient at a gradient-phase update
STATUS_VECTOR = "vector"  # a 1-D parameter: never measured
STATUS_NOT_MEASURED = "not_measured"  # no update has measured the layer yet
STATUS_INACTIVE = "inactive"  # fewer than two layers usable at an update: Eq. 3 has no range
OK_STATUSES = (STATUS_OK, STATUS_OK_RANK_DEFICIENT)  # the statuses with a finite alpha
# Integer codes of the per-layer statuses in checkpoints (torch.distributed.checkpoint entries) and in the
# all-reduce of the distributed update: append only, never reorder (saved checkpoints hold these indices).
STATUS_CODES = (STATUS_NOT_MEASURED, STATUS_VECTOR, STATUS_NO_GRAD, STATUS_OK, STATUS_OK_RANK_DEFICIENT, STATUS_TOO_FEW,
                STATUS_NON_FINITE, STATUS_ZERO, STATUS_RANK_DEFICIENT, STATUS_FLAT, STATUS_OUT_OF_RANGE, STATUS_OUTLIER)

VARIANTS = ("paper", "reference")
METHODS = ("exact", "lanczos", "auto")
RANK_MODES = ("nonzero", "nan")
DEFAULT_MIN_EIGS = 50  # as the public code: fewer eigenvalues make the tail estimate meaningless
DEFAULT_ALPHA_MAX = 50.0  # rule 8
NOISE_C_INPUT = 4.0  # x u_in (measured max 0.56)
NOISE_C_WORK = 8.0  # x sqrt(n) u_work (measured max 1.3)
NOISE_MIN = 1e-8  # SLQ's resolution in ln l (its node cells are >= 1e-9 wide): below, every path reads "flat"
ZERO_REL = 1e-8  # eigenvalues below this x lmax count as zero on every path: SLQ resolves a zero cluster to ~1e-10


class HillResult(NamedTuple):
    """alpha (float64 CPU tensor, one per input matrix) and a status string per matrix."""

    alpha: torch.Tensor
    status: list[str]


def as_matrix(w: torch.Tensor) -> torch.Tensor:
    """View a weight as a 2-D matrix: (shape[0], -1) for >2-D tensors (conv kernels, fused stacks)."""
    if w.dim() < 2:
        raise ValueError(f"hill_alpha needs matrices (>= 2-D tensors), got a tensor of shape {tuple(w.shape)}")
    return w.reshape(w.shape[0], -1) if w.dim() > 2 else w


def compute_dtype(device: torch.device) -> torch.dtype:
    """float64 on CPU (cheap and exact enough to be the reference), float32 on accelerators."""
    return torch.float64 if device.type == "cpu" else torch.float32


def unit_roundoff(dtype: torch.dtype) -> float:
    """Unit roundoff u = eps / 2 of a floating dtype."""
    return torch.finfo(dtype).eps / 2


def noise_level(n: int, input_dtype: torch.dtype, compute: torch.dtype) -> float:
    """Relative spread of singular values that precision alone explains (rule 4)."""
    u_in = unit_roundoff(input_dtype)
    u_work = max(unit_roundoff(compute), min(u_in, unit_roundoff(torch.float32)))
    return max(NOISE_C_INPUT * u_in + NOISE_C_WORK * math.sqrt(n) * u_work, NOISE_MIN)


def zero_floor(n: int, lmax: float, mean: float, nu: float, compute: torch.dtype) -> float:
    """Largest eigenvalue of the Gram still read as zero (rule 5)."""
    return max(n * torch.finfo(compute).eps * lmax, 4.0 * nu * nu * mean, ZERO_REL * lmax)


def hill_params(n: int, variant: str) -> tuple[int, int, int, float]:
    """(threshold index (0-based, ascending), first index of the summed tail, numerator, CDF level of the
    threshold) of Eq. 2 (``variant="paper"``) or the public code's convention for n eigenvalues."""
    if variant == "paper":
        k = n // 2
        return n - k - 1, n - k, k, (n - k - 0.5) / n
    i = n // 2
    return i, i, n - i, (i + 0.5) / n


def decide(num: float, logsum: float, nu: float, alpha_max: float | None, ok: str = STATUS_OK) -> tuple[float, str]:
    """Alpha and status from Eq. 2's numerator and log-sum (rules 7 and 8): NaN for a flat or out-of-range one."""
    if not logsum > num * nu:  # also catches NaN
        return float("nan"), STATUS_FLAT
    a = 1.0 + num / logsum
    if alpha_max is not None and a > alpha_max:
        return float("nan"), STATUS_OUT_OF_RANGE
    return a, ok


def check_args(variant: str, min_eigs: int, rank_deficient: str, alpha_max: float | None) -> None:
    """Validate the estimator options shared by every path."""
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    if min_eigs < 2:
        raise ValueError(f"min_eigs must be >= 2 (Eq. 2 needs a threshold and a tail), got {min_eigs}")
    if rank_deficient not in RANK_MODES:
        raise ValueError(f"rank_deficient must be one of {RANK_MODES}, got {rank_deficient!r}")
    if alpha_max is not None and not (alpha_max > 1.0):
        raise ValueError(f"alpha_max must be > 1 (Eq. 2 gives alpha > 1) or None for no bound, got {alpha_max}")


def prescale(mats: Sequence[torch.Tensor]) -> list[int | str]:
    """Per matrix: the power-of-two exponent e with max|W| / 2^e in [0.5, 1), or the status that settles it here
    ("non_finite", "zero_matrix"; rules 2 and 3). One host transfer per device."""
    out: list[int | str] = []
    for e in max_exponents(mats):
        out.append(STATUS_NON_FINITE if math.isnan(e) else STATUS_ZERO if e == -math.inf else int(e))
    return out
