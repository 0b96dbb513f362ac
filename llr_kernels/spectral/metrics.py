"""Layer metrics of heavy-tailed self-regularisation (HT-SR) from one batched eigendecomposition per shape.

For W (n x m after viewing >2-D weights as (shape[0], -1)), l_1 <= ... <= l_n are the eigenvalues of W^T W on
the short side (``esd.batched_eigenvalues``): the squared singular values, float64. Conventions follow
WeightWatcher (``apply_norm_metrics``) and TempBalance (``net_esd_estimator``), which agree:

* "alpha": PL_Alpha_Hill of the chosen ``fit`` (``fits`` module): "median" is paper Eq. 2 computed by
  ``reference.hill_row`` itself, so it equals ``hill_alpha(method="exact")`` with the same statuses; "ks" and
  "fix_finger" apply the same status rules (too few, non-finite, zero, rank below min_eigs, flat, > alpha_max).
* "alpha_hat": alpha x log10(l_max) (WeightWatcher's alpha_weighted, TempBalance's alphahat). Scale-dependent:
  negative when sigma_max < 1. Status: alpha's.
* "spectral_norm": l_max = sigma_max^2, the largest eigenvalue of W^T W (NOT the operator norm sigma_max).
* "frobenius_norm": sum_i l_i = ||W||_F^2 (WeightWatcher's "norm" and TempBalance's "norm": the SQUARED
  Frobenius norm). ``frobenius(mats)`` gives the plain ||W||_F, e.g. for gradient norms.
* "stable_rank": ||W||_F^2 / ||W||_2^2 = sum_i l_i / l_max.
* "entropy": WeightWatcher's normalised matrix entropy. With p_i = l_i / sum_j l_j and numerical rank
  R = #{i : sigma_i > sigma_max N eps_64} (N = max(n, m)). WeightWatcher (0.7.7: ``matrix_rank`` on singular values
  of ``W.astype(float)``) casts every weight to float64 first, so its eps is float64's whatever the input dtype,

      entropy = -sum_{p_i > 0} p_i ln p_i / ln R       (R = 1 is replaced by 1.000001),

  in [0, 1] for R = n (1: flat spectrum, 0: rank one). Deviations from WeightWatcher 0.7.7, both for numerical
  sense: it adds EPSILON = 1e-10 to every p_i and to R (so a rank-one matrix divides by ln(1 + 1e-10)), here
  0 ln 0 = 0 and R = 1 reads 1.000001 (``entropy_from_eigenvalues(rule="ww")`` reproduces 0.7.7's formula); and
  the rank tolerance is computed on eigenvalues of the Gram, sigma_max^2 max((N eps_64)^2, n eps_64), since the
  Gram eigensolver cannot resolve l below n eps_64 l_max.

Statuses per metric and matrix (strings of ``rules``): "ok" (and "ok_rank_deficient" from Eq. 2);
"too_few_eigenvalues" (alpha, alpha_hat: n < min_eigs; min_eigs does not apply to the norms); "non_finite"
(every metric NaN); "zero_matrix" (spectral_norm and frobenius_norm are 0, the other metrics NaN);
"rank_deficient", "flat_spectrum", "out_of_range" (alpha, alpha_hat; see ``hill.py``).
"""
from __future__ import annotations

import math
from collections import defaultdict
from typing import NamedTuple, Sequence

import torch

from .esd import scaled_eigenvalues
from .fits import DEFAULT_MIN_TAIL, FIT_METHODS, check_fit_args, fit_power_law
from .reference import hill_row
from .rules import (
    DEFAULT_ALPHA_MAX,
    DEFAULT_MIN_EIGS,
    STATUS_FLAT,
    STATUS_NON_FINITE,
    STATUS_OK,
    STATUS_RANK_DEFICIENT,
    STATUS_TOO_FEW,
    STATUS_ZERO,
    as_matrix,
    check_args,
    decide,
    noise_level,
    zero_floor,
)

METRICS = ("alpha", "alpha_hat", "spectral_norm", "frobenius_norm", "stable_rank", "entropy")
_LOG10_4 = math.log10(4.0)
_RANK_ONE = 1.000001  # stand-in for ln(1) = 0 in the entropy's normaliser (a rank-one matrix)


class MetricsResult(NamedTuple):
    """values[name]: float64 CPU tensor, one per matrix in input order; status[name]: a string per matrix."""

    values: dict[str, torch.Tensor]
    status: dict[str, list[str]]


def _check_mats(mats: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    if isinstance(mats, torch.Tensor):
        raise ValueError("pass a list of matrices, not one tensor: wrap a single matrix as [w]")
    out = []
    for i, w in enumerate(mats):
        if not isinstance(w, torch.Tensor) or w.dim() < 2:
            raise ValueError(f"matrix {i} has shape {tuple(getattr(w, 'shape', ()))}: spectral metrics need 2-D "
                             "weights (>2-D are viewed as (shape[0], -1)); leave biases and norms out, or "
                             "reshape 1-D tensors to (1, -1) / (-1, 1) yourself")
        if not w.is_floating_point():
            raise ValueError(f"matrix {i} has dtype {w.dtype}: pass a floating tensor (cast with .float())")
        out.append(as_matrix(w))
    return out


def _check_names(names: Sequence[str]) -> tuple[str, ...]:
    if isinstance(names, str):
        names = (names,)
    bad = [n for n in names if n not in METRICS]
    if bad:
        hint = " (gradient norms: use metrics.frobenius(grads))" if "grad_norm" in bad else ""
        raise ValueError(f"unknown metric(s) {bad}: choose from {METRICS}{hint}")
    return tuple(names)


def frobenius(mats: Sequence[torch.Tensor], squared: bool = False) -> torch.Tensor:
    """||W||_F (or ||W||_F^2) of each tensor, float64 CPU, batched per (shape, device); not spectral, so any
    tensor shape is fine (e.g. gradients, biases). Non-finite inputs give inf/NaN."""
    if isinstance(mats, torch.Tensor):
        raise ValueError("pass a list of tensors, not one tensor: wrap it as [g]")
    out = torch.zeros(len(mats), dtype=torch.float64)
    groups: dict[tuple, list[int]] = defaultdict(list)
    for i, w in enumerate(mats):
        if not isinstance(w, torch.Tensor) or not w.is_floating_point():
            raise ValueError(f"item {i} is not a floating tensor: pass floating tensors (cast with .float())")
        groups[(tuple(w.shape), w.device)].append(i)
    for idx in groups.values():
        x = torch.stack([mats[i].detach() for i in idx]).reshape(len(idx), -1)
        nrm = torch.linalg.vector_norm(x, dim=1, dtype=torch.float64)
        out[torch.tensor(idx)] = (nrm * nrm if squared else nrm).cpu()
    return out


def _alpha_fitted(eigs, mats, idx, fit, min_eigs, min_tail, alpha, status) -> None:
    """alpha / status for fit "ks" or "fix_finger" of matrices idx (their spectra passed the early rules)."""
    todo: dict[int, list[tuple[int, float, float]]] = defaultdict(list)  # n -> (i, floor, nu)
    for i in idx:
        e = eigs[i]
        n = e.shape[0]
        nu = noise_level(n, mats[i].dtype, torch.float64)
        floor = zero_floor(n, float(e[-1]), float(e.mean()), nu, torch.float64)
        r = int((e > floor).sum())
        if r < 2 or (r <= n // 2 and r < min_eigs):  # hill.py rule 6: min_eigs bounds the rank only when Eq. 2's
            alpha[i], status[i] = float("nan"), STATUS_RANK_DEFICIENT  # threshold is zero (r <= k), as for "median"
            continue
        todo[n].append((i, floor, nu))
    for rows in todo.values():
        ids = [i for i, _, _ in rows]
        res = fit_power_law(torch.stack([eigs[i] for i in ids]), fit, min_tail=min_tail,
                            floor=torch.tensor([f for _, f, _ in rows], dtype=torch.float64))
        for (i, _, nu), a, k in zip(rows, res.alpha.tolist(), res.num_tail.tolist()):
            if not math.isfinite(a):
                alpha[i], status[i] = float("nan"), STATUS_FLAT
                continue
            _, status[i] = decide(k, k / (a - 1.0), nu, DEFAULT_ALPHA_MAX)
            alpha[i] = a if status[i] == STATUS_OK else float("nan")


def layer_metrics(
    mats: Sequence[torch.Tensor],
    names: Sequence[str] = METRICS,
    fit: str = "median",
    min_eigs: int = DEFAULT_MIN_EIGS,
    variant: str = "paper",
    *,
    min_tail: int = DEFAULT_MIN_TAIL,
) -> MetricsResult:
    """The requested metrics (module docstring) of every matrix from one batched eigendecomposition per shape.

    fit: "median" (paper Eq. 2), "ks" or "fix_finger" (``fits``), used by "alpha" and "alpha_hat".
    variant: Eq. 2's index convention ("paper" or "reference"); fit="median" only.
    min_eigs: alpha / alpha_hat need min(rows, cols) >= min_eigs (and as many numerically nonzero
        eigenvalues when Eq. 2's threshold is numerically zero: hill.py's rule 6, for every fit).
    min_tail: smallest tail of a "ks" / "fix_finger" candidate xmin.
    """
    names = _check_names(names)
    check_fit_args(fit, min_tail, 1, (1.0, 1.0), variant)
    check_args(variant, min_eigs, "nonzero", DEFAULT_ALPHA_MAX)
    ms = _check_mats(mats)
    count = len(ms)
    values = {k: torch.full((count,), float("nan"), dtype=torch.float64) for k in names}
    status = {k: [STATUS_OK] * count for k in names}
    if set(names) <= {"frobenius_norm"}:  # no eigenvalues needed
        if names:
            f2 = frobenius(ms, squared=True)
            status["frobenius_norm"] = [STATUS_NON_FINITE if not math.isfinite(v) else STATUS_ZERO if v == 0
                                        else STATUS_OK for v in f2.tolist()]
            values["frobenius_norm"] = torch.where(torch.isfinite(f2), f2, torch.full_like(f2, float("nan")))
        return MetricsResult(values, status)
    eigs, exps, pre = scaled_eigenvalues(ms)

    need_alpha = "alpha" in names or "alpha_hat" in names
    alpha = [float("nan")] * count
    a_status = [STATUS_TOO_FEW] * count
    if need_alpha:
        fitted = []
        for i, (w, e) in enumerate(zip(ms, eigs)):
            if min(w.shape) < max(2, min_eigs):
                continue
            if pre[i] is not None:
                a_status[i] = pre[i]  # type: ignore[assignment]
            elif fit == "median":
                alpha[i], a_status[i] = hill_row(e, variant=variant, min_eigs=min_eigs, input_dtype=w.dtype,
                                                 rank_deficient="nonzero", alpha_max=DEFAULT_ALPHA_MAX)
            else:
                fitted.append(i)
        if fitted:
            _alpha_fitted(eigs, ms, fitted, fit, min_eigs, min_tail, alpha, a_status)

    for i, (w, e) in enumerate(zip(ms, eigs)):
        st = pre[i] or STATUS_OK
        lmax, total = float(e[-1]), float(e.sum())
        if st == STATUS_NON_FINITE:
            lmax = total = float("nan")
        scale = math.ldexp(1.0, 2 * exps[i]) if abs(2 * exps[i]) < 1000 else float("inf") if exps[i] > 0 else 0.0
        log10_lmax = math.log10(lmax) + exps[i] * _LOG10_4 if lmax > 0 else float("nan")
        for k in names:
            s = st
            if k == "spectral_norm":
                v = lmax * scale if st != STATUS_ZERO else 0.0
            elif k == "frobenius_norm":
                v = total * scale if st != STATUS_ZERO else 0.0
            elif k == "stable_rank":
                v = total / lmax if st == STATUS_OK else float("nan")
            elif k == "entropy":
                v = entropy_from_eigenvalues(e, w.shape) if st == STATUS_OK else float("nan")
            elif k == "alpha":
                v, s = alpha[i], a_status[i]
            else:  # alpha_hat
                v, s = alpha[i] * log10_lmax, a_status[i]
            values[k][i] = v
            status[k][i] = s
    return MetricsResult(values, status)


ENTROPY_RULES = ("library", "ww")
WW_EPSILON = 1e-10  # WeightWatcher 0.7.7's constants.EPSILON, added to every p_i and to the rank in its entropy


def rank_tolerance(lmax: float, shape: Sequence[int]) -> float:
    """Gram eigenvalues above this count in the entropy's rank: sigma_max^2 max((N eps_64)^2, n eps_64) (module
    docstring; eps_64 for every dtype, as WeightWatcher, which casts to float64 first)."""
    eps = torch.finfo(torch.float64).eps
    return lmax * max((max(shape) * eps) ** 2, min(shape) * eps)


def entropy_from_eigenvalues(e: torch.Tensor, shape: Sequence[int], rule: str = "library") -> float:
    """WeightWatcher's normalised matrix entropy (module docstring) from one matrix's ascending float64 Gram
    eigenvalues; ``shape`` is the matrix's 2-D shape (its long side sets the rank tolerance). rule "library": 0 ln 0
    = 0 and R = 1 reads 1.000001; "ww": WeightWatcher 0.7.7's formula, EPSILON = 1e-10 added to every p_i and R."""
    if rule not in ENTROPY_RULES:
        raise ValueError(f"entropy rule must be one of {ENTROPY_RULES}, got {rule!r}")
    rank = int((e > rank_tolerance(float(e[-1]), shape)).sum())
    p = e / e.sum()
    if rule == "ww":
        p = p + WW_EPSILON
        return float(-(p * torch.log(p)).sum()) / math.log(rank + WW_EPSILON)
    p = p[p > 0]
    h = float(-(p * torch.log(p)).sum())
    return h / math.log(_RANK_ONE if rank <= 1 else rank)


def measure(
    mats: Sequence[torch.Tensor],
    metric: str,
    fit: str = "median",
    min_eigs: int = DEFAULT_MIN_EIGS,
    variant: str = "paper",
) -> tuple[torch.Tensor, list[str]]:
    """One metric of every matrix: (float64 CPU values in input order, a status string per matrix).

    The optimizers' entry point for non-default metrics and fits; metric in ``METRICS``, fit in
    ``fits.FIT_METHODS``. measure(mats, "alpha") equals hill_alpha(mats, method="exact", return_status=True).
    """
    if not isinstance(metric, str):
        raise ValueError(f"metric must be one name from {METRICS}, got {metric!r}")
    if fit not in FIT_METHODS:
        raise ValueError(f"fit must be one of {FIT_METHODS}, got {fit!r}")
    res = layer_metrics(mats, (metric,), fit=fit, min_eigs=min_eigs, variant=variant)
    return res.values[metric], res.status[metric]
