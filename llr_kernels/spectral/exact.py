"""Batched exact alphas: Gram -> eigvalsh -> Eq. 2, in float32 where a measured error bound allows it.

Three tiers per matrix (``dtype=None``, inputs of at most fp32 precision):
1. float32 Gram + float32 ``eigvalsh``, kept only when Eq. 2 reads "ok", clear of every status boundary, and the
   bound ``FP32_ERR_C * u32 * (alpha - 1)^2 / alpha * mean(l) / thr`` is at most ``EXACT_REL_TOL`` (1e-5);
2. float64 ``eigvalsh`` of that float32 Gram, checked the same way with ``GRAM32_ERR_C``;
3. float64 Gram + float64 ``eigvalsh`` (the reference) for the rest, and for float64 inputs.
So statuses are float64's and every alpha is within 1e-5 of float64 Eq. 2. Why this bound (d alpha / alpha is
about (alpha - 1)^2 / alpha * dthr / thr, and LAPACK's float32 eigenvalue errors scale with mean(l)) and how C was
measured: docs/spectral.md. On CUDA tier 1 is skipped (``fp32_eigvalsh_trusted``): cuSOLVER's float32 eigenvalues
broke the LAPACK-calibrated bound on an H200. CPU: the ``gram_eigvalsh`` op gives each thread whole matrices.
"""
from __future__ import annotations

import math

import torch

from .context import Call, chunked, no_tf32, op
from .cost import EXACT_REL_TOL, bytes_per_matrix
from .reference import hill_row
from .rules import (
    STATUS_NON_FINITE,
    STATUS_OK,
    STATUS_ZERO,
    decide,
    hill_params,
    noise_level,
    prescale,
    scaled,
    zero_floor,
)

FP32_ERR_C = 64.0  # error-bound constant of float32 Gram + float32 eigvalsh: 2.3x the largest ratio measured (28)
GRAM32_ERR_C = 24.0  # ... of float32 Gram + float64 eigvalsh: 1.9x the largest measured (12.5)
U32 = 2.0**-24


def fp32_eigvalsh_trusted(device: torch.device) -> bool:
    """Whether tier 1 (float32 eigvalsh checked with FP32_ERR_C) may settle matrices on ``device``: LAPACK's yes
    (the constant was measured there), cuSOLVER's no (LLaMA-1B shapes on an H200: |d alpha| up to 3.7e-4 where the
    bound promised 1e-5; a heavy-tailed 4096 x 4096 matrix: 2.08 for 1.74)."""
    return device.type != "cuda"


def exact_grams(mats: list[torch.Tensor], n: int, cdt: torch.dtype, backend: str,
                device: torch.device) -> tuple[torch.Tensor, list]:
    """(B, n, n) Grams in ``cdt`` (true fp32 products, never TF32; a zero Gram for a zero or non-finite matrix),
    and the prescale exponents (or statuses)."""
    gbackend, gram_fn = op("gram", backend, device)
    exps = prescale(mats)  # one grouped Gram launch for all
    xs = [scaled(w, e, cdt) if isinstance(e, int) else w.new_zeros(w.shape, dtype=cdt) for w, e in zip(mats, exps)]
    if gbackend == "triton" and cdt == torch.float32:
        flat, _ = gram_fn(xs, precision="ieee")
    else:
        from ..ops.gram.naive import gram_batch_torch

        flat, _ = gram_batch_torch(xs, dtype=cdt, precision="ieee")
    return flat.view(len(mats), n, n), exps


def exact_eigs(mats: list[torch.Tensor], n: int, cdt: torch.dtype, backend: str, device: torch.device,
               keep: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(B, n) ascending Gram eigenvalues computed in ``cdt`` (NaN row: inf/NaN input; zero row: zero input), and
    the Grams when ``keep``."""
    gbackend, _ = op("gram", backend, device)
    if device.type == "cpu" and gbackend != "triton":
        _, fn = op("gram_eigvalsh", backend, device)
        return fn(mats, cdt, keep)
    g, exps = exact_grams(mats, n, cdt, backend, device)  # GPU (or the Triton interpreter): batched eigvalsh
    _, eig_fn = op("eigvalsh", backend, device)
    with no_tf32():
        e = eig_fn(g, cdt)
    for i, x in enumerate(exps):
        if x == STATUS_NON_FINITE:
            e[i] = float("nan")
    return e, (g if keep else None)


def run_exact(call: Call, idx: list[int], n: int, device: torch.device, dtype: torch.dtype | None) -> None:
    """Exact alphas of one (n, device) group into ``call``. dtype=None: the three checked tiers; a given dtype: one
    unchecked pass in it."""
    if dtype is not None:
        _exact_pass(call, idx, n, device, dtype, None)
        return
    low = [i for i in idx if call.mats[i].dtype != torch.float64]
    high = [i for i in idx if call.mats[i].dtype == torch.float64]
    rest = _exact_pass(call, low, n, device, torch.float32, FP32_ERR_C)
    call.stats["rerun"] += rest
    _exact_pass(call, sorted(high + rest), n, device, torch.float64, None)


def _exact_pass(call: Call, todo: list[int], n: int, device: torch.device, cdt: torch.dtype,
                err_c: float | None) -> list[int]:
    """One pass over ``todo``; with err_c (float32) returns the indices its checks could not settle. Where float32
    eigvalsh is not trusted, the float32 Grams go straight to tier 2 (float64 eigenvalues, GRAM32_ERR_C)."""
    if not todo:
        return []
    per = bytes_per_matrix(n, "exact", 0, 0, 0, torch.finfo(cdt).bits // 8)
    left: list[int] = []
    skip_tier1 = err_c is not None and not fp32_eigvalsh_trusted(device)
    for chunk in chunked(todo, per, call.budget(device), call.stats):
        if skip_tier1:
            e = None
            g, exps = exact_grams([call.mats[i] for i in chunk], n, cdt, call.backend, device)
            rest = []
            for i, x in zip(chunk, exps):
                if x == STATUS_NON_FINITE:
                    call.status[i], call.alpha[i] = STATUS_NON_FINITE, float("nan")
                else:
                    rest.append(i)
        else:
            e, g = exact_eigs([call.mats[i] for i in chunk], n, cdt, call.backend, device, keep=err_c is not None)
            rest = _decide(call, chunk, e, n, cdt, err_c, device)
        if rest:  # tier 2: float64 eigenvalues of the float32 Grams
            rows = [chunk.index(i) for i in rest]
            _, eig_fn = op("eigvalsh", call.backend, device)
            with no_tf32():
                e2 = eig_fn(g[rows], torch.float64)
            more = _decide(call, rest, e2, n, torch.float64, GRAM32_ERR_C, device)
            call.stats["tier2"] += [i for i in rest if i not in set(more)]
            left += more
        del e, g
    return left


def _decide(call: Call, chunk: list[int], e: torch.Tensor, n: int, cdt: torch.dtype, err_c: float | None,
            device: torch.device) -> list[int]:
    """Statuses and alphas of ``chunk`` from its eigenvalue rows ``e``. With ``err_c`` (a checked float32 step)
    a row is settled only if its alpha is "ok" with the error bound err_c * u32 * (a-1)^2/a * mean(l)/thr <=
    EXACT_REL_TOL and clear of every status boundary; the other indices are returned."""
    thr_idx, top, num, _ = hill_params(n, call.variant)
    _, fn = op("hill_eigs", call.backend, device)
    red = fn(e, thr_idx, top).to("cpu", torch.float64)  # (B, 3): thr, lmax, logsum
    mean = e.mean(1).to("cpu", torch.float64)
    rest = []
    for r, i in enumerate(chunk):
        thr, lmax, logsum = red[r].tolist()
        mu = float(mean[r])
        if not all(math.isfinite(x) for x in (thr, lmax, mu)):  # inf/NaN input, or a failed eigensolver
            if err_c is not None and bool(torch.isfinite(call.mats[i]).all()):
                rest.append(i)  # float32 eigvalsh failed on a finite matrix (LAPACK: many repeated zero eigenvalues)
                continue
            call.status[i], call.alpha[i] = STATUS_NON_FINITE, float("nan")
            continue
        if lmax <= 0:
            call.status[i], call.alpha[i] = STATUS_ZERO, float("nan")
            continue
        w_dtype = call.mats[i].dtype
        nu = noise_level(n, w_dtype, cdt)
        if err_c is not None:
            nu64 = noise_level(n, w_dtype, torch.float64)
            floor = max(zero_floor(n, lmax, mu, nu, cdt), zero_floor(n, lmax, mu, nu64, torch.float64),
                        64 * U32 * mu)  # the float32 Gram's own rounding
            a = 1.0 + num / logsum if 0 < logsum < math.inf else math.inf
            bound = err_c * U32 * (a - 1.0) ** 2 / a * mu / thr if thr > 0 else math.inf
            if (thr > 2.0 * floor and logsum > 2.0 * num * nu64 and bound <= EXACT_REL_TOL
                    and (call.alpha_max is None or a * (1.0 + 2.0 * EXACT_REL_TOL) <= call.alpha_max)):
                call.alpha[i], call.status[i] = a, STATUS_OK
            else:
                rest.append(i)
            continue
        if not thr > zero_floor(n, lmax, mu, nu, cdt):  # rank-deficient: the reference rule on the whole row
            a, st = hill_row(e[r].to("cpu"), variant=call.variant, min_eigs=call.min_eigs, input_dtype=w_dtype,
                             rank_deficient=call.rank_deficient, alpha_max=call.alpha_max)
        else:
            a, st = decide(num, logsum, nu, call.alpha_max)
        call.alpha[i], call.status[i] = a, st
    return rest
