"""``hill_alpha_fast``: PL_Alpha_Hill of every matrix at once, by batched exact eigenvalues or SLQ, chosen per
matrix by a cost model (``cost.choose_method``), optionally to a target error (``target``).

Matrices are grouped by (method, n = min dim, device) and measured in chunks whose extra memory stays under a
budget; every op (Gram, eigvalsh, Lanczos, Hill reductions) goes through ``llr_kernels.ops.dispatch``, so the
number of launches depends on the number of chunks and distinct n, never on the number of layers. Statuses
and NaN rules are ``rules``'s, applied with the same noise level and zero floor by every path. Design notes and
measured errors and speeds: docs/spectral.md.
"""
from __future__ import annotations

import math
from collections import defaultdict
from typing import Sequence

import torch

from ..ops import dispatch
from .context import Call
from .cost import (
    DEFAULT_GROUPS,
    DEFAULT_PROBES,
    DEFAULT_STEPS,
    EXACT_REL_TOL,
    DeviceCost,
    choose_method,
)
from .exact import run_exact
from .rules import (
    DEFAULT_ALPHA_MAX,
    METHODS,
    OK_STATUSES,
    STATUS_TOO_FEW,
    HillResult,
    as_matrix,
    check_args,
    prescale,
)
from .slq import NodeRow, finish_lanczos, run_lanczos
from .target import TARGET_FALLBACKS, Target, refine


def hill_alpha_fast(
    matrices: Sequence[torch.Tensor],
    *,
    method: str = "auto",
    variant: str = "paper",
    min_eigs: int = 50,
    dtype: torch.dtype | None = None,
    backend: str = "auto",
    rank_deficient: str = "nonzero",
    alpha_max: float | None = DEFAULT_ALPHA_MAX,
    probes: int = DEFAULT_PROBES,
    steps: int = DEFAULT_STEPS,
    groups: int = DEFAULT_GROUPS,
    seed: int = 0,
    tf32: bool | None = None,
    memory_budget: int | None = None,
    report: dict | None = None,
    target_error: float | None = None,
    max_probes: int | None = None,
    target_fallback: str = "exact",
    costs: DeviceCost | None = None,
) -> HillResult:
    """PL_Alpha_Hill of every matrix (float64 CPU alphas + status strings, as ``hill_alpha``).

    method: "exact" (batched eigvalsh of the Grams), "lanczos" (SLQ) or "auto" (``choose_method``).
    backend: "auto" | "triton" | "cpp" | "torch" for every op (Gram, Hill reduction, ...).
    dtype: compute dtype. Default for exact: float32 with the verified error bound and float64 where it fails
        (``exact``); for lanczos: float64 on CPU, float32 on GPU (the Triton Gram is fp32-accumulated).
    rank_deficient, alpha_max: as ``hill.hill_alpha``.
    probes, steps, groups, seed: SLQ budget (probes must be a multiple of groups), reproducible probes.
    tf32: TF32 Gram formation for lanczos on GPU: True, False, or None (default) = only for bf16/fp16 matrices,
        whose TF32 products are exact (``gram_precision``; on an H200 a TF32 Gram of a heavy-tailed float32
        4096 x 4096 matrix moved its alpha from 1.74 to 2.09). Exact never uses TF32.
    memory_budget: bytes of extra memory one chunk may use; default ``default_budget``.
    report: if a dict is given it receives "stderr" (jackknife std. error, 0 for exact), "method" (per
        matrix), "chunks", "peak_extra_bytes_est", on CUDA "peak_extra_bytes" (measured), "fp64_eig" (indices
        settled by float64 eigenvalues of their float32 Gram, tier 2) and "fp64_rerun" (indices recomputed in
        float64 throughout, tier 3). With target_error also "error_est" (per matrix: the |d alpha| bound used,
        ``slq_error_bound`` for SLQ (inf for a status exact must decide), EXACT_REL_TOL x alpha for exact, 0 without an
        alpha), "target_met" (per matrix bool), "steps_error" (per matrix: the half-steps term inside error_est,
        0 for exact, inf where the half-steps rule gave another status), "probes" (final SLQ probes, 0 for exact)
        and "to_exact" (indices SLQ handed to the exact path), "alpha_fixed" / "stderr_fixed" / "status_fixed"
        (the answer of the fixed budget, before any refinement).
    target_error: None (default: the fixed budget, unchanged behaviour) or the |d alpha| each alpha must meet
        against float64 Eq. 2. SLQ matrices whose error_est exceeds it get more probes (the number the error
        model predicts, in powers of two of ``probes``) while SLQ at the new total still costs less than exact by
        the cost model (or, with max_probes, up to max_probes probes), then go to exact (target_fallback="exact") or keep
        their SLQ alpha with target_met False ("flag"). SLQ matrices with a status other than ok /
        ok_rank_deficient also go to exact (or are flagged), so statuses are exact's. Exact matrices meet any
        target >= 1e-5 x alpha (target mode runs exact with the checked float32 tiers, or float64 for dtype
        float64). "auto" sizes the SLQ budget it compares with exact for this target (``choose_method``).
    max_probes, target_fallback: see target_error.
    costs: throughput constants of the cost model (default ``COSTS`` of the matrices' device type), used by "auto"
        and by target_error's hand-over to exact (e.g. ``COSTS["cuda"]`` to replay GPU decisions on CPU).
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    check_args(variant, min_eigs, rank_deficient, alpha_max)
    dispatch.validate_backend(backend)
    if probes < 2 or probes % groups or groups < 2:
        raise ValueError(
            f"probes ({probes}) must be a multiple of groups ({groups}) and both >= 2 (jackknife needs >= 2 groups)"
        )
    if steps < 2:
        raise ValueError(f"steps must be >= 2, got {steps}")
    if target_error is not None and not (target_error > 0 and math.isfinite(target_error)):
        raise ValueError(f"target_error must be a positive |d alpha| (e.g. 0.02) or None, got {target_error}")
    if target_fallback not in TARGET_FALLBACKS:
        raise ValueError(f"target_fallback must be one of {TARGET_FALLBACKS}, got {target_fallback!r}")
    if max_probes is not None and max_probes < probes:
        raise ValueError(f"max_probes ({max_probes}) must be >= probes ({probes})")
    call = Call([as_matrix(w.detach()) for w in matrices], variant, min_eigs, rank_deficient, alpha_max,
                backend=backend, dtype=dtype, memory_budget=memory_budget, probes=probes, steps=steps, groups=groups,
                seed=seed, tf32=tf32)
    mats, nmat = call.mats, len(call.mats)

    groups_of: dict[tuple, list[int]] = defaultdict(list)
    for i, w in enumerate(mats):
        n = min(w.shape)
        if n < max(2, min_eigs):
            continue
        call.chosen[i] = method if method != "auto" else choose_method(n, w.device, steps, probes, target_error, costs)
        groups_of[(call.chosen[i], n, w.device)].append(i)
    lz = [i for (m, _, _), idx in groups_of.items() if m == "lanczos" for i in idx]
    for i, e in zip(lz, prescale([mats[i] for i in lz])):  # the exact path reads max|W| inside its Gram op
        if isinstance(e, str):
            call.status[i] = e
        else:
            call.exps[i] = e

    cuda_dev = next((w.device for w in mats if w.device.type == "cuda"), None)
    if cuda_dev is not None and report is not None:
        torch.cuda.synchronize(cuda_dev)
        base_mem = torch.cuda.memory_allocated(cuda_dev)
        torch.cuda.reset_peak_memory_stats(cuda_dev)

    node_rows: dict[torch.device, list[NodeRow]] = defaultdict(list)
    steps_err = None if target_error is None else torch.zeros(nmat, dtype=torch.float64)
    for (m, n, device), idx in groups_of.items():
        if m == "exact":
            run_exact(call, idx, n, device, dtype if target_error is None or dtype == torch.float64 else None)
        else:
            idx = [i for i in idx if call.status[i] == STATUS_TOO_FEW]  # not settled by prescale
            if idx:
                run_lanczos(call, idx, n, device, probes, node_rows, half=steps_err is not None)
    for device, rows in node_rows.items():
        finish_lanczos(call, rows, device, steps_err)
    tgt = None
    if target_error is not None:
        tgt = Target(target_error, max_probes, target_fallback, costs, steps_err)
        tgt.fixed = (call.alpha.clone(), call.stderr.clone(), list(call.status))  # the fixed budget's answer
        for device, rows in node_rows.items():
            refine(call, tgt, rows, device)
        for i in range(nmat):
            if call.chosen[i] != "lanczos":  # chosen, or handed over by refine
                tgt.steps_err[i] = 0.0
                if call.status[i] in OK_STATUSES:  # exact: within EXACT_REL_TOL of float64
                    tgt.err[i] = EXACT_REL_TOL * float(call.alpha[i])

    if report is not None:
        measured = None
        if cuda_dev is not None:
            torch.cuda.synchronize(cuda_dev)
            measured = torch.cuda.max_memory_allocated(cuda_dev) - base_mem
        st = call.stats
        report.update(stderr=call.stderr, method=call.chosen, chunks=st["chunks"], peak_extra_bytes_est=st["peak"],
                      peak_extra_bytes=measured, fp64_rerun=sorted(st["rerun"]), fp64_eig=sorted(st["tier2"]))
        if tgt is not None:
            report.update(error_est=tgt.err, target_met=[bool(x <= target_error) for x in tgt.err.tolist()],
                          steps_error=tgt.steps_err, probes=tgt.probes, to_exact=sorted(tgt.to_exact),
                          alpha_fixed=tgt.fixed[0], stderr_fixed=tgt.fixed[1], status_fixed=tgt.fixed[2])
    return HillResult(call.alpha, call.status)
