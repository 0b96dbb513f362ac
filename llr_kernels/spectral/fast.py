"""Fast PL_Alpha_Hill for all layers at once: batched exact and stochastic Lanczos quadrature (SLQ).

Pipeline, per chunk of same-size Grams (n = min dim), chunked so the chunk's extra memory stays under a
budget:  Gram (one grouped launch: ``gram_triton``) -> exact: batched ``eigvalsh``; lanczos: batched SLQ
(``lanczos``: ``steps`` batched matvecs for all layers and probes, then all tridiagonals at once).
After the last chunk, one Hill reduction for every layer (``hill_triton``: from eigenvalues, or from
Gauss nodes). Launch count depends on the number of chunks, ``steps`` and distinct (n, dtype) pairs,
never on the number of layers. Ops are chosen through ``llr_kernels.dispatch``.

``method="auto"`` rule (per matrix): exact on CPU (LAPACK eigendecomposition of n <= 2048 is cheaper
than the 2 * n^2 * probes * steps flops of SLQ there, see benchmarks/results/spectral_overhead_cpu.md)
and for n < ``AUTO_LANCZOS_MIN_N`` (or n <= 2 * steps, where the Krylov space is most of the space);
lanczos on CUDA for n >= ``AUTO_LANCZOS_MIN_N``, where cuSOLVER's eigendecomposition runs one matrix
at a time at O(n^3) each, while SLQ is a few hundred batched GEMMs for the whole model.

Estimator error (paper variant, measured: tests/test_spectral_fast.py and the benchmark): RMS relative
alpha error about ``2 (alpha - 1) / (alpha * sqrt(n * probes))``; the default budget (32 probes x 128
steps, fewer steps when n is small) gives ~1% at n = 2048. ``report["stderr"]`` is a jackknife
estimate over ``groups`` probe groups of each alpha's standard error.

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
    METHODS,
    STATUS_FLAT,
    STATUS_NON_FINITE,
    STATUS_OK,
    STATUS_RANK_DEFICIENT,
    STATUS_TOO_FEW,
    STATUS_ZERO,
    VARIANTS,
    HillResult,
    as_matrix,
    compute_dtype,
)
from .lanczos import rademacher_probes

DEFAULT_PROBES = 32
DEFAULT_STEPS = 128
DEFAULT_GROUPS = 8  # jackknife probe groups
AUTO_LANCZOS_MIN_N = 1024  # on CUDA; see module docstring
FLAT_TOL = 1e-6  # mean log-ratio below this reads as a flat spectrum (SLQ cannot resolve exact ties)


def choose_method(n: int, device: torch.device, steps: int = DEFAULT_STEPS) -> str:
    """The ``method="auto"`` rule for one n x n Gram on ``device``: "exact" or "lanczos"."""
    if device.type == "cuda" and n >= AUTO_LANCZOS_MIN_N and n > 2 * steps:
        return "lanczos"
    return "exact"


def hill_params(n: int, variant: str) -> tuple[int, int, int, float]:
    """(threshold index (0-based), first index of the summed tail, numerator, CDF level of the threshold)."""
    if variant == "paper":
        k = n // 2
        return n - k - 1, n - k, k, (n - k - 0.5) / n
    i = n // 2
    return i, i, n - i, (i + 0.5) / n


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


def hill_alpha_fast(
    matrices: Sequence[torch.Tensor],
    *,
    method: str = "auto",
    variant: str = "paper",
    min_eigs: int = 50,
    dtype: torch.dtype | None = None,
    backend: str = "auto",
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
    dtype: compute dtype of Gram and eigensolver; default float64 on CPU, float32 on GPU (the Triton
        Gram is always fp32-accumulated).
    probes, steps, groups, seed: SLQ budget (probes must be a multiple of groups), reproducible probes.
    tf32: TF32 Gram formation on GPU; default True for lanczos, False for exact.
    memory_budget: bytes of extra memory one chunk may use; default ``default_budget``.
    report: if a dict is given it receives "stderr" (jackknife std. error, 0 for exact), "method" (per
        matrix), "chunks", "peak_extra_bytes_est" and, on CUDA, "peak_extra_bytes" (measured).
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    dispatch.validate_backend(backend)
    if probes < 2 or probes % groups or groups < 2:
        raise ValueError(
            f"probes ({probes}) must be a multiple of groups ({groups}) and both >= 2 (jackknife needs >= 2 groups)"
        )
    if steps < 2:
        raise ValueError(f"steps must be >= 2, got {steps}")
    mats = [as_matrix(w.detach()) for w in matrices]
    nmat = len(mats)
    alpha = torch.full((nmat,), float("nan"), dtype=torch.float64)
    stderr = torch.zeros(nmat, dtype=torch.float64)
    status = [STATUS_TOO_FEW] * nmat
    chosen = [""] * nmat

    groups_of: dict[tuple, list[int]] = defaultdict(list)
    for i, w in enumerate(mats):
        n = min(w.shape)
        if n < max(2, min_eigs):
            continue
        m = method if method != "auto" else choose_method(n, w.device, steps)
        chosen[i] = m
        groups_of[(m, n, w.device)].append(i)

    peak_est = 0
    nchunks = 0
    measured = None
    cuda_dev = next((w.device for w in mats if w.device.type == "cuda"), None)
    if cuda_dev is not None and report is not None:
        torch.cuda.synchronize(cuda_dev)
        base_mem = torch.cuda.memory_allocated(cuda_dev)
        torch.cuda.reset_peak_memory_stats(cuda_dev)

    # per method: collected spectra for the one final Hill launch
    eig_rows: dict[tuple, list] = defaultdict(list)  # (n, device) -> [(index, eigs)]
    node_rows: dict[tuple, list] = defaultdict(list)  # device -> [(index, n, nodes, weights, lmax)]
    gen_cache: dict = {}
    for (m, n, device), idx in groups_of.items():
        cdt = dtype or compute_dtype(device)
        gbackend, gram_fn = _op("gram", backend, device)
        if gbackend == "triton":
            cdt = torch.float32
        elem = torch.finfo(cdt).bits // 8
        per = bytes_per_matrix(n, m, probes, steps, groups, elem)
        budget = memory_budget if memory_budget is not None else default_budget(device)
        size = max(1, budget // per)
        use_tf32 = (m == "lanczos") if tf32 is None else tf32
        prec = "tf32" if (use_tf32 and device.type == "cuda") else "ieee"
        for c0 in range(0, len(idx), size):
            chunk = idx[c0 : c0 + size]
            nchunks += 1
            peak_est = max(peak_est, per * len(chunk))
            chunk_mats = [mats[i] for i in chunk]
            if gbackend == "torch":
                flat, _ = gram_fn(chunk_mats, dtype=cdt, precision=prec)
            else:
                flat, _ = gram_fn(chunk_mats, precision=prec)
            g = flat.view(len(chunk), n, n)
            finite = torch.isfinite(g.diagonal(dim1=-2, dim2=-1)).all(-1)
            if not bool(finite.all()):
                g[~finite] = torch.eye(n, dtype=g.dtype, device=device)
            for j in torch.nonzero(~finite).flatten().tolist():
                status[chunk[j]] = STATUS_NON_FINITE
            keep = [j for j in range(len(chunk)) if status[chunk[j]] != STATUS_NON_FINITE]
            if m == "exact":
                with _no_tf32():
                    e = torch.linalg.eigvalsh(g)
                for j in keep:
                    eig_rows[(n, device)].append((chunk[j], e[j]))
            else:
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
                    node_rows[device].append((chunk[j], n, nodes[j], weights[j], lmax[j]))
            del g, flat

    for (n, device), rows in eig_rows.items():
        _finish_exact(rows, n, device, variant, backend, alpha, status)
    for device, rows in node_rows.items():
        _finish_lanczos(rows, device, variant, backend, groups, alpha, stderr, status)

    if report is not None:
        if cuda_dev is not None:
            torch.cuda.synchronize(cuda_dev)
            measured = torch.cuda.max_memory_allocated(cuda_dev) - base_mem
        report.update(
            stderr=stderr, method=chosen, chunks=nchunks, peak_extra_bytes_est=peak_est, peak_extra_bytes=measured
        )
    return HillResult(alpha, status)


def _set_status(
    out_idx: list[int],
    thr: torch.Tensor,
    lmax: torch.Tensor,
    logsum: torch.Tensor,
    rank_def: torch.Tensor,
    flat_tol: torch.Tensor,
    num: torch.Tensor,
    alpha: torch.Tensor,
    status: list[str],
) -> torch.Tensor:
    """Alpha = 1 + num / logsum with the same NaN guards and status order as ``hill.hill_from_eigenvalues``."""
    a = 1.0 + num / logsum
    for r, i in enumerate(out_idx):
        if not (math.isfinite(float(thr[r])) and math.isfinite(float(lmax[r]))):
            st = STATUS_NON_FINITE
        elif float(lmax[r]) <= 0:
            st = STATUS_ZERO
        elif bool(rank_def[r]):
            st = STATUS_RANK_DEFICIENT
        elif not float(logsum[r]) > float(flat_tol[r]):  # also catches NaN
            st = STATUS_FLAT
        else:
            st = STATUS_OK
        status[i] = st
        alpha[i] = float(a[r]) if st == STATUS_OK else float("nan")
    return a


def _finish_exact(rows, n, device, variant, backend, alpha, status) -> None:
    thr_idx, top, num, _ = hill_params(n, variant)
    idx = [i for i, _ in rows]
    e = torch.stack([x for _, x in rows])
    _, fn = _op("hill_eigs", backend, device)
    red = fn(e, thr_idx, top).to("cpu", torch.float64)  # (B, 3): thr, lmax, logsum
    thr, lmax, logsum = red.unbind(1)
    tol = lmax * n * torch.finfo(e.dtype).eps
    rank_def = thr <= tol
    zeros = torch.zeros_like(thr)
    _set_status(idx, thr, lmax, logsum, rank_def, zeros, torch.full_like(thr, float(num)), alpha, status)


def _finish_lanczos(rows, device, variant, backend, groups, alpha, stderr, status) -> None:
    idx = [r[0] for r in rows]
    ns = [r[1] for r in rows]
    smax = max(r[2].shape[-1] for r in rows)

    def pad(x: torch.Tensor) -> torch.Tensor:  # different n may give different step counts: zero-weight pad
        return torch.nn.functional.pad(x, (0, smax - x.shape[-1]))

    nodes = torch.stack([pad(r[2]) for r in rows])
    weights = torch.stack([pad(r[3]) for r in rows])
    lmax = torch.stack([r[4] for r in rows])
    params = [hill_params(n, variant) for n in ns]
    n_t = torch.tensor(ns, dtype=nodes.dtype, device=device)
    q = torch.tensor([p[3] for p in params], dtype=nodes.dtype, device=device)
    num = torch.tensor([float(p[2]) for p in params], dtype=torch.float64)
    eps = torch.finfo(nodes.dtype).eps
    floor = (lmax * n_t * eps).clamp_min(torch.finfo(nodes.dtype).tiny)
    _, fn = _op("hill_nodes", backend, device)
    ln_thr, logsum, at_floor = fn(nodes, weights, n_t, q, floor, groups)
    ln_thr, logsum = ln_thr.to("cpu", torch.float64), logsum.to("cpu", torch.float64)
    at_floor, q_c = at_floor.to("cpu", torch.float64), q.to("cpu", torch.float64)
    lmax_c = lmax.to("cpu", torch.float64)
    floor_c = floor.to("cpu", torch.float64)
    thr = ln_thr[:, 0].exp()
    rank_def = (thr <= floor_c * (1 + 1e-6)) | (at_floor >= q_c)
    _set_status(idx, thr, lmax_c, logsum[:, 0], rank_def, num * FLAT_TOL, num, alpha, status)
    reps = 1.0 + num.view(-1, 1) / logsum[:, 1:]
    jk = ((groups - 1) / groups * (reps - reps.mean(1, keepdim=True)).square().sum(1)).sqrt()
    for r, i in enumerate(idx):
        stderr[i] = float(jk[r]) if status[i] == STATUS_OK else float("nan")
