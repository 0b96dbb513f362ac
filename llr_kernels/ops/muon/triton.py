"""Muon's elementwise phases as multi-tensor Triton kernels: one launch for any number of matrices.

Same contract as ``muon_torch`` (read that file for the math). A call over N matrices of any shapes builds
two small device tables, cached by the tensors' addresses and sizes so steady-state steps upload nothing:

* ``meta`` (int64, N x 4): the matrices' addresses and numel;
* ``work`` (int64, W x 2): one row per chunk of CHUNK elements: (matrix, first element).

Program w processes chunk w, so the launch is balanced across matrices of different sizes. Math in fp32;
params and grads may be fp32 / bf16 / fp16, momentum buffers fp32 / bf16, updates (the Newton-Schulz
buffers) bf16 / fp16 / fp32 (and fp64 as a momentum output, which stores the fp32 result exactly): one launch
per dtype combination. Other combinations (any fp64 math) go through the torch reference, which computes in
fp64. The per-matrix decay (1 - lr*wd) and step size (lr * shape adjustment) are read from device buffers,
so changing LRs every step (scheduler, LLR multipliers) costs no recompilation and no host sync.
``launch_variants`` lists every compilation the wrappers can launch, from the same tables.
"""
from __future__ import annotations

from collections import OrderedDict

import torch
import triton
import triton.language as tl
from torch import Tensor

from ..dispatch import triton_interpreted
from ..triton_utils import cast_rne
from ..variants import Variant
from .naive import muon_apply_torch, muon_momentum_torch

_TL = {torch.float32: tl.float32, torch.bfloat16: tl.bfloat16, torch.float16: tl.float16, torch.float64: tl.float64}
# The launch tables (read by the wrappers and by launch_variants, which scripts/compile_check.py compiles).
PARAM_DTYPES = (torch.float32, torch.bfloat16, torch.float16)  # params and grads
BUFFER_DTYPES = (torch.float32, torch.bfloat16)  # momentum buffers
UPDATE_DTYPES = (torch.bfloat16, torch.float16, torch.float32)  # Newton-Schulz buffers
MOMENTUM_OUT_DTYPES = UPDATE_DTYPES + (torch.float64,)  # an fp32 result is exact in fp64
BLOCK = 1024
UNROLL = 4
CHUNK = BLOCK * UNROLL
NUM_WARPS = 4
_CACHE_SIZE = 32
_cache: "OrderedDict[tuple, tuple[Tensor, Tensor]]" = OrderedDict()


@triton.jit
def _lerp(a, b, w):
    # torch.lerp as ATen vectorizes it (exact at both ends): w < 0.5 ? fma(w, b - a, a) : fma(w - 1, b - a, b)
    d = b - a
    wv = tl.zeros_like(d) + w  # explicit broadcast: older tl.fma does not broadcast scalars everywhere
    if w < 0.5:
        r = tl.fma(d, wv, a)
    else:
        r = tl.fma(d, wv - 1.0, b)
    return r


@triton.jit(do_not_specialize=["nesterov"])
def _muon_momentum_kernel(
    work_ptr, meta_ptr, mu, one_minus_mu, nesterov,
    G_T: tl.constexpr, M_T: tl.constexpr, U_T: tl.constexpr,
    BLOCK: tl.constexpr, UNROLL: tl.constexpr, RTNE: tl.constexpr,
):
    # nesterov: a runtime 0/1 (a uniform branch; as a constexpr it would double the compiled variants)
    w = tl.program_id(0)
    t = tl.load(work_ptr + 2 * w)
    start = tl.load(work_ptr + 2 * w + 1)
    row = meta_ptr + t * 4
    g_ptr = tl.load(row).to(tl.pointer_type(G_T))
    m_ptr = tl.load(row + 1).to(tl.pointer_type(M_T))
    u_ptr = tl.load(row + 2).to(tl.pointer_type(U_T))
    numel = tl.load(row + 3)
    for k in tl.static_range(UNROLL):
        offs = start + k * BLOCK + tl.arange(0, BLOCK)
        mask = offs < numel
        g = tl.load(g_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        m = tl.load(m_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        m = _lerp(m, g, one_minus_mu)
        m_st = cast_rne(m, M_T, RTNE)
        tl.store(m_ptr + offs, m_st, mask=mask)
        u = m_st.to(tl.float32)
        if nesterov != 0:
            u = _lerp(g, u, mu)
        tl.store(u_ptr + offs, cast_rne(u, U_T, RTNE), mask=mask)


@triton.jit
def _muon_apply_kernel(
    work_ptr, meta_ptr, decay_ptr, step_ptr,
    P_T: tl.constexpr, U_T: tl.constexpr, BLOCK: tl.constexpr, UNROLL: tl.constexpr, RTNE: tl.constexpr,
):
    w = tl.program_id(0)
    t = tl.load(work_ptr + 2 * w)
    start = tl.load(work_ptr + 2 * w + 1)
    row = meta_ptr + t * 4
    p_ptr = tl.load(row).to(tl.pointer_type(P_T))
    u_ptr = tl.load(row + 1).to(tl.pointer_type(U_T))
    numel = tl.load(row + 3)
    idx = tl.load(row + 2)
    decay = tl.load(decay_ptr + idx)
    step = tl.load(step_ptr + idx)
    for k in tl.static_range(UNROLL):
        offs = start + k * BLOCK + tl.arange(0, BLOCK)
        mask = offs < numel
        p = tl.load(p_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        u = tl.load(u_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        p = tl.fma(u, tl.zeros_like(u) - step, p * decay)  # as torch: p.mul_(decay).add_(u, alpha=-step)
        tl.store(p_ptr + offs, cast_rne(p, P_T, RTNE), mask=mask)


_MOMENTUM_SIGNATURE = {"work_ptr": "*i64", "meta_ptr": "*i64", "mu": "fp32", "one_minus_mu": "fp32", "nesterov": "i32"}
_APPLY_SIGNATURE = {"work_ptr": "*i64", "meta_ptr": "*i64", "decay_ptr": "*fp32", "step_ptr": "*fp32"}


def _momentum_constexprs(gd: torch.dtype, md: torch.dtype, ud: torch.dtype, interpreted: bool) -> dict:
    """Constexprs of one ``_muon_momentum_kernel`` launch: the wrapper and launch_variants both call this."""
    return dict(G_T=_TL[gd], M_T=_TL[md], U_T=_TL[ud], BLOCK=BLOCK, UNROLL=UNROLL, RTNE=interpreted)


def _apply_constexprs(pd: torch.dtype, ud: torch.dtype, interpreted: bool) -> dict:
    """Constexprs of one ``_muon_apply_kernel`` launch."""
    return dict(P_T=_TL[pd], U_T=_TL[ud], BLOCK=BLOCK, UNROLL=UNROLL, RTNE=interpreted)


def _momentum_supported(gd: torch.dtype, md: torch.dtype, ud: torch.dtype) -> bool:
    return gd in PARAM_DTYPES and md in BUFFER_DTYPES and ud in MOMENTUM_OUT_DTYPES


def _apply_supported(pd: torch.dtype, ud: torch.dtype) -> bool:
    return pd in PARAM_DTYPES and ud in UPDATE_DTYPES


def launch_variants(interpreted: bool = False) -> list[Variant]:
    """Every compilation the wrappers can launch (see llr_kernels/ops/variants.py)."""
    out = [Variant(_muon_momentum_kernel, _MOMENTUM_SIGNATURE, _momentum_constexprs(gd, md, ud, interpreted), NUM_WARPS)
           for gd in PARAM_DTYPES for md in BUFFER_DTYPES for ud in MOMENTUM_OUT_DTYPES]
    out += [Variant(_muon_apply_kernel, _APPLY_SIGNATURE, _apply_constexprs(pd, ud, interpreted), NUM_WARPS)
            for pd in PARAM_DTYPES for ud in UPDATE_DTYPES]
    return out


JIT_HELPERS = (_lerp,)


def _check(name: str, tensors: list[list[Tensor]], n: int) -> torch.device:
    device = tensors[0][0].device
    for lst in tensors:
        if len(lst) != n:
            raise ValueError(f"{name}: every list must have one entry per matrix ({n}), got {len(lst)}")
        for t in lst:
            if t.dtype not in _TL:
                raise ValueError(f"{name}: dtype {t.dtype} is not supported by the Triton kernel; use backend='torch'")
            if not t.is_contiguous():
                raise ValueError(f"{name}: tensors must be contiguous for the Triton kernel; use backend='torch'")
            if t.device != device:
                raise ValueError(f"{name}: all tensors must be on one device ({device}), got {t.device}")
    return device


def _tables(kind: str, cols: list[list[Tensor]], extra: list[int] | None, device: torch.device) -> tuple[Tensor, Tensor]:
    """(work, meta) device tables for matrices described column by column; cached by addresses and sizes."""
    numels = [t.numel() for t in cols[0]]
    ptrs = [[t.data_ptr() for t in col] for col in cols]
    key = (kind, device, tuple(map(tuple, ptrs)), tuple(numels), None if extra is None else tuple(extra))
    hit = _cache.get(key)
    if hit is not None:
        _cache.move_to_end(key)
        return hit
    n = len(numels)
    meta = torch.zeros((n, 4), dtype=torch.int64)
    for j, col in enumerate(ptrs):
        meta[:, j] = torch.tensor(col, dtype=torch.int64)
    if extra is not None:
        meta[:, len(ptrs)] = torch.tensor(extra, dtype=torch.int64)
    meta[:, 3] = torch.tensor(numels, dtype=torch.int64)
    chunks = torch.tensor([-(-k // CHUNK) for k in numels], dtype=torch.int64)
    owner = torch.repeat_interleave(torch.arange(n, dtype=torch.int64), chunks)
    first = torch.cumsum(chunks, 0) - chunks
    start = (torch.arange(owner.numel(), dtype=torch.int64) - first[owner]) * CHUNK
    work = torch.stack([owner, start], dim=1).contiguous()
    out = (work.to(device), meta.to(device))
    _cache[key] = out
    if len(_cache) > _CACHE_SIZE:
        _cache.popitem(last=False)
    return out


def _split_by_dtype(*lists: list[Tensor]) -> dict[tuple, list[int]]:
    groups: dict[tuple, list[int]] = {}
    for i in range(len(lists[0])):
        groups.setdefault(tuple(lst[i].dtype for lst in lists), []).append(i)
    return groups


def muon_momentum_triton(
    grads: list[Tensor],
    momentum_buffers: list[Tensor],
    updates: list[Tensor],
    *,
    momentum: float,
    nesterov: bool,
) -> None:
    """Triton version of ``muon_torch.muon_momentum_torch``: one launch per dtype combination."""
    n = len(grads)
    if n == 0:
        return
    device = _check("muon_momentum", [grads, momentum_buffers, updates], n)
    interpreted = triton_interpreted()
    for (gd, md, ud), idx in _split_by_dtype(grads, momentum_buffers, updates).items():
        if not _momentum_supported(gd, md, ud):  # fp64 math: the torch reference
            muon_momentum_torch([grads[i] for i in idx], [momentum_buffers[i] for i in idx],
                                [updates[i] for i in idx], momentum=momentum, nesterov=nesterov)
            continue
        cols = [[grads[i] for i in idx], [momentum_buffers[i] for i in idx], [updates[i] for i in idx]]
        work, meta = _tables("momentum", cols, None, device)
        _muon_momentum_kernel[(work.shape[0],)](
            work, meta, float(momentum), 1.0 - float(momentum), int(bool(nesterov)),
            **_momentum_constexprs(gd, md, ud, interpreted), num_warps=NUM_WARPS,
        )


def muon_apply_triton(params: list[Tensor], updates: list[Tensor], decays: Tensor, step_sizes: Tensor, *,
                      capturable: bool = False) -> None:
    """Triton version of ``muon_torch.muon_apply_torch``: one launch per dtype combination (the kernel reads
    decays and step sizes on device; ``capturable`` is passed on to the torch reference used for fp64)."""
    n = len(params)
    if n == 0:
        return
    device = _check("muon_apply", [params, updates], n)
    if decays.numel() != n or step_sizes.numel() != n:
        raise ValueError("muon_apply: decays and step_sizes must have one entry per matrix")
    decays32 = decays.to(device=device, dtype=torch.float32)
    steps32 = step_sizes.to(device=device, dtype=torch.float32)
    interpreted = triton_interpreted()
    for (pd, ud), idx in _split_by_dtype(params, updates).items():
        if not _apply_supported(pd, ud):  # fp64 math: the torch reference
            sel = torch.tensor(idx, device=decays.device)
            muon_apply_torch([params[i] for i in idx], [updates[i] for i in idx], decays[sel], step_sizes[sel],
                             capturable=capturable)
            continue
        cols = [[params[i] for i in idx], [updates[i] for i in idx]]
        work, meta = _tables("apply", cols, idx, device)
        _muon_apply_kernel[(work.shape[0],)](
            work, meta, decays32, steps32, **_apply_constexprs(pd, ud, interpreted), num_warps=NUM_WARPS
        )
