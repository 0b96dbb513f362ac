"""Multi-tensor AdamW step with one learning rate per tensor, through the C++/CUDA extension (csrc/adamw_*).

Same arguments and semantics as :func:`llr_kernels.ops.adamw.naive.adamw_step_torch`. On CPU the C++ op
steps every tensor in one pass per element with vector code chosen for the CPU at run time, each thread taking
one contiguous range of all the tensors' elements (it reads lrs / steps / found_inf directly: there is no host
sync on CPU). On CUDA it launches one kernel per dtype bucket over the same cached work
tables as the Triton path (``work_table``), with every scalar read on device.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .. import extension
from . import work_table as wt

CUDA_CHUNK = 32768



def adamw_step_cpp(
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
    ``capturable`` changes nothing: the CUDA kernel reads every scalar on device, and on CPU the host is the device."""
    mod = extension.require(params[0].device if params else "cpu")
    n = len(params)
    if not (len(grads) == len(exp_avgs) == len(exp_avg_sqs) == n == lrs.numel() == weight_decays.numel()
            == steps.numel()):
        raise ValueError("params, grads, exp_avgs, exp_avg_sqs, lrs, weight_decays and steps must have one entry per tensor")
    if amsgrad and (max_exp_avg_sqs is None or len(max_exp_avg_sqs) != n):
        raise ValueError("amsgrad=True needs max_exp_avg_sqs with one tensor per param")
    if n == 0:
        return torch.zeros((), device=lrs.device) if max_grad_norm is not None else None
    device = params[0].device
    if device.type == "cpu":
        return mod.adamw_step_cpu(params, grads, exp_avgs, exp_avg_sqs, list(max_exp_avg_sqs or []) if amsgrad else [],
                                  lrs, weight_decays, steps, beta1, beta2, eps, amsgrad, maximize, inv_scale,
                                  found_inf, None if max_grad_norm is None else float(max_grad_norm))
    if device.type != "cuda" or not getattr(mod, "with_cuda", False):
        raise RuntimeError(f"backend='cpp' has no kernel for {device} in this build")
    if not all(wt.kernel_supports(p, g, m) for p, g, m in zip(params, grads, exp_avgs)):  # fp64: the torch reference
        return wt.with_torch_fallback(adamw_step_cpp, params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, lrs,
                                      weight_decays, steps, beta1=beta1, beta2=beta2, eps=eps, amsgrad=amsgrad,
                                      maximize=maximize, inv_scale=inv_scale, found_inf=found_inf,
                                      max_grad_norm=max_grad_norm, capturable=capturable)
    for name, buf in (("lrs", lrs), ("weight_decays", weight_decays), ("steps", steps)):
        if buf.dtype != torch.float32 or not buf.is_contiguous() or buf.device != device:
            raise ValueError(f"{name} must be a contiguous float32 tensor on {device}")

    plan = wt.get_plan(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, amsgrad, CUDA_CHUNK)
    sumsq = None
    if max_grad_norm is not None:
        if plan.partials is None:
            plan.partials = torch.empty(max(plan.total_work, 1), dtype=torch.float32, device=device)
        for b in plan.buckets:
            out = plan.partials[b.work_offset: b.work_offset + b.num_work]
            mod.grad_sumsq_cuda(b.work, b.meta, out, wt.DTYPE_CODES[b.grad_dtype], CUDA_CHUNK)
        sumsq = plan.partials[: plan.total_work].sum(dtype=torch.float32).reshape(1)
    for b in plan.buckets:
        mod.adamw_step_cuda(b.work, b.meta, lrs, weight_decays, steps, b.counters, inv_scale, found_inf, sumsq,
                            float(max_grad_norm or 0.0), beta1, beta2, eps, amsgrad, maximize,
                            wt.DTYPE_CODES[b.param_dtype], wt.DTYPE_CODES[b.state_dtype], CUDA_CHUNK)
    if sumsq is None:
        return None
    norm = sumsq.sqrt().reshape(())
    return norm * inv_scale.reshape(()).float() if inv_scale is not None else norm
