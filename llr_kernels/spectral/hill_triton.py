"""The Hill log-ratio reduction (Eq. 2) for every layer in one launch, from eigenvalues or Gauss nodes.

From eigenvalues (exact mode): program b reads row b of ascending eigenvalues and returns the threshold
l[thr_idx], l_max and sum_{j >= top} ln(l_j / thr).
From Gauss nodes (SLQ): program (b, r) holds all of layer b's node cells (probes x steps, each node's
mass spread uniformly in ln l on [u - h, u + h], see ``lanczos.node_cells``), finds the threshold as the
level-q point of the pooled smoothed CDF by bisection in registers, then integrates ln(l / thr) above
it; replicate r = 0 uses all probes, r = g >= 1 leaves probe group g - 1 out (jackknife).
``*_torch`` functions are the references with the same contract.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .hill_torch import hill_eigs_torch  # noqa: F401 - the reference lives beside the kernel
from .lanczos import node_cells


@triton.jit
def _hill_eigs_kernel(e_ptr, out_ptr, n, thr_idx, top, BLOCK: tl.constexpr):
    b = tl.program_id(0)
    row = e_ptr + b.to(tl.int64) * n
    thr = tl.maximum(tl.load(row + thr_idx).to(tl.float32), 0.0)
    lmax = tl.maximum(tl.load(row + n - 1).to(tl.float32), 0.0)
    safe = tl.where(thr > 0, thr, 1.0)
    acc = tl.zeros((BLOCK,), dtype=tl.float32)
    for j0 in range(top, n, BLOCK):
        j = j0 + tl.arange(0, BLOCK)
        x = tl.load(row + j, mask=j < n, other=1.0).to(tl.float32)
        x = tl.maximum(x, 0.0)
        acc += tl.where(j < n, tl.log(tl.maximum(x / safe, 1e-30)), 0.0)  # top-half ratios are >= 1
    tl.store(out_ptr + 3 * b, thr)
    tl.store(out_ptr + 3 * b + 1, lmax)
    tl.store(out_ptr + 3 * b + 2, tl.sum(acc, axis=0))


def hill_eigs_triton(eigs: torch.Tensor, thr_idx: int, top: int) -> torch.Tensor:
    """``hill_eigs_torch`` in one launch for all rows (fp32 accumulation; eigenvalues of fp32 Grams)."""
    e = eigs.contiguous()
    bsz, n = e.shape
    out = torch.empty(bsz, 3, dtype=torch.float32, device=e.device)
    _hill_eigs_kernel[(bsz,)](e, out, n, thr_idx, top, BLOCK=256)
    return out.to(eigs.dtype)


@triton.jit
def _hill_nodes_kernel(
    u_ptr, h_ptr, w_ptr, ln_thr_ptr, logsum_ptr, n_ptr, q_ptr,
    S, PS, PG, R, ITERS: tl.constexpr, BLOCK: tl.constexpr,
):
    b = tl.program_id(0)
    r = tl.program_id(1)
    offs = tl.arange(0, BLOCK)
    m = offs < PS
    base = b.to(tl.int64) * PS
    u = tl.load(u_ptr + base + offs, mask=m, other=0.0)
    h = tl.load(h_ptr + base + offs, mask=m, other=1.0)
    w = tl.load(w_ptr + base + offs, mask=m, other=0.0)
    grp = offs // S // PG  # probe group of each node
    keep = (r == 0) | (grp != r - 1)
    w = tl.where(keep & m, w, 0.0)
    w = w / tl.sum(w, axis=0)
    lo_c = u - h
    inv = 1.0 / (2.0 * h)
    live = w > 0
    lo = tl.min(tl.where(live, lo_c, float("inf")), axis=0)
    hi = tl.max(tl.where(live, u + h, -float("inf")), axis=0)
    q = tl.load(q_ptr + b)
    for _ in range(ITERS):
        mid = 0.5 * (lo + hi)
        frac = tl.minimum(tl.maximum((mid - lo_c) * inv, 0.0), 1.0)
        below = tl.sum(w * frac, axis=0) < q
        lo = tl.where(below, mid, lo)
        hi = tl.where(below, hi, mid)
    x = 0.5 * (lo + hi)
    top = lo_c + 2.0 * h
    part = tl.where(x <= lo_c, u - x, tl.where(x >= top, 0.0, (top - x) * (top - x) * inv * 0.5))
    n = tl.load(n_ptr + b)
    tl.store(ln_thr_ptr + b * R + r, x)
    tl.store(logsum_ptr + b * R + r, tl.sum(w * part, axis=0) * n)


def hill_nodes_triton(
    nodes: torch.Tensor,
    weights: torch.Tensor,
    n: torch.Tensor,
    q: torch.Tensor,
    floor: torch.Tensor,
    groups: int,
    iters: int = 60,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Same contract as ``lanczos.slq_hill_torch``; the bisection and tail sums run in one launch."""
    u, h, w = node_cells(nodes, weights, floor)
    bsz, probes, s = u.shape
    ps = probes * s
    f32 = torch.float32
    u32, h32, w32 = (x.to(f32).contiguous() for x in (u, h, w))
    reps = groups + 1
    ln_thr = torch.empty(bsz, reps, dtype=f32, device=u.device)
    logsum = torch.empty(bsz, reps, dtype=f32, device=u.device)
    _hill_nodes_kernel[(bsz, reps)](
        u32, h32, w32, ln_thr, logsum, n.to(f32).contiguous(), q.to(f32).contiguous(),
        s, ps, probes // groups, reps, ITERS=iters, BLOCK=triton.next_power_of_2(ps),
    )
    at_floor = (w * (u <= torch.log(floor).view(-1, 1, 1) + 1e-12).to(w.dtype)).sum(-1).mean(-1)
    return ln_thr.to(nodes.dtype), logsum.to(nodes.dtype), at_floor
