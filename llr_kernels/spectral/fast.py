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

``method="auto"`` rule (per matrix): exact on CPU (LAPACK eigendecomposition of n <= 2048 is cheaper
than the 2 * n^2 * probes * steps flops of SLQ there, see benchmarks/results/spectral_overhead_cpu.md)
and for n < ``AUTO_LANCZOS_MIN_N`` (or n <= 2 * steps, where the Krylov space is most of the space);
lanczos on CUDA for n >= ``AUTO_LANCZOS_MIN_N``, where cuSOLVER's eigendecomposition runs one matrix
at a time at O(n^3) each, while SLQ is a few hundred batched GEMMs for the whole model.

Estimator error (paper variant, measured: tests/test_spectral_fast.py and the benchmark): RMS relative
alpha error about ``2 (alpha - 1) / (alpha * sqrt(n * probes))``; the default budget (32 probes x 128
steps, fewer steps when n is small) gives ~1% at n = 2048. ``report["stderr"]`` is a jackknife
estimate over ``groups`` probe groups of each alpha's standard error. Rank-deficient matrices
(``rank_deficient="nonzero"``): SLQ estimates the numerical rank from the quadrature mass at the zero floor
(about n (1 - mass)), then reads the threshold of Eq. 2 on the nonzero part with a second Hill reduction.

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
from typing import Iterator, Sequence

import torch

from .. import dispatch
from .hill import (
    DEFAULT_ALPHA_MAX,
    METHODS,
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

__all__ = ["hill_alpha_fast", "choose_method", "hill_params", "EXACT_REL_TOL"]

DEFAULT_PROBES = 32
DEFAULT_STEPS = 128
DEFAULT_GROUPS = 8  # jackknife probe groups
AUTO_LANCZOS_MIN_N = 1024  # on CUDA; see module docstring
EXACT_REL_TOL = 1e-5  # float32 alphas farther than this (by their bound) from float64 Eq. 2 are recomputed
FP32_ERR_C = 64.0  # error-bound constant of float32 Gram + float32 eigvalsh: 2.3x the largest ratio measured (28)
GRAM32_ERR_C = 24.0  # ... of float32 Gram + float64 eigvalsh: 1.9x the largest measured (12.5)
U32 = 2.0**-24


def choose_method(n: int, device: torch.device, steps: int = DEFAULT_STEPS) -> str:
    """The ``method="auto"`` rule for one n x n Gram on ``device``: "exact" or "lanczos"."""
    if device.type == "cuda" and n >= AUTO_LANCZOS_MIN_N and n > 2 * steps:
        return "lanczos"
    return "exact"


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
) -> HillResult:
    """PL_Alpha_Hill of every matrix (float64 CPU alphas + status strings, as ``hill.hill_alpha``).

    method: "exact" (batched eigvalsh of the Grams), "lanczos" (SLQ) or "auto" (``choose_method``).
    backend: "auto" | "triton" | "cpp" | "torch" for every op (Gram, Hill reduction, ...).
    dtype: compute dtype. Default for exact: float32 with the verified error bound and float64 where it fails
        (module docstring); for lanczos: float64 on CPU, float32 on GPU (the Triton Gram is fp32-accumulated).
    rank_deficient, alpha_max: as ``hill.hill_alpha``.
    probes, steps, groups, seed: SLQ budget (probes must be a multiple of groups), reproducible probes.
    tf32: TF32 Gram formation on GPU; default True for lanczos, False for exact.
    memory_budget: bytes of extra memory one chunk may use; default ``default_budget``.
    report: if a dict is given it receives "stderr" (jackknife std. error, 0 for exact), "method" (per
        matrix), "chunks", "peak_extra_bytes_est", on CUDA "peak_extra_bytes" (measured), "fp64_eig" (indices
        settled by float64 eigenvalues of their float32 Gram, tier 2) and "fp64_rerun" (indices recomputed in
        float64 throughout, tier 3).
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
    opts = _Opts(variant, min_eigs, rank_deficient, alpha_max)
    mats = [as_matrix(w.detach()) for w in matrices]
    nmat = len(mats)
    alpha = torch.full((nmat,), float("nan"), dtype=torch.float64)
    stderr = torch.zeros(nmat, dtype=torch.float64)
    status = [STATUS_TOO_FEW] * nmat
    chosen = [""] * nmat
    exps = [0] * nmat

    groups_of: dict[tuple, list[int]] = defaultdict(list)
    for i, w in enumerate(mats):
        n = min(w.shape)
        if n < max(2, min_eigs):
            continue
        chosen[i] = method if method != "auto" else choose_method(n, w.device, steps)
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
    node_rows: dict[torch.device, list] = defaultdict(list)  # device -> [(index, n, nodes, weights, lmax, mean, nu)]
    gen_cache: dict = {}
    for (m, n, device), idx in groups_of.items():
        budget = memory_budget if memory_budget is not None else default_budget(device)
        if m == "exact":
            _run_exact(mats, idx, n, device, dtype, backend, budget, opts, alpha, status, stats)
        else:
            idx = [i for i in idx if status[i] == STATUS_TOO_FEW]  # not settled by prescale
            if idx:
                _run_lanczos(mats, exps, idx, n, device, dtype, backend, budget, probes, steps, groups, seed, tf32,
                             gen_cache, node_rows, status, stats)
    for device, rows in node_rows.items():
        _finish_lanczos(rows, device, backend, groups, opts, alpha, stderr, status)

    if report is not None:
        measured = None
        if cuda_dev is not None:
            torch.cuda.synchronize(cuda_dev)
            measured = torch.cuda.max_memory_allocated(cuda_dev) - base_mem
        report.update(stderr=stderr, method=chosen, chunks=stats["chunks"], peak_extra_bytes_est=stats["peak"],
                      peak_extra_bytes=measured, fp64_rerun=sorted(stats["rerun"]), fp64_eig=sorted(stats["tier2"]))
    return HillResult(alpha, status)


# ---------------------------------------------------------------------------------------------- exact
def _chunked(idx: list[int], per: int, budget: int, stats: dict) -> Iterator[list[int]]:
    size = max(1, budget // per)
    for c0 in range(0, len(idx), size):
        chunk = idx[c0 : c0 + size]
        stats["chunks"] += 1
        stats["peak"] = max(stats["peak"], per * len(chunk))
        yield chunk


def _exact_eigs(mats: list[torch.Tensor], n: int, cdt: torch.dtype, backend: str, device: torch.device,
                keep: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(B, n) ascending Gram eigenvalues computed in ``cdt`` (NaN row: inf/NaN input; zero row: zero input), and
    the Grams when ``keep``."""
    gbackend, gram_fn = _op("gram", backend, device)
    if device.type == "cpu" and gbackend != "triton":
        _, fn = _op("gram_eigvalsh", backend, device)
        return fn(mats, cdt, keep)
    exps = prescale(mats)  # GPU (or the Triton interpreter): one grouped Gram launch, then batched eigvalsh
    good = [i for i, e in enumerate(exps) if isinstance(e, int)]
    xs = [scaled(mats[i], exps[i], cdt) if i in good else mats[i].new_zeros(mats[i].shape, dtype=cdt)
          for i in range(len(mats))]
    if gbackend == "triton" and cdt == torch.float32:
        flat, _ = gram_fn(xs, precision="ieee")
    else:
        from .gram_torch import gram_batch_torch

        flat, _ = gram_batch_torch(xs, dtype=cdt, precision="ieee")
    g = flat.view(len(mats), n, n)
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


def _exact_pass(mats, todo, n, device, cdt, err_c, backend, budget, opts, alpha, status, stats) -> list[int]:
    """One pass over ``todo``; with err_c (float32) returns the indices its checks could not settle."""
    if not todo:
        return []
    per = bytes_per_matrix(n, "exact", 0, 0, 0, torch.finfo(cdt).bits // 8)
    left: list[int] = []
    for chunk in _chunked(todo, per, budget, stats):
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
def _run_lanczos(mats, exps, idx, n, device, dtype, backend, budget, probes, steps, groups, seed, tf32, gen_cache,
                 node_rows, status, stats) -> None:
    """SLQ Gauss nodes of one (n, device) group, collected for the one final Hill reduction."""
    cdt = dtype or compute_dtype(device)
    gbackend, gram_fn = _op("gram", backend, device)
    if gbackend == "triton":
        cdt = torch.float32
    per = bytes_per_matrix(n, "lanczos", probes, steps, groups, torch.finfo(cdt).bits // 8)
    use_tf32 = True if tf32 is None else tf32
    prec = "tf32" if (use_tf32 and device.type == "cuda") else "ieee"
    for chunk in _chunked(idx, per, budget, stats):
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
        if device not in gen_cache:
            gen_cache[device] = torch.Generator(device=device).manual_seed(seed)
        s = min(steps, n)
        v0 = rademacher_probes(len(chunk), probes, n, device=device, dtype=g.dtype, generator=gen_cache[device])
        _, lanczos_fn = _op("lanczos", backend, device)
        _, tri_fn = _op("tridiag_eig", backend, device)
        with _no_tf32():
            a, b = lanczos_fn(g, v0, s)
        nodes, weights = tri_fn(a, b)
        lmax = nodes.amax((-1, -2)).clamp_min(0)
        for j in keep:
            i = chunk[j]
            nu = noise_level(n, mats[i].dtype, g.dtype)
            node_rows[device].append((i, n, nodes[j], weights[j], lmax[j], float(mean[j]), nu))
        del g, flat


def _finish_lanczos(rows, device, backend, groups, opts, alpha, stderr, status) -> None:
    idx = [r[0] for r in rows]
    ns = [r[1] for r in rows]
    smax = max(r[2].shape[-1] for r in rows)

    def pad(x: torch.Tensor) -> torch.Tensor:  # different n may give different step counts: zero-weight pad
        return torch.nn.functional.pad(x, (0, smax - x.shape[-1]))

    nodes = torch.stack([pad(r[2]) for r in rows])
    weights = torch.stack([pad(r[3]) for r in rows])
    cdt = nodes.dtype
    lmax_c = torch.stack([r[4] for r in rows]).to("cpu", torch.float64)
    floors = [
        max(zero_floor(n, float(lm), r[5], r[6], cdt), torch.finfo(cdt).tiny) for n, lm, r in zip(ns, lmax_c, rows)
    ]
    floor = torch.tensor(floors, dtype=cdt, device=device)
    n_t = torch.tensor(ns, dtype=cdt, device=device)
    _, fn = _op("hill_nodes", backend, device)

    def reduce(sel: list[int], levels: list[float]):
        q = torch.tensor(levels, dtype=cdt, device=device)
        ln_thr, logsum, at_floor = fn(nodes[sel], weights[sel], n_t[sel], q, floor[sel], groups)
        return ln_thr.to("cpu", torch.float64), logsum.to("cpu", torch.float64), at_floor.to("cpu", torch.float64)

    rows_all = list(range(len(rows)))
    params = [hill_params(n, opts.variant) for n in ns]
    ln_thr, logsum, at_floor = reduce(rows_all, [p[3] for p in params])
    num = [float(p[2]) for p in params]
    final_ls = logsum.clone()
    deficient: list[int] = []
    for r in rows_all:
        i = idx[r]
        if not float(lmax_c[r]) > 0:
            status[i] = STATUS_ZERO
            continue
        thr = math.exp(float(ln_thr[r, 0]))
        if thr <= floors[r] * (1 + 1e-6) or float(at_floor[r]) >= params[r][3]:
            deficient.append(r)
            continue
        alpha[i], status[i] = decide(num[r], float(logsum[r, 0]), rows[r][6], opts.alpha_max)
    if deficient and opts.rank_deficient == "nonzero":
        ranks = {r: int(round(ns[r] * (1.0 - float(at_floor[r])))) for r in deficient}
        redo = [r for r in deficient if ranks[r] >= max(2, opts.min_eigs)]
        if redo:
            levels = []
            for r in redo:
                n, rank = ns[r], ranks[r]
                t, _, k, _ = hill_params(rank, opts.variant)
                num[r] = float(k)
                levels.append((n - rank + t + 0.5) / n)  # Eq. 2's threshold of the nonzero part, as a CDF level
            _, ls2, _ = reduce(redo, levels)
            for j, r in enumerate(redo):
                final_ls[r] = ls2[j]
                alpha[idx[r]], status[idx[r]] = decide(num[r], float(ls2[j, 0]), rows[r][6], opts.alpha_max,
                                                       STATUS_OK_RANK_DEFICIENT)
        for r in deficient:
            if r not in set(redo):
                alpha[idx[r]], status[idx[r]] = float("nan"), STATUS_RANK_DEFICIENT
    else:
        for r in deficient:
            alpha[idx[r]], status[idx[r]] = float("nan"), STATUS_RANK_DEFICIENT
    num_t = torch.tensor(num, dtype=torch.float64).view(-1, 1)
    reps = 1.0 + num_t / final_ls[:, 1:]
    jk = ((groups - 1) / groups * (reps - reps.mean(1, keepdim=True)).square().sum(1)).sqrt()
    for r, i in enumerate(idx):
        stderr[i] = float(jk[r]) if status[i] in (STATUS_OK, STATUS_OK_RANK_DEFICIENT) else float("nan")
