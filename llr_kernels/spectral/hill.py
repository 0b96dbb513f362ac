"""PL_Alpha_Hill: the Hill estimator of a weight matrix's spectral tail (paper Eq. 2), and the rules every
spectral path shares for matrices whose spectrum has no tail to estimate.

This module is the exact reference every fast spectral path is held to. For a matrix W (n x m after
viewing >2-D weights as (shape[0], -1)) the nonzero eigenvalues of W^T W are the eigenvalues of the
n x n Gram on the short side. Sorted ascending l_1 <= ... <= l_n, with k = floor(n / 2):

    paper     : alpha = 1 + k / sum_{i=1..k} ln(l_{n-i+1} / l_{n-k})
    reference : i = n // 2 (0-based), alpha = 1 + (n - i) / sum_{j >= i} ln(l_j / l_i)
                (the public code's convention, one index off from Eq. 2)

Alphas that are not estimates of a tail are NaN, never an exception; ``return_status=True`` says why.
Every path (this one, ``fast.py`` exact and Lanczos) applies the same rules, in this order:

1. "too_few_eigenvalues": min dimension < ``min_eigs`` (default 50, as the public code).
2. "non_finite": an inf or NaN entry.  3. "zero_matrix": every entry zero.
4. Noise level of the input's precision. Rounding W to its dtype (unit roundoff u_in) perturbs its singular
   values, and the arithmetic that made W (QR, products; at least fp32) and the Gram + eigensolver (compute
   dtype) add more. ``noise_level`` nu = 4 u_in + 8 sqrt(n) u_work, u_work = max(u_compute, min(u_in, u_fp32)),
   and at least 1e-8 (SLQ resolves log-spreads down to about 1e-9, so every path agrees there; fp64 only).
   Measured on ``nn.init.orthogonal_`` matrices (n = 50..768, aspect 1..10): the top half's mean log-excess
   m = logsum / k is at most 0.56 u_in after rounding to bf16/fp16 and at most 1.3 sqrt(n) u for fp32/fp64 ones
   (their own QR error), so the rule below has a margin of 6x or more.
5. Numerically zero eigenvalues: l <= ``zero_floor`` = max(n eps_compute lmax, (2 nu)^2 mean(l), 1e-8 lmax): the
   Gram eigensolver's absolute accuracy; rounding noise (measured: the extra singular values of exactly low-rank
   matrices rounded to bf16/fp16/fp32 stay below 0.52 nu rms(sigma)); and what SLQ can resolve (its Ritz values
   reach a zero cluster separated by a spectral gap only to about 1e-10 lmax in 24 steps), so exact and Lanczos
   read the same rank (singular values below 1e-4 sigma_max are zero for both).
6. Rank deficiency: when Eq. 2's threshold is numerically zero (numerical rank r <= k), ``rank_deficient=``
   "nonzero" (default) applies Eq. 2 to the r nonzero eigenvalues (k = floor(r/2), threshold inside the
   nonzero part): status "ok_rank_deficient", or "rank_deficient" if r < min_eigs; "nan" gives
   "rank_deficient" (the behaviour before). A rank between k + 1 and n leaves Eq. 2 defined and unchanged (the
   zeros lie below its threshold), so full-rank and mildly deficient matrices keep the paper's estimate; the
   price is a jump at r = k (bias table: benchmarks/results/hill_rank_deficient_bias.md, made by
   scripts/hill_rank_deficient_bias.py).
7. "flat_spectrum": m <= noise level: the top half is as flat as rounding makes an orthogonal matrix (alpha
   above ~7e4 for fp32 at n = 768, ~65 for bf16, ~500 for fp16); Eq. 2 would measure rounding, not a tail.
8. "out_of_range": alpha > ``alpha_max`` (default 50). HT-SR practice reads alpha in about [2, 6] (well
   trained) and above 6 as random-like; a Gaussian (Marchenko-Pastur) matrix, the least heavy-tailed thing a
   layer starts from, gives Eq. 2 alpha 2.1 / 3.0 / 4.4 / 8.8 / 37 at aspect ratio 1 / 2.7 / 8 / 42 / 1000, so
   50 is reached only by near-flat spectra (orthogonal init, Muon-like updates, spikes on a flat bulk), whose
   alpha would pin the top of Eq. 3's range and squash every other layer. A robust outlier rule across layers
   (e.g. median +- k MAD of log alpha) belongs to the LR policy, not here.
"""
from __future__ import annotations

import math
from collections import defaultdict
from typing import NamedTuple, Sequence

import torch

STATUS_OK = "ok"
STATUS_OK_RANK_DEFICIENT = "ok_rank_deficient"  # Eq. 2 on the numerically nonzero part (rank-aware k)
STATUS_TOO_FEW = "too_few_eigenvalues"  # min(rows, cols) < min_eigs
STATUS_NON_FINITE = "non_finite"  # the matrix holds inf or NaN
STATUS_ZERO = "zero_matrix"  # every entry is zero
STATUS_RANK_DEFICIENT = "rank_deficient"  # threshold numerically zero, and mode "nan" or fewer than min_eigs nonzero
STATUS_FLAT = "flat_spectrum"  # top half as flat as rounding makes an orthogonal matrix
STATUS_OUT_OF_RANGE = "out_of_range"  # alpha > alpha_max: not the estimate of a tail
OK_STATUSES = (STATUS_OK, STATUS_OK_RANK_DEFICIENT)  # the statuses with a finite alpha

VARIANTS = ("paper", "reference")
METHODS = ("exact", "lanczos", "auto")
RANK_MODES = ("nonzero", "nan")
DEFAULT_MIN_EIGS = 50  # as the public code: fewer eigenvalues make the tail estimate meaningless
DEFAULT_ALPHA_MAX = 50.0  # see the module docstring, rule 8
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


def gram(w: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Gram matrix on the short side, (..., n, n) with n = min(rows, cols); batched over leading dims."""
    w = w if dtype is None else w.to(dtype)
    if w.shape[-2] <= w.shape[-1]:
        return w @ w.transpose(-1, -2)
    return w.transpose(-1, -2) @ w


def compute_dtype(device: torch.device) -> torch.dtype:
    """float64 on CPU (cheap and exact enough to be the reference), float32 on accelerators."""
    return torch.float64 if device.type == "cpu" else torch.float32


def unit_roundoff(dtype: torch.dtype) -> float:
    """Unit roundoff u = eps / 2 of a floating dtype."""
    return torch.finfo(dtype).eps / 2


def noise_level(n: int, input_dtype: torch.dtype, compute: torch.dtype) -> float:
    """Relative spread of singular values that precision alone explains (module docstring, rule 4)."""
    u_in = unit_roundoff(input_dtype)
    u_work = max(unit_roundoff(compute), min(u_in, unit_roundoff(torch.float32)))
    return max(NOISE_C_INPUT * u_in + NOISE_C_WORK * math.sqrt(n) * u_work, NOISE_MIN)


def zero_floor(n: int, lmax: float, mean: float, nu: float, compute: torch.dtype) -> float:
    """Largest eigenvalue of the Gram still read as zero (module docstring, rule 5)."""
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
    ("non_finite", "zero_matrix"). One host transfer per device."""
    out: list[int | str] = [STATUS_ZERO] * len(mats)
    by_dev: dict[torch.device, list[int]] = defaultdict(list)
    for i, w in enumerate(mats):
        if w.numel():
            by_dev[w.device].append(i)
    for idx in by_dev.values():
        ext = torch.stack([torch.stack(torch.aminmax(mats[i])).double() for i in idx]).tolist()
        for i, (lo, hi) in zip(idx, ext):
            a = max(abs(lo), abs(hi))
            if not (math.isfinite(lo) and math.isfinite(hi)):
                out[i] = STATUS_NON_FINITE
            else:
                out[i] = STATUS_ZERO if a == 0 else math.frexp(a)[1]
    return out


def applied_exponent(e: int, dtype: torch.dtype) -> int:
    """The exponent ``scaled`` applies: e when 2^e lies outside 2^+-40 (float32) / 2^+-400 (float64), else 0 (no
    Gram entry can then over- or underflow; csrc/spectral_cpu.cpp applies the same rule)."""
    return e if abs(e) > (40 if dtype.itemsize <= 4 else 400) else 0


def scaled(w: torch.Tensor, e: int, dtype: torch.dtype) -> torch.Tensor:
    """w in ``dtype`` times 2^-applied_exponent(e): powers of two are exact and alpha is scale-invariant."""
    e = applied_exponent(e, dtype)
    x = w if w.dtype.itemsize > dtype.itemsize else w.to(dtype)  # scale a float64 input before it becomes float32
    if e:
        x = x.clone() if x is w else x
    while e:
        step = max(-100, min(100, e))
        x.mul_(2.0 ** (-step))
        e -= step
    return x.to(dtype)


def esd(matrices: Sequence[torch.Tensor], dtype: torch.dtype | None = None) -> list[torch.Tensor]:
    """Ascending eigenvalues of each matrix's short-side Gram (its squared singular values).

    Matrices of equal shape on the same device are stacked and decomposed as one batch.
    Eigenvalues are returned on the matrices' devices in the compute dtype.
    """
    mats = [as_matrix(w.detach()) for w in matrices]
    exps = [e if isinstance(e, int) else 0 for e in prescale(mats)]
    out = _esd_scaled(mats, exps, dtype)
    return [x * 4.0 ** applied_exponent(e, x.dtype) for x, e in zip(out, exps)]


def _esd_scaled(mats: list[torch.Tensor], exps: list[int], dtype: torch.dtype | None) -> list[torch.Tensor]:
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
    method: "exact" (this reference: batched eigendecomposition of the short-side Gram, float64 on CPU);
        "auto" (what the optimizers use) and "lanczos" are served by ``fast.hill_alpha_fast``: on CPU "auto"
        is batched exact in float32 with a measured error bound, re-run in float64 for every matrix whose
        bound exceeds 1e-5 relative (see ``fast``).
    variant: "paper" (Eq. 2) or "reference" (the public code's index convention).
    min_eigs: matrices with fewer eigenvalues (min dimension) get NaN with status "too_few_eigenvalues"; with
        rank_deficient="nonzero" also the minimum numerical rank.
    dtype: compute dtype; default float64 on CPU and float32 elsewhere.
    rank_deficient: "nonzero" (Eq. 2 on the nonzero eigenvalues when its threshold is numerically zero) or "nan".
    alpha_max: alphas above it are NaN with status "out_of_range"; None disables the bound.
    return_status: also return a status string per matrix (see the module docstring for every status).
    target_error (keyword, default None): |d alpha| every alpha must meet against float64 Eq. 2; see
        ``fast.hill_alpha_fast`` (exact meets any target).
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    check_args(variant, min_eigs, rank_deficient, alpha_max)
    if isinstance(matrices, torch.Tensor):
        matrices = [matrices]
    mats = [as_matrix(w) for w in matrices]
    if method != "exact":
        from . import fast  # the fast path lives beside this reference

        result = fast.hill_alpha_fast(
            mats, method=method, variant=variant, min_eigs=min_eigs, dtype=dtype, rank_deficient=rank_deficient,
            alpha_max=alpha_max, **method_kwargs,
        )
        return result if return_status else result.alpha
    method_kwargs.pop("target_error", None)  # float64 Eq. 2 itself: meets any target
    if method_kwargs:
        raise TypeError(f"unexpected arguments for method='exact': {sorted(method_kwargs)}")
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
    eigs = _esd_scaled([mats[i].detach() for i, _ in keep], [e for _, e in keep], dtype)
    for (i, _), ev in zip(keep, eigs):
        alpha[i], status[i] = hill_row(
            ev, variant=variant, min_eigs=min_eigs, input_dtype=mats[i].dtype, rank_deficient=rank_deficient,
            alpha_max=alpha_max,
        )
    return HillResult(alpha, status) if return_status else alpha
