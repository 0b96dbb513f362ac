"""The cost and error models of the batched spectral path: which method ``"auto"`` picks per matrix, how many
SLQ probes a target error needs, and how much memory a chunk of matrices takes.

Per n x n Gram (leaving out the Gram itself, common to both): exact = 4/3 n^3 / eig_flops + eig_latency (the
tridiagonal reduction); SLQ = max((2 n^2 p s + 4 n p s^2) / lanczos_flops, s n^2 elem / bandwidth) for p probes and
s steps. SLQ's error against Eq. 2: RMS (alpha - 1)^2 / sqrt(n p) x ``SLQ_ERR_C``, plus a bias of about a local
eigenvalue gap, (alpha - 1)^2 / n x ``SLQ_BIAS_C``. Constants and the measurements behind them: docs/spectral.md.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch

DEFAULT_PROBES = 32
DEFAULT_STEPS = 128
DEFAULT_GROUPS = 8  # jackknife probe groups
EXACT_REL_TOL = 1e-5  # float32 alphas farther than this (by their bound) from float64 Eq. 2 are recomputed
# SLQ error model: RMS |d alpha| ~ SLQ_ERR_C (alpha - 1)^2 / sqrt(n probes)
SLQ_ERR_C = 1.5
# ... plus a bias that probes do not remove: SLQ reads a smoothed quantile, Eq. 2 one eigenvalue, which differ
# by up to about a gap between neighbouring eigenvalues at the threshold: |d alpha| <~ SLQ_BIAS_C (alpha - 1)^2 / n
SLQ_BIAS_C = 3.0
TARGET_Z = 3.0  # target_error is met when TARGET_Z x max(jackknife stderr, model RMS) + bias <= target_error
AUTO_PRIOR_ALPHA = 3.0  # alpha assumed by "auto" to size the Lanczos budget a target needs (MP at aspect 2.7)


class DeviceCost(NamedTuple):
    """Per-device throughput constants of the cost model (module docstring). Rates are effective rates of this
    library's implementations, not peaks."""

    lanczos_flops: float  # flop/s of a Lanczos step (batched matvec + reorthogonalisation) per matrix
    eig_flops: float  # flop/s of the eigensolver on its ~4/3 n^3 tridiagonal reduction
    eig_latency: float  # seconds per matrix on top (per-matrix solver launches and host syncs)
    bandwidth: float  # bytes/s at which a Lanczos step streams the Gram
    elem: int  # bytes per Gram entry (float64 on CPU, float32 on CUDA)


COSTS: dict[str, DeviceCost] = {
    # measured on the 2-core dev machine, 1 thread: float64 eigvalsh 10-13 GFLOP/s at n = 512-1024 (4/3 n^3),
    # lanczos_torch 1.8-3.3 GFLOP/s (32 probes x 128 steps, n = 512-1024; small ops dominate), ~10 GB/s
    "cpu": DeviceCost(lanczos_flops=3e9, eig_flops=12e9, eig_latency=0.0, bandwidth=1e10, elem=8),
    # H200, assumed before any GPU run: fp32 batched matvec + reorthogonalisation 1e13 FLOP/s; eigvalsh loops
    # cuSOLVER syevd per matrix: ~5e11 FLOP/s on 4/3 n^3 plus ~1 ms launches + sync. Measured since (2026-12-04,
    # LLaMA-1B, 168 matrices): exact 4.07 s (24 ms per 2048 x 2048 Gram), SLQ 32 x 128 0.90 s (docs/spectral.md)
    "cuda": DeviceCost(lanczos_flops=1e13, eig_flops=5e11, eig_latency=1e-3, bandwidth=4.0e12, elem=4),
}


def _costs(device: torch.device | str, costs: DeviceCost | None) -> DeviceCost:
    kind = device if isinstance(device, str) else device.type
    return costs if costs is not None else COSTS["cuda" if kind == "cuda" else "cpu"]


def exact_cost(n: int, device: torch.device | str, costs: DeviceCost | None = None) -> float:
    """Seconds for one n x n Gram's eigenvalues: ~4/3 n^3 flops of tridiagonal reduction (the O(n^2) tridiagonal
    eigensolver is negligible) plus the per-matrix latency. The Gram itself (2 n^2 m flops) is common to both
    methods and left out."""
    c = _costs(device, costs)
    return 4.0 / 3.0 * n**3 / c.eig_flops + c.eig_latency


def lanczos_cost(n: int, probes: int, steps: int, device: torch.device | str, costs: DeviceCost | None = None) -> float:
    """Seconds of SLQ on one n x n Gram: per step, the larger of 2 n^2 probes matvec flops (plus two classical
    Gram-Schmidt passes, 4 n probes s^2 flops over s steps) and the n^2 elem bytes of streaming the Gram."""
    c = _costs(device, costs)
    s = min(steps, n)
    flops = 2.0 * n * n * probes * s + 4.0 * n * probes * s * s
    return max(flops / c.lanczos_flops, s * n * n * c.elem / c.bandwidth)


def slq_error_model(alpha: float, n: int, probes: int) -> float:
    """Modelled RMS |d alpha| of SLQ against Eq. 2: an error dm in the mean log-excess m = logsum / k moves
    alpha = 1 + 1/m by (alpha - 1)^2 dm, and dm falls as 1 / sqrt(n probes) (Rademacher probes)."""
    return SLQ_ERR_C * (alpha - 1.0) ** 2 / math.sqrt(n * probes)


def slq_bias_model(alpha: float, n: int) -> float:
    """Bound on the |d alpha| more probes cannot remove: SLQ's smoothed threshold quantile against Eq. 2's single
    eigenvalue l_{n-k}, about a local eigenvalue gap (1 / (n x density of ln l)) apart, times (alpha - 1)^2."""
    return SLQ_BIAS_C * (alpha - 1.0) ** 2 / n


def slq_error_bound(alpha: float, n: int, probes: int, stderr: float = 0.0, steps_error: float = 0.0) -> float:
    """The |d alpha| bound target_error is checked against: TARGET_Z x max(jackknife stderr, modelled RMS) + bias
    + ``steps_error`` (the half-steps difference, module docstring)."""
    return TARGET_Z * max(stderr, slq_error_model(alpha, n, probes)) + slq_bias_model(alpha, n) + steps_error


def probes_needed(n: int, target_error: float, alpha: float, probes: int) -> int | None:
    """Smallest probes x 2^j whose modelled bound is within target_error; None if the bias alone exceeds it."""
    if slq_bias_model(alpha, n) >= target_error:
        return None
    p = probes
    while slq_error_bound(alpha, n, p) > target_error:
        p *= 2
    return p


def choose_method(n: int, device: torch.device | str, steps: int = DEFAULT_STEPS, probes: int = DEFAULT_PROBES,
                  target_error: float | None = None, costs: DeviceCost | None = None) -> str:
    """The ``method="auto"`` rule for one n x n Gram on ``device``: "lanczos" when SLQ at the budget it needs
    (``probes``; with target_error, ``probes_needed`` at alpha = AUTO_PRIOR_ALPHA) costs less than exact by
    the cost model and the Krylov space is a small part of the space (n > 2 steps), else "exact"."""
    if n <= 2 * steps:
        return "exact"
    p = probes if target_error is None else probes_needed(n, target_error, AUTO_PRIOR_ALPHA, probes)
    if p is None:
        return "exact"
    return "lanczos" if lanczos_cost(n, p, steps, device, costs) < exact_cost(n, device, costs) else "exact"


def default_budget(device: torch.device) -> int:
    """Extra-memory budget in bytes: a quarter of free GPU memory (at most 8 GiB), 2 GiB on CPU."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(min(8 << 30, free // 4))
    return 2 << 30


def bytes_per_matrix(n: int, method: str, probes: int, steps: int, groups: int, elem: int) -> int:
    """Peak extra bytes one matrix adds to a chunk (Gram + eigensolver workspace, or Gram + Krylov basis
    + tridiagonals); used to size chunks and reported as the estimated peak."""
    if method == "exact":
        return 3 * n * n * elem + 2 * n * elem
    s = min(steps, n)
    return n * n * elem + probes * (s + 4) * n * elem + 4 * probes * s * s * elem
