"""Multi-tensor AdamW step with one learning rate per tensor, in Triton: one launch per dtype bucket.

Same arguments and semantics as :func:`llr_kernels.ops.adamw.naive.adamw_step_torch`, without host syncs:
the LRs, weight decays, step counters, ``inv_scale``, ``found_inf`` and the clip factor are read on device,
so the LR buffer can change between steps (or inside a CUDA graph) at no cost.

How it works: the tensors are described by cached device tables (see ``work_table``): one program per
(tensor, chunk of ``CHUNK`` elements) row. A program reads its tensor's addresses, LR, weight decay and step
counter, computes the bias corrections in fp32, and streams its chunk in ``BLOCK``-element pieces (unmasked
full blocks, then one masked tail, so that aligned tensors get vector loads). The step counter of a tensor is
incremented in the same launch: every program of the tensor reads the old value and then bumps an int32
counter atomically; the program that comes last writes ``step + 1`` and resets the counter. With
``found_inf != 0`` every program does nothing. With ``max_grad_norm``, a first launch writes the squared norm
of every chunk, torch sums them (one small reduction), and the step kernel derives the clip factor from it.

fp64 params (and grads or state of dtypes outside ``PARAM_DTYPES`` / ``STATE_DTYPES``) are stepped by the
torch reference (Triton's fp64 math buys nothing here). ``launch_variants`` lists every compilation the
wrappers can launch, from the same tables, for scripts/compile_check.py.
"""
from __future__ import annotations

import itertools
import math

import torch
import triton
import triton.language as tl
from torch import Tensor

from ..dispatch import triton_interpreted
from ..triton_utils import cast_rne
from ..variants import Variant
from . import work_table as wt
from .work_table import PARAM_DTYPES, STATE_DTYPES, kernel_supports, with_torch_fallback

CHUNK = 32768  # elements per program
_INTERPRETED = triton_interpreted()

# The launch tables (read by the wrappers and by launch_variants, which scripts/compile_check.py compiles):
# PARAM_DTYPES x STATE_DTYPES (see work_table); other dtypes go through the torch reference.
_TL_DTYPES = {torch.float32: tl.float32, torch.float16: tl.float16, torch.bfloat16: tl.bfloat16}


def launch_config(interpreted: bool) -> tuple[int, int]:
    """(BLOCK, num_warps): elements per inner iteration and warps per program. The interpreter pays per op,
    not per element, so it gets fewer, larger blocks; on GPU 1024 x 4 warps gives 8 elements per thread."""
    return (8192, 4) if interpreted else (1024, 4)


BLOCK, NUM_WARPS = launch_config(_INTERPRETED)
build_count = wt.build_count  # number of work tables built so far (re-exported for tests)
meta_upload_count = wt.meta_upload_count


@triton.jit
def _one_minus_pow(log_beta, step):
    """1 - beta**step for 0 < beta < 1, accurate in fp32 also when beta**step is close to 1."""
    x = step * log_beta
    series = -x * (1.0 + x * (0.5 + x * (1.0 / 6.0 + x * (1.0 / 24.0 + x * (1.0 / 120.0)))))
    return tl.where(x > -0.1, series, 1.0 - tl.exp(x))


@triton.jit
def _adamw_block(p_ptr, g_ptr, m_ptr, v_ptr, x_ptr, offs, n, decay, w1, beta2, w2, step_size, bc2_sqrt, eps,
                 gscale, P_DT: tl.constexpr, S_DT: tl.constexpr, AMSGRAD: tl.constexpr,
                 MASKED: tl.constexpr, P_RTNE: tl.constexpr, S_RTNE: tl.constexpr):
    if MASKED:
        mask = offs < n
        p = tl.load(p_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        g = tl.load(g_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        m = tl.load(m_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        v = tl.load(v_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    else:
        p = tl.load(p_ptr + offs).to(tl.float32)
        g = tl.load(g_ptr + offs).to(tl.float32)
        m = tl.load(m_ptr + offs).to(tl.float32)
        v = tl.load(v_ptr + offs).to(tl.float32)
    g = g * gscale  # gscale carries the sign for maximize: g * -s == -(g * s) exactly
    p = p * decay
    m = m + w1 * (g - m)
    v = v * beta2 + w2 * g * g
    vh = v
    if AMSGRAD:
        if MASKED:
            vmax = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        else:
            vmax = tl.load(x_ptr + offs).to(tl.float32)
        vh = tl.maximum(vmax, v)
        if MASKED:
            tl.store(x_ptr + offs, cast_rne(vh, S_DT, S_RTNE), mask=mask)
        else:
            tl.store(x_ptr + offs, cast_rne(vh, S_DT, S_RTNE))
    denom = tl.sqrt_rn(vh) / bc2_sqrt + eps
    p = p - step_size * (m / denom)
    if MASKED:
        tl.store(p_ptr + offs, cast_rne(p, P_DT, P_RTNE), mask=mask)
        tl.store(m_ptr + offs, cast_rne(m, S_DT, S_RTNE), mask=mask)
        tl.store(v_ptr + offs, cast_rne(v, S_DT, S_RTNE), mask=mask)
    else:
        tl.store(p_ptr + offs, cast_rne(p, P_DT, P_RTNE))
        tl.store(m_ptr + offs, cast_rne(m, S_DT, S_RTNE))
        tl.store(v_ptr + offs, cast_rne(v, S_DT, S_RTNE))


@triton.jit(do_not_specialize=["has_scale", "has_inf", "has_clip"])
def _adamw_kernel(work_ptr, meta_ptr, counter_ptr, lr_ptr, wd_ptr, step_ptr, scale_ptr, found_inf_ptr, sumsq_ptr,
                  max_grad_norm, w1, beta2, w2, log_beta1, log_beta2, eps, gsign, has_scale, has_inf, has_clip,
                  P_DT: tl.constexpr, S_DT: tl.constexpr, AMSGRAD: tl.constexpr,
                  ALIGNED: tl.constexpr, META_COLS: tl.constexpr, CHUNK: tl.constexpr, BLOCK: tl.constexpr,
                  P_RTNE: tl.constexpr, S_RTNE: tl.constexpr):
    # Grads have the param dtype (P_DT). The optional inputs (inv_scale, found_inf, clipping: 0/1 ints the
    # JIT does not specialise on) and maximize (gsign = -1) are runtime scalars, not constexprs:
    # uniform branches on scalars cost nothing in this memory-bound loop, and as constexprs they would
    # multiply the compiled variants by 16.
    pid = tl.program_id(0).to(tl.int64)
    t = tl.load(work_ptr + 2 * pid)
    start = tl.load(work_ptr + 2 * pid + 1)
    found = 0.0
    if has_inf != 0:
        found = tl.load(found_inf_ptr).to(tl.float32)
    if found == 0.0:
        row = meta_ptr + t * META_COLS
        numel = tl.load(row + 5)
        gidx = tl.load(row + 6)
        nchunks = tl.load(row + 7)
        # Step counter: read the old value here; the last program of this tensor to pass writes it back + 1.
        step = tl.load(step_ptr + gidx) + 1.0
        arrived = tl.atomic_add(counter_ptr + t, 1)
        if arrived == nchunks - 1:
            tl.store(step_ptr + gidx, step)
            tl.store(counter_ptr + t, 0)
        lr = tl.load(lr_ptr + gidx)
        wd = tl.load(wd_ptr + gidx)
        step_size = lr / _one_minus_pow(log_beta1, step)
        bc2_sqrt = tl.sqrt_rn(_one_minus_pow(log_beta2, step))
        decay = 1.0 - lr * wd
        gscale = 1.0
        if has_scale != 0:
            gscale = tl.load(scale_ptr).to(tl.float32)
        if has_clip != 0:
            norm = tl.sqrt_rn(tl.load(sumsq_ptr)) * gscale
            gscale = gscale * tl.minimum(max_grad_norm / (norm + 1e-6), 1.0)
        gscale = gscale * gsign
        p_addr = tl.load(row + 0)
        g_addr = tl.load(row + 1)
        m_addr = tl.load(row + 2)
        v_addr = tl.load(row + 3)
        x_addr = tl.load(row + 4)
        p_ptr = p_addr.to(tl.pointer_type(P_DT)) + start
        g_ptr = g_addr.to(tl.pointer_type(P_DT)) + start
        m_ptr = m_addr.to(tl.pointer_type(S_DT)) + start
        v_ptr = v_addr.to(tl.pointer_type(S_DT)) + start
        x_ptr = x_addr.to(tl.pointer_type(S_DT)) + start
        if ALIGNED:  # every base address is 16-byte aligned and start is a multiple of CHUNK: vector loads
            p_ptr = tl.multiple_of(p_ptr, 16)
            g_ptr = tl.multiple_of(g_ptr, 16)
            m_ptr = tl.multiple_of(m_ptr, 16)
            v_ptr = tl.multiple_of(v_ptr, 16)
            x_ptr = tl.multiple_of(x_ptr, 16)
        n_here = tl.minimum(numel - start, CHUNK)
        n_blocks = n_here // BLOCK
        arange = tl.arange(0, BLOCK)
        for i in range(0, n_blocks):
            offs = i * BLOCK + arange
            _adamw_block(p_ptr, g_ptr, m_ptr, v_ptr, x_ptr, offs, n_here, decay, w1, beta2, w2, step_size,
                         bc2_sqrt, eps, gscale, P_DT, S_DT, AMSGRAD, False, P_RTNE, S_RTNE)
        if n_blocks * BLOCK < n_here:
            offs = n_blocks * BLOCK + arange
            _adamw_block(p_ptr, g_ptr, m_ptr, v_ptr, x_ptr, offs, n_here, decay, w1, beta2, w2, step_size,
                         bc2_sqrt, eps, gscale, P_DT, S_DT, AMSGRAD, True, P_RTNE, S_RTNE)


@triton.jit
def _grad_sumsq_kernel(work_ptr, meta_ptr, out_ptr, G_DT: tl.constexpr, ALIGNED: tl.constexpr,
                       META_COLS: tl.constexpr, CHUNK: tl.constexpr, BLOCK: tl.constexpr):
    pid = tl.program_id(0).to(tl.int64)
    t = tl.load(work_ptr + 2 * pid)
    start = tl.load(work_ptr + 2 * pid + 1)
    row = meta_ptr + t * META_COLS
    numel = tl.load(row + 5)
    g_ptr = tl.load(row + 1).to(tl.pointer_type(G_DT)) + start
    if ALIGNED:
        g_ptr = tl.multiple_of(g_ptr, 16)
    n_here = tl.minimum(numel - start, CHUNK)
    n_blocks = n_here // BLOCK
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    arange = tl.arange(0, BLOCK)
    for i in range(0, n_blocks):
        g = tl.load(g_ptr + i * BLOCK + arange).to(tl.float32)
        acc += g * g
    offs = n_blocks * BLOCK + arange
    g = tl.load(g_ptr + offs, mask=offs < n_here, other=0.0).to(tl.float32)
    acc += g * g
    tl.store(out_ptr + pid, tl.sum(acc, axis=0))


# Runtime arguments of the kernels and their Triton types (the compile check checks them against the kernels).
_STEP_SIGNATURE = {
    **{k: "*i64" for k in ("work_ptr", "meta_ptr")}, "counter_ptr": "*i32",
    **{k: "*fp32" for k in ("lr_ptr", "wd_ptr", "step_ptr", "scale_ptr", "found_inf_ptr", "sumsq_ptr")},
    **{k: "fp32" for k in ("max_grad_norm", "w1", "beta2", "w2", "log_beta1", "log_beta2", "eps", "gsign")},
    **{k: "i32" for k in ("has_scale", "has_inf", "has_clip")},
}
_SUMSQ_SIGNATURE = {"work_ptr": "*i64", "meta_ptr": "*i64", "out_ptr": "*fp32"}


def _step_constexprs(param_dtype: torch.dtype, state_dtype: torch.dtype, amsgrad: bool, aligned: bool,
                     interpreted: bool) -> tuple[dict, int]:
    """(constexprs, num_warps) of one ``_adamw_kernel`` launch: the wrapper and launch_variants both call this."""
    block, warps = launch_config(interpreted)
    rtne = interpreted  # the interpreter truncates fp32 -> bf16; round by hand there
    return dict(P_DT=_TL_DTYPES[param_dtype], S_DT=_TL_DTYPES[state_dtype], AMSGRAD=bool(amsgrad),
                ALIGNED=bool(aligned), META_COLS=wt.META_COLS, CHUNK=CHUNK, BLOCK=block,
                P_RTNE=rtne and param_dtype == torch.bfloat16, S_RTNE=rtne and state_dtype == torch.bfloat16), warps


def _sumsq_constexprs(grad_dtype: torch.dtype, aligned: bool, chunk: int, interpreted: bool) -> tuple[dict, int]:
    """(constexprs, num_warps) of one ``_grad_sumsq_kernel`` launch."""
    block, warps = launch_config(interpreted)
    return dict(G_DT=_TL_DTYPES[grad_dtype], ALIGNED=bool(aligned), META_COLS=wt.META_COLS, CHUNK=chunk,
                BLOCK=block), warps


def launch_variants(interpreted: bool = False) -> list[Variant]:
    """Every compilation the wrappers can launch (see llr_kernels/ops/variants.py)."""
    out = []
    for pdt, sdt, amsgrad, aligned in itertools.product(PARAM_DTYPES, STATE_DTYPES, (False, True), (False, True)):
        ce, warps = _step_constexprs(pdt, sdt, amsgrad, aligned, interpreted)
        out.append(Variant(_adamw_kernel, _STEP_SIGNATURE, ce, warps))
    for gdt, aligned in itertools.product(PARAM_DTYPES, (False, True)):
        ce, warps = _sumsq_constexprs(gdt, aligned, CHUNK, interpreted)
        out.append(Variant(_grad_sumsq_kernel, _SUMSQ_SIGNATURE, ce, warps))
    return out


JIT_HELPERS = (_one_minus_pow, _adamw_block)


def grad_sumsq(plan: wt.Plan, chunk: int = CHUNK) -> Tensor:
    """Sum of squared raw gradients over every tensor of the plan, as a float32 (1,) device tensor."""
    dev = plan.buckets[0].work.device
    if plan.partials is None:
        plan.partials = torch.empty(max(plan.total_work, 1), dtype=torch.float32, device=dev)
    for b in plan.buckets:
        out = plan.partials[b.work_offset: b.work_offset + b.num_work]
        ce, warps = _sumsq_constexprs(b.grad_dtype, b.aligned, chunk, _INTERPRETED)
        _grad_sumsq_kernel[(b.num_work,)](b.work, b.meta, out, **ce, num_warps=warps)
    return plan.partials[: plan.total_work].sum(dtype=torch.float32).reshape(1)


def adamw_step_triton(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    max_exp_avg_sqs: list[Tensor] | None,
    lrs: Tensor,
    weight_decays: Tensor,
    steps: Tensor,
    *,
    beta1: float,
    beta2: float,
    eps: float,
    amsgrad: bool = False,
    maximize: bool = False,
    inv_scale: Tensor | None = None,
    found_inf: Tensor | None = None,
    max_grad_norm: float | None = None,
    capturable: bool = False,
) -> Tensor | None:
    """Step every tensor in place with its own LR (see adamw_torch); returns the global grad norm when clipping.
    Every scalar is read on device, so the kernel path is always capturable; ``capturable`` is passed on to the
    torch reference that steps dtypes the kernel has no variant for."""
    n = len(params)
    if not (len(grads) == len(exp_avgs) == len(exp_avg_sqs) == n == lrs.numel() == weight_decays.numel()
            == steps.numel()):
        raise ValueError("params, grads, exp_avgs, exp_avg_sqs, lrs, weight_decays and steps must have one entry per tensor")
    if amsgrad and (max_exp_avg_sqs is None or len(max_exp_avg_sqs) != n):
        raise ValueError("amsgrad=True needs max_exp_avg_sqs with one tensor per param")
    if n == 0:
        return torch.zeros((), device=lrs.device) if max_grad_norm is not None else None
    for name, buf in (("lrs", lrs), ("weight_decays", weight_decays), ("steps", steps)):
        if buf.dtype != torch.float32 or not buf.is_contiguous() or buf.device != params[0].device:
            raise ValueError(f"{name} must be a contiguous float32 tensor on {params[0].device}")
    if not 0.0 <= beta1 < 1.0 or not 0.0 <= beta2 < 1.0:
        raise ValueError(f"betas must lie in [0, 1), got ({beta1}, {beta2})")

    if not all(kernel_supports(p, g, m) for p, g, m in zip(params, grads, exp_avgs)):
        return with_torch_fallback(adamw_step_triton, params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, lrs,
                                   weight_decays, steps, beta1=beta1, beta2=beta2, eps=eps, amsgrad=amsgrad, maximize=maximize,
                                    inv_scale=inv_scale, found_inf=found_inf, max_grad_norm=max_grad_norm,
                                    capturable=capturable)
    # the kernel reads these as fp32 scalars (one compiled variant); GradScaler already makes them fp32
    inv_scale = None if inv_scale is None else inv_scale.to(torch.float32)
    found_inf = None if found_inf is None else found_inf.to(torch.float32)

    plan = wt.get_plan(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, amsgrad, CHUNK)
    dummy = lrs  # never read when the matching flag is off
    sumsq = grad_sumsq(plan) if max_grad_norm is not None else None
    for b in plan.buckets:
        ce, warps = _step_constexprs(b.param_dtype, b.state_dtype, amsgrad, b.aligned, _INTERPRETED)
        _adamw_kernel[(b.num_work,)](
            b.work, b.meta, b.counters, lrs, weight_decays, steps,
            inv_scale if inv_scale is not None else dummy,
            found_inf if found_inf is not None else dummy,
            sumsq if sumsq is not None else dummy,
            float(max_grad_norm) if max_grad_norm is not None else 0.0,
            1.0 - beta1, beta2, 1.0 - beta2, _log(beta1), _log(beta2), eps, -1.0 if maximize else 1.0,
            int(inv_scale is not None), int(found_inf is not None), int(sumsq is not None),
            **ce, num_warps=warps,
        )
    if sumsq is None:
        return None
    norm = sumsq.sqrt().reshape(())
    return norm * inv_scale.reshape(()).float() if inv_scale is not None else norm


def _log(beta: float) -> float:
    """log(beta) for the kernel's bias corrections; beta = 0 gives -inf, so 1 - beta**step = 1 (no correction)."""
    return math.log(beta) if beta > 0.0 else -math.inf
