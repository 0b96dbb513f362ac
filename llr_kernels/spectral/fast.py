"""Fast PL_Alpha_Hill for all layers at once: batched exact and stochastic Lanczos quadrature (SLQ).

Pipeline, per chunk of same-size Grams (n = min dim), chunked so the chunk's extra memory stays under a
budget. Every matrix is first scaled by a power of two (``hill.prescale``: exact, and no Gram over- or
underflows), and inf/NaN and all-zero matrices are settled there.
- exact on CPU: Gram + ``eigvalsh`` per matrix, the matrices spread over the intra-op threads (op
  ``gram_eigvalsh``: C++ extension, one matrix per thread; pure-torch reference: one batched ``eigvalsh``).
- exact on GPU: Gram (one grouped launch: ``gram_triton``) -> batched ``eigvalsh``.
- lanczos: batched SLQ (``lanczos``: ``steps`` batched matvecs for all layers and probes, then all
  tridiagonals at once).
After the last chunk, one Hill reduction for every layer (``hill_triton``: from eigenvalues, or from
Gauss nodes). Launch count depends on the number of chunks, ``steps`` and distinct (n, dtype) pairs,
never on the number of layers. Ops are chosen through ``llr_kernels.dispatch``. Statuses and NaN rules are
``hill``'s (module docstring there), applied with the same noise level and zero floor by every path.

Exact in float32 with a measured error bound (``dtype=None``, the default, for inputs of at most fp32
precision), in three tiers per matrix:
1. float32 Gram (lower-triangle blocks, about 60% of a GEMM's flops) + float32 ``eigvalsh``;
2. float64 ``eigvalsh`` of that float32 Gram, for the matrices tier 1 could not settle;
3. float64 Gram + float64 ``eigvalsh`` (the reference) for the rest, and for float64 inputs.
A tier settles a matrix only if it reads "ok", clear of every status boundary (threshold above the zero floors
and 64 u32 mean(l), top-half spread above twice the noise level, alpha below alpha_max by a margin), and its
error bound ``C * u32 * (alpha - 1)^2 / alpha * mean(l) / thr`` (u32 = 2^-24, thr = Eq. 2's threshold) is at
most ``EXACT_REL_TOL`` = 1e-5. So statuses are float64's and every alpha is within 1e-5 of float64 Eq. 2.
Why this form: alpha - 1 = k / logsum and logsum moves by about k dthr / thr, so d alpha / alpha is about
(alpha - 1)^2 / alpha * dthr / thr; the eigenvalue error of a float32 Gram (rounded entries) and of float32
eigvalsh scales with the Gram's diagonal, i.e. with mean(l) (measured: of lmax, rms(l) and mean(l), mean(l) gives
the tightest ratio, median-to-max spread 6x instead of 20-100x). C is measured by
``scripts/hill_fp32_error.py`` (error / bound-without-C, on Marchenko-Pastur, power-law (alpha 1.5-6.6),
log-normal, trained-like (bulk + power-law tail + spikes, lmax / thr up to ~1e5) and flat-with-spikes spectra
stored in fp32, bf16 and fp16): 200 matrices at the LLaMA-60M shapes 768 x 768 / 768 x 2048 / 2048 x 768 give
tier 1 at most 14.9 (median 2.0) and tier 2 at most 5.1; 3000 matrices with n = 8..256 give 28 (median 1.8) and
12.5. ``FP32_ERR_C`` = 64 and ``GRAM32_ERR_C`` = 24 keep a margin of 2 or more over both. Tier 1 thus settles
layers with (alpha - 1)^2 / alpha * mean(l) / thr <= 2.6 (Gaussian init about 0.9-1.5, power-law alpha 2-3
about 1-2); higher alphas or spikier spectra fall to tier 2 (one float64 eigvalsh) or 3. ``report`` lists them.
CPU: the ``gram_eigvalsh`` op gives each thread whole matrices (C++; torch's batched eigvalsh runs them one after
another with LAPACK's poorly scaling threads, and stalls when another process holds a core).
``dtype=torch.float64`` (or ``hill_alpha(method="exact")``) is the float64 reference; ``dtype=torch.float32`` is
float32 without the check. Measured interleaved on the 2-core dev machine (load 2-3, so indicative only): the 42
LLaMA-60M hidden matrices take 0.95 s against 3.5 s for the public fp32 ``svdvals`` loop (3.7x; float64 through
the same threaded op 1.6 s), the 32000 x 768 embedding 0.17 s against 0.46 s.

``method="auto"`` rule (per matrix, ``choose_method``): the cheaper of exact and SLQ by a cost model, SLQ only
where the Krylov space is a small part of the space (n > 2 steps). Costs per n x n Gram, leaving out the Gram
itself (2 n^2 m flops, common to both): exact = 4/3 n^3 / eig_flops + eig_latency (tridiagonal reduction; the
tridiagonal eigensolve is O(n^2)); SLQ = max((2 n^2 p s + 4 n p s^2) / lanczos_flops, s n^2 elem / bandwidth)
(p probes, s steps: matvecs plus two Gram-Schmidt passes, or streaming the Gram once per step). With one flop
rate for both, SLQ is dearer once p s (1 + 2s/n) > 2n/3: at 32 x 128, for every n <= 6144. The constants are per
device (``COSTS``): CPU measured (float64 eigvalsh 10-13 GFLOP/s, lanczos_torch 2-3 GFLOP/s on one thread), so
CPU is exact at every LLaMA shape; CUDA assumed for an H200 (no GPU was available: SLQ 1e13 FLOP/s, 4 TB/s;
torch's eigvalsh loops cuSOLVER syevd per matrix with a host sync: 5e11 FLOP/s + 1 ms each), so at 32 x 128 SLQ
wins from n = 257 up. With ``target_error`` the SLQ budget compared is the one the error model needs at
alpha = ``AUTO_PRIOR_ALPHA`` (3): at 0.02, exact on CPU at every n and on CUDA up to n ~ 4200 (LLaMA-1B's
2048 and 7B's 4096 included), SLQ above. The batched
cuSOLVER op (``cusolverDnXsyevBatched``, csrc/spectral_eig_cuda.cu, used by the "cpp" eigvalsh on CUDA) should
lower the CUDA eig_latency; it was compiled for sm_90 but never run here, so its constants are not measured.

Estimator error (measured: benchmarks/results/spectral_error_cpu.md, tests/test_spectral_fast.py): alpha =
1 + 1/m for the mean log-excess m = logsum / k, so an error dm moves alpha by (alpha - 1)^2 dm: absolute, not
relative. Model (``slq_error_model``): RMS |d alpha| ~ ``SLQ_ERR_C`` (alpha - 1)^2 / sqrt(n probes), C = 1.5
(measured per family at 32 x 128, n = 256-2048: C 0.1-2.9, and 5.8-7.8 for rank 3n/4 at n = 1024, whose threshold
sits where ln l is sparse, which the jackknife then carries; the fixed budget's max |d alpha| over 9 families was
0.092 / 0.036 / 0.039 at n = 256 / 1024 / 2048, above 0.02 at every n; on the trained weights of all-MiniLM-L6-v2,
n = 384, C 1.2-2.3 and max 0.041). Plus a bias probes do not remove
(``slq_bias_model``): SLQ reads a smoothed quantile where Eq. 2 reads one eigenvalue, about a local eigenvalue
gap apart: <~ ``SLQ_BIAS_C`` (alpha - 1)^2 / n (3 x 4 / 256 = 0.047 at alpha 3, n = 256). ``report["stderr"]``
is a jackknife estimate over ``groups`` probe groups of each alpha's standard error (8 groups: itself uncertain
by ~30%).

``target_error`` (default None: the fixed budget, as before): each matrix's bound is TARGET_Z (3) x max(jackknife,
model RMS) + bias + a steps term (``slq_error_bound``). The steps term is |alpha from all ``steps`` Lanczos steps -
alpha from the first steps/2| on the same probes (the leading half of each tridiagonal: a Gauss rule with half the
nodes), an estimate of the error the quadrature's resolution leaves, which probes do not remove: on MiniLM's trained
384 x 384 weights (probes 512) the alpha error is 0.05-0.06 at 16 steps and 0.016 at 24, and within 0.005 of its
128-step value from 32 steps on; with 128 steps the term is small. Without it, the bound passed matrices with errors
of 0.024-0.049 at 16-32 steps (tests/test_spectral_trained.py). SLQ matrices above the target get the probe count
the model says they need (powers of two of ``probes``, new probes pooled with the old; the Gram is formed again per
round) while SLQ at that total still costs less than exact (or up to ``max_probes``); the rest, and SLQ matrices
whose status is not ok, go to exact (``target_fallback="exact"``) or keep their SLQ alpha with ``target_met`` False
("flag"). Exact matrices are within EXACT_REL_TOL x alpha. The report carries the bound, the verdict and the final
probes per matrix. Rank-deficient matrices (``rank_deficient="nonzero"``): SLQ estimates the numerical rank r from
the quadrature mass at the zero floor (about n (1 - mass)), then reads the threshold of Eq. 2 on the nonzero part
with a second Hill reduction; their error model and bound use r for n (the tail is r / 2 eigenvalues, so the gap at
the threshold is ~ 1 / r: at n = 200, r = 60, alpha 2.5, 128 probes, RMS 0.02 relative, worst of 600 draws 0.10).

Why a few launches and not one fused Gram -> Lanczos -> Hill kernel (analysis; no GPU was available to
measure): every Lanczos step needs the whole previous vector, i.e. a grid-wide dependency per step. A fused
kernel would give each layer to one CTA, which must stream its Gram (16 MiB fp32 at n = 2048) from HBM
every step: LLaMA-1B is 169 Grams x 16 MiB x 128 steps = 360 GB, >= 84 ms at 4.3 TB/s, with 169 CTAs on
132 SMs (poor balance), and no tensor cores for the 32-probe block. The batched path moves the same bytes
but at full-machine GEMM efficiency and costs ~6 launches per step (~800 launches, a few ms). Launch
count per update: chunks x (1 Gram + ~6 x steps) + 1 tridiagonal + 1 Hill, independent of the layer count.
At that traffic, meeting 50 ms at 1B needs fewer steps (e.g. 64 x 64 probes x steps: same error scaling
in probes, half the Gram reads) or a bf16 Gram for the matvecs; ``--probes/--steps`` in the benchmark.
"""
from __future__ import annotations

import math
from collections import defaultdict
from contextlib import contextmanager
from typing import Iterator, NamedTuple, Sequence

import torch

from .. import dispatch
from .hill import (
    DEFAULT_ALPHA_MAX,
    METHODS,
    OK_STATUSES,
    STATUS_NON_FINITE,
    STATUS_OK,
    STATUS_OK_RANK_DEFICIENT,
    STATUS_RANK_DEFICIENT,
    STATUS_TOO_FEW,
    STATUS_ZERO,
    HillResult,
    as_matrix,
    check_args,
    compute_dtype,
    decide,
    hill_params,
    hill_row,
    noise_level,
    prescale,
    scaled,
    zero_floor,
)
from .lanczos import rademacher_probes

__all__ = ["hill_alpha_fast", "choose_method", "hill_params", "EXACT_REL_TOL", "DeviceCost", "COSTS", "exact_cost",
           "lanczos_cost", "slq_error_model", "slq_bias_model", "slq_error_bound", "probes_needed"]

DEFAULT_PROBES = 32
DEFAULT_STEPS = 128
DEFAULT_GROUPS = 8  # jackknife probe groups
AUTO_LANCZOS_MIN_N = 1024  # no longer used by "auto" (cost model, ``choose_method``); kept for importers
EXACT_REL_TOL = 1e-5  # float32 alphas farther than this (by their bound) from float64 Eq. 2 are recomputed
FP32_ERR_C = 64.0  # error-bound constant of float32 Gram + float32 eigvalsh: 2.3x the largest ratio measured (28)
GRAM32_ERR_C = 24.0  # ... of float32 Gram + float64 eigvalsh: 1.9x the largest measured (12.5)
U32 = 2.0**-24
# SLQ error model (module docstring): RMS |d alpha| ~ SLQ_ERR_C (alpha - 1)^2 / sqrt(n probes)
SLQ_ERR_C = 1.5
# ... plus a bias that probes do not remove: SLQ reads a smoothed quantile, Eq. 2 one eigenvalue, which differ
# by up to about a gap between neighbouring eigenvalues at the threshold: |d alpha| <~ SLQ_BIAS_C (alpha - 1)^2 / n
SLQ_BIAS_C = 3.0
TARGET_Z = 3.0  # target_error is met when TARGET_Z x max(jackknife stderr, model RMS) + bias <= target_error
AUTO_PRIOR_ALPHA = 3.0  # alpha assumed by "auto" to size the Lanczos budget a target needs (MP at aspect 2.7)
TARGET_FALLBACKS = ("exact", "flag")


# ---------------------------------------------------------------------------------------------- cost model
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
    # H200, assumed (no GPU was available to measure): fp32 batched matvec + reorthogonalisation 1e13 FLOP/s;
    # torch.linalg.eigvalsh loops cuSOLVER syevd per matrix: ~5e11 FLOP/s on 4/3 n^3 plus ~1 ms launches + sync
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


def _op(name: str, backend: str, device: torch.device):
    """Dispatch ``name``; an explicit backend that this op does not implement (e.g. no Triton Lanczos)
    falls back to "auto" for that op only, so backend="triton" means "Triton wherever it exists"."""
    if backend != "auto" and not dispatch.has_impl(name, backend):
        backend = "auto"
    return dispatch.get_op(name, backend, device)


@contextmanager
def _no_tf32() -> Iterator[None]:
    """Force true fp32 matmuls (a global allow_tf32 would perturb the Gram matvecs by ~1e-3 of lmax,
    enough to move the median eigenvalue of a heavy-tailed spectrum)."""
    prev = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = prev


class _Opts:
    """Estimator options shared by the passes of one call."""

    def __init__(self, variant: str, min_eigs: int, rank_deficient: str, alpha_max: float | None):
        self.variant, self.min_eigs, self.rank_deficient, self.alpha_max = variant, min_eigs, rank_deficient, alpha_max


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
    """PL_Alpha_Hill of every matrix (float64 CPU alphas + status strings, as ``hill.hill_alpha``).

    method: "exact" (batched eigvalsh of the Grams), "lanczos" (SLQ) or "auto" (``choose_method``).
    backend: "auto" | "triton" | "cpp" | "torch" for every op (Gram, Hill reduction, ...).
    dtype: compute dtype. Default for exact: float32 with the verified error bound and float64 where it fails
        (module docstring); for lanczos: float64 on CPU, float32 on GPU (the Triton Gram is fp32-accumulated).
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
    opts = _Opts(variant, min_eigs, rank_deficient, alpha_max)
    mats = [as_matrix(w.detach()) for w in matrices]
    nmat = len(mats)
    alpha = torch.full((nmat,), float("nan"), dtype=torch.float64)
    stderr = torch.zeros(nmat, dtype=torch.float64)
    status = [STATUS_TOO_FEW] * nmat
    chosen = [""] * nmat
    exps = [0] * nmat
    ranks: dict[int, int] = {}  # SLQ's numerical rank of rank-deficient matrices: their error model's n

    groups_of: dict[tuple, list[int]] = defaultdict(list)
    for i, w in enumerate(mats):
        n = min(w.shape)
        if n < max(2, min_eigs):
            continue
        chosen[i] = method if method != "auto" else choose_method(n, w.device, steps, probes, target_error, costs)
        groups_of[(chosen[i], n, w.device)].append(i)
    lz = [i for (m, _, _), idx in groups_of.items() if m == "lanczos" for i in idx]
    for i, e in zip(lz, prescale([mats[i] for i in lz])):  # the exact path reads max|W| inside its Gram op
        if isinstance(e, str):
            status[i] = e
        else:
            exps[i] = e

    cuda_dev = next((w.device for w in mats if w.device.type == "cuda"), None)
    if cuda_dev is not None and report is not None:
        torch.cuda.synchronize(cuda_dev)
        base_mem = torch.cuda.memory_allocated(cuda_dev)
        torch.cuda.reset_peak_memory_stats(cuda_dev)

    stats = {"peak": 0, "chunks": 0, "rerun": [], "tier2": []}
    node_rows: dict[torch.device, list[_NodeRow]] = defaultdict(list)
    steps_err = None if target_error is None else torch.zeros(nmat, dtype=torch.float64)
    gen_cache: dict = {}
    for (m, n, device), idx in groups_of.items():
        budget = memory_budget if memory_budget is not None else default_budget(device)
        if m == "exact":
            edt = dtype if target_error is None or dtype == torch.float64 else None
            _run_exact(mats, idx, n, device, edt, backend, budget, opts, alpha, status, stats)
        else:
            idx = [i for i in idx if status[i] == STATUS_TOO_FEW]  # not settled by prescale
            if idx:
                _run_lanczos(mats, exps, idx, n, device, dtype, backend, budget, probes, steps, groups, seed, tf32,
                             gen_cache, node_rows, status, stats, half=steps_err is not None)
    for device, rows in node_rows.items():
        _finish_lanczos(rows, device, backend, groups, opts, alpha, stderr, status, ranks, steps_err)
    tgt = None
    if target_error is not None:
        tgt = _Target(target_error, max_probes, target_fallback, nmat, costs, steps_err)
        tgt.fixed = (alpha.clone(), stderr.clone(), list(status))  # the fixed budget's answer, before refinement
        for device, rows in node_rows.items():
            _refine(tgt, rows, device, mats, exps, dtype, backend, memory_budget, probes, steps, groups, seed, tf32,
                    gen_cache, opts, alpha, stderr, status, chosen, stats, ranks)
        for i in range(nmat):
            if chosen[i] != "lanczos":  # chosen, or handed over by _refine
                tgt.steps_err[i] = 0.0
                if status[i] in OK_STATUSES:  # exact: within EXACT_REL_TOL of float64
                    tgt.err[i] = EXACT_REL_TOL * float(alpha[i])

    if report is not None:
        measured = None
        if cuda_dev is not None:
            torch.cuda.synchronize(cuda_dev)
            measured = torch.cuda.max_memory_allocated(cuda_dev) - base_mem
        report.update(stderr=stderr, method=chosen, chunks=stats["chunks"], peak_extra_bytes_est=stats["peak"],
                      peak_extra_bytes=measured, fp64_rerun=sorted(stats["rerun"]), fp64_eig=sorted(stats["tier2"]))
        if tgt is not None:
            report.update(error_est=tgt.err, target_met=[bool(x <= target_error) for x in tgt.err.tolist()],
                          steps_error=tgt.steps_err,
                          probes=tgt.probes, to_exact=sorted(tgt.to_exact), alpha_fixed=tgt.fixed[0],
                          stderr_fixed=tgt.fixed[1], status_fixed=tgt.fixed[2])
    return HillResult(alpha, status)


# ---------------------------------------------------------------------------------------------- exact
def _chunked(idx: list[int], per: int, budget: int, stats: dict) -> Iterator[list[int]]:
    size = max(1, budget // per)
    for c0 in range(0, len(idx), size):
        chunk = idx[c0 : c0 + size]
        stats["chunks"] += 1
        stats["peak"] = max(stats["peak"], per * len(chunk))
        yield chunk


def _exact_grams(mats: list[torch.Tensor], n: int, cdt: torch.dtype, backend: str,
                 device: torch.device) -> tuple[torch.Tensor, list]:
    """(B, n, n) Grams in ``cdt`` (true fp32 products, never TF32; a zero Gram for a zero matrix), and the
    prescale exponents (``STATUS_NON_FINITE`` for inf/NaN input)."""
    gbackend, gram_fn = _op("gram", backend, device)
    exps = prescale(mats)  # one grouped Gram launch for all
    good = [i for i, e in enumerate(exps) if isinstance(e, int)]
    xs = [scaled(mats[i], exps[i], cdt) if i in good else mats[i].new_zeros(mats[i].shape, dtype=cdt)
          for i in range(len(mats))]
    if gbackend == "triton" and cdt == torch.float32:
        flat, _ = gram_fn(xs, precision="ieee")
    else:
        from .gram_torch import gram_batch_torch

        flat, _ = gram_batch_torch(xs, dtype=cdt, precision="ieee")
    return flat.view(len(mats), n, n), exps


def _exact_eigs(mats: list[torch.Tensor], n: int, cdt: torch.dtype, backend: str, device: torch.device,
                keep: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(B, n) ascending Gram eigenvalues computed in ``cdt`` (NaN row: inf/NaN input; zero row: zero input), and
    the Grams when ``keep``."""
    gbackend, _ = _op("gram", backend, device)
    if device.type == "cpu" and gbackend != "triton":
        _, fn = _op("gram_eigvalsh", backend, device)
        return fn(mats, cdt, keep)
    g, exps = _exact_grams(mats, n, cdt, backend, device)  # GPU (or the Triton interpreter): batched eigvalsh
    _, eig_fn = _op("eigvalsh", backend, device)
    with _no_tf32():
        e = eig_fn(g, cdt)
    for i, x in enumerate(exps):
        if x == STATUS_NON_FINITE:
            e[i] = float("nan")
    return e, (g if keep else None)


def _run_exact(mats, idx, n, device, dtype, backend, budget, opts, alpha, status, stats) -> None:
    """Exact eigenvalues of one (n, device) group. dtype=None: tier 1 = float32 Gram + float32 eigvalsh checked
    with FP32_ERR_C; tier 2 = float64 eigvalsh of tier 1's float32 Gram checked with GRAM32_ERR_C; tier 3 =
    float64 throughout (decides the rest, and fp64 inputs). A given dtype: one unchecked pass in it."""
    if dtype is not None:
        _exact_pass(mats, idx, n, device, dtype, None, backend, budget, opts, alpha, status, stats)
        return
    low = [i for i in idx if mats[i].dtype != torch.float64]
    high = [i for i in idx if mats[i].dtype == torch.float64]
    rest = _exact_pass(mats, low, n, device, torch.float32, FP32_ERR_C, backend, budget, opts, alpha, status, stats)
    stats["rerun"] += rest
    _exact_pass(mats, sorted(high + rest), n, device, torch.float64, None, backend, budget, opts, alpha, status,
                stats)


def fp32_eigvalsh_trusted(device: torch.device) -> bool:
    """Whether tier 1 (float32 eigvalsh checked with FP32_ERR_C) may settle matrices on ``device``: LAPACK's yes
    (the constant was measured there), cuSOLVER's no (see ``_exact_pass``)."""
    return device.type != "cuda"


def _exact_pass(mats, todo, n, device, cdt, err_c, backend, budget, opts, alpha, status, stats) -> list[int]:
    """One pass over ``todo``; with err_c (float32) returns the indices its checks could not settle.

    On CUDA the checked float32 pass starts at tier 2: FP32_ERR_C was calibrated on LAPACK's float32 eigvalsh, and
    cuSOLVER's float32 eigenvalues broke it on an H200 (LLaMA-1B shapes: |d alpha| up to 3.7e-4 where the bound
    promised 1e-5; a heavy-tailed 4096 x 4096 matrix: 2.08 for 1.74). The float32 Gram is kept (its rounding
    does not depend on the solver); its eigenvalues come from float64 eigvalsh, checked with GRAM32_ERR_C."""
    if not todo:
        return []
    per = bytes_per_matrix(n, "exact", 0, 0, 0, torch.finfo(cdt).bits // 8)
    left: list[int] = []
    skip_tier1 = err_c is not None and not fp32_eigvalsh_trusted(device)
    for chunk in _chunked(todo, per, budget, stats):
        if skip_tier1:
            e = None
            g, exps = _exact_grams([mats[i] for i in chunk], n, cdt, backend, device)
            rest = []
            for i, x in zip(chunk, exps):
                if x == STATUS_NON_FINITE:
                    status[i], alpha[i] = STATUS_NON_FINITE, float("nan")
                else:
                    rest.append(i)
        else:
            e, g = _exact_eigs([mats[i] for i in chunk], n, cdt, backend, device, keep=err_c is not None)
            rest = _decide_exact(chunk, e, n, cdt, err_c, mats, backend, device, opts, alpha, status)
        if rest:  # tier 2: float64 eigenvalues of the float32 Grams
            rows = [chunk.index(i) for i in rest]
            _, eig_fn = _op("eigvalsh", backend, device)
            with _no_tf32():
                e2 = eig_fn(g[rows], torch.float64)
            more = _decide_exact(rest, e2, n, torch.float64, GRAM32_ERR_C, mats, backend, device, opts, alpha,
                                 status)
            stats["tier2"] += [i for i in rest if i not in set(more)]
            left += more
        del e, g
    return left


def _decide_exact(chunk, e, n, cdt, err_c, mats, backend, device, opts, alpha, status) -> list[int]:
    """Statuses and alphas of ``chunk`` from its eigenvalue rows ``e``. With ``err_c`` (a checked float32 step)
    a row is settled only if its alpha is "ok" with the error bound err_c * u32 * (a-1)^2/a * mean(l)/thr <=
    EXACT_REL_TOL and clear of every status boundary; the other indices are returned."""
    thr_idx, top, num, _ = hill_params(n, opts.variant)
    _, fn = _op("hill_eigs", backend, device)
    red = fn(e, thr_idx, top).to("cpu", torch.float64)  # (B, 3): thr, lmax, logsum
    mean = e.mean(1).to("cpu", torch.float64)
    rest = []
    for r, i in enumerate(chunk):
        thr, lmax, logsum = red[r].tolist()
        mu = float(mean[r])
        if not all(math.isfinite(x) for x in (thr, lmax, mu)):  # inf/NaN input, or a failed eigensolver
            status[i], alpha[i] = STATUS_NON_FINITE, float("nan")
            continue
        if lmax <= 0:
            status[i], alpha[i] = STATUS_ZERO, float("nan")
            continue
        nu = noise_level(n, mats[i].dtype, cdt)
        if err_c is not None:
            nu64 = noise_level(n, mats[i].dtype, torch.float64)
            floor = max(zero_floor(n, lmax, mu, nu, cdt), zero_floor(n, lmax, mu, nu64, torch.float64),
                        64 * U32 * mu)  # the float32 Gram's own rounding
            a = 1.0 + num / logsum if 0 < logsum < math.inf else math.inf
            bound = err_c * U32 * (a - 1.0) ** 2 / a * mu / thr if thr > 0 else math.inf
            if (thr > 2.0 * floor and logsum > 2.0 * num * nu64 and bound <= EXACT_REL_TOL
                    and (opts.alpha_max is None or a * (1.0 + 2.0 * EXACT_REL_TOL) <= opts.alpha_max)):
                alpha[i], status[i] = a, STATUS_OK
            else:
                rest.append(i)
            continue
        if not thr > zero_floor(n, lmax, mu, nu, cdt):  # rank-deficient: the reference rule on the whole row
            a, st = hill_row(e[r].to("cpu"), variant=opts.variant, min_eigs=opts.min_eigs, input_dtype=mats[i].dtype,
                             rank_deficient=opts.rank_deficient, alpha_max=opts.alpha_max)
        else:
            a, st = decide(num, logsum, nu, opts.alpha_max)
        alpha[i], status[i] = a, st
    return rest


# ---------------------------------------------------------------------------------------------- lanczos
class _NodeRow(NamedTuple):
    """One matrix's SLQ quadrature, pooled over probes: Ritz nodes and weights (P, s), and with ``half`` those of
    the leading s/2 x s/2 tridiagonals (the steps term of the target mode)."""

    index: int
    n: int
    nodes: torch.Tensor
    weights: torch.Tensor
    lmax: torch.Tensor
    mean: float
    nu: float
    half_nodes: torch.Tensor | None = None
    half_weights: torch.Tensor | None = None

    def pooled(self, more: "_NodeRow") -> "_NodeRow":
        """This row with ``more``'s probes added (same matrix, later draws)."""
        half = (None, None) if self.half_nodes is None else (
            torch.cat([self.half_nodes, more.half_nodes]), torch.cat([self.half_weights, more.half_weights]))
        return self._replace(nodes=torch.cat([self.nodes, more.nodes]), weights=torch.cat([self.weights, more.weights]),
                             lmax=torch.maximum(self.lmax, more.lmax), half_nodes=half[0], half_weights=half[1])


TF32_EXACT_DTYPES = (torch.bfloat16, torch.float16)  # at most 10 mantissa bits: TF32 products of them are exact


def gram_precision(tf32: bool | None, mats: list[torch.Tensor], device: torch.device) -> str:
    """The SLQ Gram's matmul precision: "tf32" on CUDA when asked (tf32=True), or by default (None) when every
    matrix is bf16/fp16 (their values are TF32 values, so the products are exact and only the float32 accumulation
    rounds); else "ieee". A TF32 Gram of float32 weights moved the alpha of a heavy-tailed 4096 x 4096 matrix from
    1.74 to 2.09 on an H200."""
    if device.type != "cuda" or tf32 is False:
        return "ieee"
    if tf32:
        return "tf32"
    return "tf32" if all(m.dtype in TF32_EXACT_DTYPES for m in mats) else "ieee"


def _run_lanczos(mats, exps, idx, n, device, dtype, backend, budget, probes, steps, groups, seed, tf32, gen_cache,
                 node_rows, status, stats, half: bool = False) -> None:
    """SLQ Gauss nodes of one (n, device) group, collected for the one final Hill reduction; with ``half`` also
    the nodes of the first steps/2 Lanczos steps (the same run's leading tridiagonals, no extra matvec)."""
    cdt = dtype or compute_dtype(device)
    gbackend, gram_fn = _op("gram", backend, device)
    if gbackend == "triton":
        cdt = torch.float32
    per = bytes_per_matrix(n, "lanczos", probes, steps, groups, torch.finfo(cdt).bits // 8)
    for chunk in _chunked(idx, per, budget, stats):
        prec = gram_precision(tf32, [mats[i] for i in chunk], device)
        xs = [scaled(mats[i], exps[i], cdt) for i in chunk]
        if gbackend == "torch":
            flat, _ = gram_fn(xs, dtype=cdt, precision=prec)
        else:
            flat, _ = gram_fn(xs, precision=prec)
        del xs
        g = flat.view(len(chunk), n, n)
        diag = g.diagonal(dim1=-2, dim2=-1)
        finite = torch.isfinite(diag).all(-1)
        mean = (diag.sum(-1) / n).to("cpu", torch.float64)
        if not bool(finite.all()):  # cannot happen after prescale; kept as a guard
            g[~finite] = torch.eye(n, dtype=g.dtype, device=device)
        for j in torch.nonzero(~finite).flatten().tolist():
            status[chunk[j]] = STATUS_NON_FINITE
        keep = [j for j in range(len(chunk)) if status[chunk[j]] != STATUS_NON_FINITE]
        if "probes" not in gen_cache:  # probes are drawn on the host (rademacher_probes): the same on every device
            gen_cache["probes"] = torch.Generator(device="cpu").manual_seed(seed)
        s = min(steps, n)
        v0 = rademacher_probes(len(chunk), probes, n, device=device, dtype=g.dtype, generator=gen_cache["probes"])
        _, lanczos_fn = _op("lanczos", backend, device)
        _, tri_fn = _op("tridiag_eig", backend, device)
        with _no_tf32():
            a, b = lanczos_fn(g, v0, s)
        nodes, weights = tri_fn(a, b)
        hn = hw = None
        if half:
            sh = max(2, s // 2)
            hn, hw = tri_fn(a[..., :sh].contiguous(), b[..., : sh - 1].contiguous())
        lmax = nodes.amax((-1, -2)).clamp_min(0)
        for j in keep:
            i = chunk[j]
            nu = noise_level(n, mats[i].dtype, g.dtype)
            node_rows[device].append(_NodeRow(i, n, nodes[j], weights[j], lmax[j], float(mean[j]), nu,
                                              None if hn is None else hn[j], None if hw is None else hw[j]))
        del g, flat


def _finish_lanczos(rows, device, backend, groups, opts, alpha, stderr, status, ranks, steps_err=None) -> None:
    """Hill reductions of the pooled Ritz nodes; a rank-deficient matrix's numerical rank goes to ``ranks``. With
    ``steps_err`` (target mode) also |alpha - alpha of the half-steps nodes| per matrix (inf where their statuses
    differ)."""
    full = _hill_of_nodes(rows, [(r.nodes, r.weights) for r in rows], device, backend, groups, opts)
    for r, row in enumerate(rows):
        i = row.index
        a, st, rank, jk = full[r]
        alpha[i], status[i], stderr[i] = a, st, jk
        if rank is not None:
            ranks[i] = rank
    if steps_err is None:
        return
    half = _hill_of_nodes(rows, [(r.half_nodes, r.half_weights) for r in rows], device, backend, groups, opts)
    for r, row in enumerate(rows):
        (a, st, _, _), (ah, sth, _, _) = full[r], half[r]
        steps_err[row.index] = abs(a - ah) if st == sth and st in OK_STATUSES else float("inf")


def _hill_of_nodes(rows, quads, device, backend, groups, opts) -> list[tuple[float, str, int | None, float]]:
    """(alpha, status, numerical rank of a rank-deficient matrix or None, jackknife stderr) per row, from the
    quadratures ``quads`` ((nodes, weights) (P, s) per row)."""
    ns = [r.n for r in rows]
    smax = max(q[0].shape[-1] for q in quads)

    def pad(x: torch.Tensor) -> torch.Tensor:  # different n may give different step counts: zero-weight pad
        return torch.nn.functional.pad(x, (0, smax - x.shape[-1]))

    nodes = torch.stack([pad(q[0]) for q in quads])
    weights = torch.stack([pad(q[1]) for q in quads])
    cdt = nodes.dtype
    lmax_c = torch.stack([r.lmax for r in rows]).to("cpu", torch.float64)
    floors = [
        max(zero_floor(n, float(lm), r.mean, r.nu, cdt), torch.finfo(cdt).tiny) for n, lm, r in zip(ns, lmax_c, rows)
    ]
    floor = torch.tensor(floors, dtype=cdt, device=device)
    n_t = torch.tensor(ns, dtype=cdt, device=device)
    _, fn = _op("hill_nodes", backend, device)

    def reduce(sel: list[int], levels: list[float]):
        q = torch.tensor(levels, dtype=cdt, device=device)
        ln_thr, logsum, at_floor = fn(nodes[sel], weights[sel], n_t[sel], q, floor[sel], groups)
        return ln_thr.to("cpu", torch.float64), logsum.to("cpu", torch.float64), at_floor.to("cpu", torch.float64)

    rows_all = list(range(len(rows)))
    out: list[list] = [[float("nan"), STATUS_TOO_FEW, None, float("nan")] for _ in rows_all]
    params = [hill_params(n, opts.variant) for n in ns]
    ln_thr, logsum, at_floor = reduce(rows_all, [p[3] for p in params])
    num = [float(p[2]) for p in params]
    final_ls = logsum.clone()
    deficient: list[int] = []
    for r in rows_all:
        if not float(lmax_c[r]) > 0:
            out[r][1] = STATUS_ZERO
            continue
        thr = math.exp(float(ln_thr[r, 0]))
        if thr <= floors[r] * (1 + 1e-6) or float(at_floor[r]) >= params[r][3]:
            deficient.append(r)
            continue
        out[r][0], out[r][1] = decide(num[r], float(logsum[r, 0]), rows[r].nu, opts.alpha_max)
    if deficient and opts.rank_deficient == "nonzero":
        rank_of = {r: int(round(ns[r] * (1.0 - float(at_floor[r])))) for r in deficient}
        redo = [r for r in deficient if rank_of[r] >= max(2, opts.min_eigs)]
        if redo:
            levels = []
            for r in redo:
                n, rank = ns[r], rank_of[r]
                t, _, k, _ = hill_params(rank, opts.variant)
                num[r] = float(k)
                levels.append((n - rank + t + 0.5) / n)  # Eq. 2's threshold of the nonzero part, as a CDF level
            _, ls2, _ = reduce(redo, levels)
            for j, r in enumerate(redo):
                final_ls[r] = ls2[j]
                out[r][2] = rank_of[r]
                out[r][0], out[r][1] = decide(num[r], float(ls2[j, 0]), rows[r].nu, opts.alpha_max,
                                              STATUS_OK_RANK_DEFICIENT)
        for r in deficient:
            if r not in set(redo):
                out[r][0], out[r][1] = float("nan"), STATUS_RANK_DEFICIENT
    else:
        for r in deficient:
            out[r][0], out[r][1] = float("nan"), STATUS_RANK_DEFICIENT
    num_t = torch.tensor(num, dtype=torch.float64).view(-1, 1)
    reps = 1.0 + num_t / final_ls[:, 1:]
    jk = ((groups - 1) / groups * (reps - reps.mean(1, keepdim=True)).square().sum(1)).sqrt()
    for r in rows_all:
        out[r][3] = float(jk[r]) if out[r][1] in (STATUS_OK, STATUS_OK_RANK_DEFICIENT) else float("nan")
    return [tuple(o) for o in out]


# ---------------------------------------------------------------------------------------------- target_error
class _Target:
    """State of the target_error refinement: per-matrix error estimates and probe counts."""

    def __init__(self, target: float, max_probes: int | None, fallback: str, nmat: int, costs: DeviceCost | None,
                 steps_err: torch.Tensor):
        self.target, self.max_probes, self.fallback, self.costs = target, max_probes, fallback, costs
        self.steps_err = steps_err  # (nmat,) the half-steps term, updated by every Hill reduction of a refinement
        self.err = torch.zeros(nmat, dtype=torch.float64)
        self.probes = [0] * nmat
        self.to_exact: list[int] = []


def _refine(tgt, rows, device, mats, exps, dtype, backend, memory_budget, probes, steps, groups, seed, tf32, gen_cache,
            opts, alpha, stderr, status, chosen, stats, ranks) -> None:
    """Give the SLQ matrices of one device more probes until TARGET_Z x max(jackknife, model) <= target; a matrix
    whose extra SLQ would cost more than exact (or pass max_probes), or whose status is not ok, goes to exact
    (or is flagged). Probes of later rounds are new draws of the same generator, pooled with the earlier ones;
    each round is one SLQ run per (n, extra probes) and one Hill reduction per probe count."""
    cur = {r.index: r for r in rows}
    pc = {i: probes for i in cur}  # probes pooled so far, per matrix
    budget = memory_budget if memory_budget is not None else default_budget(device)
    todo = list(cur)
    while todo:
        grow: dict[tuple[int, int], list[int]] = defaultdict(list)  # (n, extra probes) -> indices
        hand: dict[int, list[int]] = defaultdict(list)
        for i in todo:
            n, p = cur[i][1], pc[i]
            tgt.probes[i] = p
            if status[i] not in OK_STATUSES:
                tgt.err[i] = float("inf")
                hand[n].append(i)
                continue
            a, n_eff = float(alpha[i]), ranks.get(i, n)  # a rank-deficient tail is read from its rank's eigenvalues
            fixed_part = slq_bias_model(a, n_eff) + float(tgt.steps_err[i])  # what more probes do not remove
            tgt.err[i] = slq_error_bound(a, n_eff, p, float(stderr[i]), float(tgt.steps_err[i]))
            if tgt.err[i] <= tgt.target:
                continue
            room = tgt.target - fixed_part  # what the statistical part may use; <= 0: probes cannot help
            stat = tgt.err[i] - fixed_part
            want = p * 2 ** max(1, math.ceil(math.log2((stat / room) ** 2))) if room > 0 else 0
            if room <= 0:
                ok = False
            elif tgt.max_probes is not None:
                want = min(want, tgt.max_probes // groups * groups)
                ok = want > p
            else:
                ok = lanczos_cost(n, want, steps, device, tgt.costs) < exact_cost(n, device, tgt.costs)  # all rounds
            if ok:
                grow[(n, want - p)].append(i)
            else:
                hand[n].append(i)
        if tgt.fallback == "exact":
            edt = dtype if dtype == torch.float64 else None
            for n, idx in hand.items():
                _run_exact(mats, idx, n, device, edt, backend, budget, opts, alpha, status, stats)
                for i in idx:
                    chosen[i], stderr[i], tgt.probes[i] = "exact", 0.0, 0
                    tgt.err[i] = EXACT_REL_TOL * float(alpha[i]) if status[i] in OK_STATUSES else 0.0
                    tgt.to_exact.append(i)
        more: dict[torch.device, list] = defaultdict(list)
        for (n, extra), idx in grow.items():
            _run_lanczos(mats, exps, idx, n, device, dtype, backend, budget, extra, steps, groups, seed, tf32,
                         gen_cache, more, status, stats, half=True)
        for r in more[device]:  # pool the new probes with the old ones
            cur[r.index] = cur[r.index].pooled(r)
            pc[r.index] += r.nodes.shape[0]
        todo = [i for idx in grow.values() for i in idx]
        by_p: dict[int, list[int]] = defaultdict(list)
        for i in todo:
            by_p[pc[i]].append(i)
        for idx in by_p.values():
            _finish_lanczos([cur[i] for i in idx], device, backend, groups, opts, alpha, stderr, status, ranks,
                            tgt.steps_err)
