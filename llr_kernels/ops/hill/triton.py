"""The Hill log-ratio reduction (Eq. 2) for every layer in one launch, from eigenvalues or Gauss nodes.

From eigenvalues (exact mode): program b reads row b of ascending eigenvalues and returns the threshold
l[thr_idx], l_max and sum_{j >= top} ln(l_j / thr).
From Gauss nodes (SLQ): program (b, r) reads layer b's node cells (probes x (steps + 1), each node's mass
spread uniformly in ln l on [u - h, u + h], see ``lanczos.node_cells``), finds the threshold as the
level-q point of the pooled smoothed CDF by bisection, then integrates ln(l / thr) above it; replicate
r = 0 uses all probes, r = g >= 1 leaves probe group g - 1 out (jackknife). Every pass streams the cells
through in BLOCK-lane pieces (at most ``nodes_max_block()``: 1024 on GPU), accumulating per lane and reducing once, so
the registers do not grow with probes x steps: one 8192-lane block (the default 32 x 129 cells) spilled
~1 KB on sm_90, 16384 lanes ~15 KB. With a single piece the arithmetic is the former all-in-registers one.
``*_torch`` functions are the references with the same contract.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..dispatch import triton_interpreted
from ..variants import Variant
from .naive import node_cells

# The launch tables (read by the wrappers and by launch_variants, which scripts/compile_check.py compiles).
EIG_DTYPES = (torch.float32, torch.float64)  # eigenvalue rows as given; other dtypes are read as fp32
_TL_PTR = {torch.float32: "*fp32", torch.float64: "*fp64"}
EIGS_BLOCK, EIGS_WARPS = 256, 4
MIN_BLOCK = 16


def nodes_max_block(interpreted: bool) -> int:
    """Largest lane block of the nodes kernel: 1024 lanes x 4 warps on GPU (8 cells per thread); the
    interpreter pays per op, not per lane, so it takes the whole layer at once up to 16384 cells."""
    return 16384 if interpreted else 1024


NODES_WARPS = 4


def _nodes_block(cells: int, max_block: int) -> int:
    return min(max(MIN_BLOCK, triton.next_power_of_2(cells)), max_block)


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
    e = (eigs if eigs.dtype in EIG_DTYPES else eigs.float()).contiguous()
    bsz, n = e.shape
    out = torch.empty(bsz, 3, dtype=torch.float32, device=e.device)
    _hill_eigs_kernel[(bsz,)](e, out, n, thr_idx, top, BLOCK=EIGS_BLOCK, num_warps=EIGS_WARPS)
    return out.to(eigs.dtype)


@triton.jit
def _node_cells(u_ptr, h_ptr, w_ptr, idx, PS, S, PG, r):
    """Cells idx of one layer (pointers at its first cell): u, h, and w zeroed past PS and, in replicate
    r >= 1, on probe group r - 1."""
    m = idx < PS
    u = tl.load(u_ptr + idx, mask=m, other=0.0)
    h = tl.load(h_ptr + idx, mask=m, other=1.0)
    w = tl.load(w_ptr + idx, mask=m, other=0.0)
    grp = idx // S // PG  # probe group of each node
    keep = (r == 0) | (grp != r - 1)
    return u, h, tl.where(keep & m, w, 0.0)


@triton.jit
def _hill_nodes_kernel(
    u_ptr, h_ptr, w_ptr, ln_thr_ptr, logsum_ptr, n_ptr, q_ptr,
    S, PS, PG, R, iters, BLOCK: tl.constexpr,
):
    b = tl.program_id(0)
    r = tl.program_id(1)
    offs = tl.arange(0, BLOCK)
    base = b.to(tl.int64) * PS
    u_ptr += base
    h_ptr += base
    w_ptr += base
    acc = tl.zeros((BLOCK,), dtype=tl.float32)
    for c0 in range(0, PS, BLOCK):
        _, _, w = _node_cells(u_ptr, h_ptr, w_ptr, c0 + offs, PS, S, PG, r)
        acc += w
    total = tl.sum(acc, axis=0)
    lo_v = tl.full((BLOCK,), float("inf"), dtype=tl.float32)
    hi_v = tl.full((BLOCK,), -float("inf"), dtype=tl.float32)
    for c0 in range(0, PS, BLOCK):
        u, h, w = _node_cells(u_ptr, h_ptr, w_ptr, c0 + offs, PS, S, PG, r)
        live = w / total > 0
        lo_v = tl.minimum(lo_v, tl.where(live, u - h, float("inf")))
        hi_v = tl.maximum(hi_v, tl.where(live, u + h, -float("inf")))
    lo = tl.min(lo_v, axis=0)
    hi = tl.max(hi_v, axis=0)
    q = tl.load(q_ptr + b)
    for _ in range(iters):
        mid = 0.5 * (lo + hi)
        acc = tl.zeros((BLOCK,), dtype=tl.float32)
        for c0 in range(0, PS, BLOCK):
            u, h, w = _node_cells(u_ptr, h_ptr, w_ptr, c0 + offs, PS, S, PG, r)
            frac = tl.minimum(tl.maximum((mid - (u - h)) * (1.0 / (2.0 * h)), 0.0), 1.0)
            acc += (w / total) * frac
        below = tl.sum(acc, axis=0) < q
        lo = tl.where(below, mid, lo)
        hi = tl.where(below, hi, mid)
    x = 0.5 * (lo + hi)
    acc = tl.zeros((BLOCK,), dtype=tl.float32)
    for c0 in range(0, PS, BLOCK):
        u, h, w = _node_cells(u_ptr, h_ptr, w_ptr, c0 + offs, PS, S, PG, r)
        lo_c = u - h
        top = lo_c + 2.0 * h
        part = tl.where(x <= lo_c, u - x, tl.where(x >= top, 0.0, (top - x) * (top - x) * (1.0 / (2.0 * h)) * 0.5))
        acc += (w / total) * part
    n = tl.load(n_ptr + b)
    tl.store(ln_thr_ptr + b * R + r, x)
    tl.store(logsum_ptr + b * R + r, tl.sum(acc, axis=0) * n)


_EIGS_SIGNATURE = {"out_ptr": "*fp32", "n": "i32", "thr_idx": "i32", "top": "i32"}
_NODES_SIGNATURE = {
    **{k: "*fp32" for k in ("u_ptr", "h_ptr", "w_ptr", "ln_thr_ptr", "logsum_ptr", "n_ptr", "q_ptr")},
    **{k: "i32" for k in ("S", "PS", "PG", "R", "iters")},
}


def launch_variants(interpreted: bool = False) -> list[Variant]:
    """Every compilation the wrappers can launch (see llr_kernels/ops/variants.py)."""
    out = [Variant(_hill_eigs_kernel, {"e_ptr": _TL_PTR[dt], **_EIGS_SIGNATURE}, {"BLOCK": EIGS_BLOCK}, EIGS_WARPS,
                   note=f"e={_TL_PTR[dt][1:]}") for dt in EIG_DTYPES]
    block, top = MIN_BLOCK, nodes_max_block(interpreted)
    while block <= top:
        out.append(Variant(_hill_nodes_kernel, _NODES_SIGNATURE, {"BLOCK": block}, NODES_WARPS))
        block *= 2
    return out


JIT_HELPERS = (_node_cells,)


def hill_nodes_triton(
    nodes: torch.Tensor,
    weights: torch.Tensor,
    n: torch.Tensor,
    q: torch.Tensor,
    floor: torch.Tensor,
    groups: int,
    iters: int = 60,
    max_block: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Same contract as ``lanczos.slq_hill_torch``; the bisection and tail sums run in one launch.

    max_block: largest lane block (a power of two >= 16, at most ``nodes_max_block``); default that maximum.
    Smaller blocks only cut the cells into more pieces (tests use them to exercise the streaming).
    """
    top = nodes_max_block(triton_interpreted())
    if max_block is None:
        max_block = top
    if not (MIN_BLOCK <= max_block <= top and max_block & (max_block - 1) == 0):
        raise ValueError(f"max_block must be a power of two in [{MIN_BLOCK}, {top}], got {max_block}")
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
        s, ps, probes // groups, reps, iters, BLOCK=_nodes_block(ps, max_block), num_warps=NODES_WARPS,
    )
    at_floor = (w * (u <= torch.log(floor).view(-1, 1, 1) + 1e-12).to(w.dtype)).sum(-1).mean(-1)
    return ln_thr.to(nodes.dtype), logsum.to(nodes.dtype), at_floor
