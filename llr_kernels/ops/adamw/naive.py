"""Multi-tensor AdamW step with one learning rate per tensor: the pure-torch implementation.

This is the contract every fast backend (Triton, C++/CUDA) implements and is tested against. One call steps
a list of tensors in place:

    g      = grad * inv_scale * clip_coef          (negated when maximize)
    p      = p * (1 - lr_i * wd_i)                   decoupled weight decay with the tensor's own LR
    m      = lerp(m, g, 1 - beta1)
    v      = beta2 * v + (1 - beta2) * g^2
    vmax   = max(vmax, v)                            (amsgrad only; vmax replaces v below)
    p      = p - lr_i / (1 - beta1^t_i) * m / (sqrt(v) / sqrt(1 - beta2^t_i) + eps)

with t_i = steps[i] after the op incremented it. Math in float32 (float64 for float64 tensors); params in
fp32/bf16/fp16; state in fp32 (or bf16). When ``found_inf`` is nonzero the call changes nothing, step
counters included. With ``max_grad_norm`` the global norm of all (unscaled) grads is taken and
clip_coef = min(1, max_grad_norm / (norm + 1e-6)), as torch.nn.utils.clip_grad_norm_ does.

The update follows torch.optim.AdamW's single-tensor code operation for operation, so with fp32 tensors
it reproduces torch.optim.AdamW(foreach=False) bit for bit.
"""
from __future__ import annotations

import torch
from torch import Tensor


def global_grad_norm(grads: list[Tensor], inv_scale: Tensor | None = None) -> Tensor:
    """L2 norm over all gradients (after unscaling), as a 0-d tensor on the grads' device: float32, float64 when a
    gradient is float64 (as torch.nn.utils.clip_grad_norm_, which works in the grads' dtype)."""
    if not grads:
        return torch.zeros(())
    dt = torch.float64 if any(g.dtype == torch.float64 for g in grads) else torch.float32
    norms = torch.stack([torch.linalg.vector_norm(g.to(dt)) for g in grads])
    norm = torch.linalg.vector_norm(norms)
    return norm * inv_scale.float() if inv_scale is not None else norm


def clip_coefficient(norm: Tensor, max_grad_norm: float) -> Tensor:
    """min(1, max_grad_norm / (norm + 1e-6)), on device: no host sync."""
    return torch.clamp(max_grad_norm / (norm + 1e-6), max=1.0)


def adamw_step_torch(
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
    """Step every tensor in place with its own LR; returns the global grad norm when clipping, else None.

    lrs, weight_decays, steps: float32 tensors of shape (len(params),). steps is incremented here.
    capturable: keep every scalar on the tensors' device (no host sync, no host-to-device copy; see
    ``_adamw_step_on_device``), so the call can be captured in a CUDA graph. Default: host scalars, which
    reproduces torch.optim.AdamW(foreach=False) bit for bit.
    """
    n = len(params)
    if not (len(grads) == len(exp_avgs) == len(exp_avg_sqs) == n == lrs.numel() == weight_decays.numel() == steps.numel()):
        raise ValueError("params, grads, exp_avgs, exp_avg_sqs, lrs, weight_decays and steps must have one entry per tensor")
    if amsgrad and (max_exp_avg_sqs is None or len(max_exp_avg_sqs) != n):
        raise ValueError("amsgrad=True needs max_exp_avg_sqs with one tensor per param")
    if capturable:
        return _adamw_step_on_device(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, lrs, weight_decays, steps,
                                     beta1=beta1, beta2=beta2, eps=eps, amsgrad=amsgrad, maximize=maximize,
                                     inv_scale=inv_scale, found_inf=found_inf, max_grad_norm=max_grad_norm)
    norm = None
    if max_grad_norm is not None:
        norm = global_grad_norm(grads, inv_scale)
    # The torch path works with host scalars (one sync); fast backends keep everything on device.
    if found_inf is not None and bool(found_inf.item() != 0):
        return norm
    steps.add_(1)
    scale = 1.0 if inv_scale is None else float(inv_scale.item())
    if norm is not None:
        scale = scale * float(clip_coefficient(norm, max_grad_norm).item())
    lr_list, wd_list, step_list = lrs.tolist(), weight_decays.tolist(), steps.tolist()
    for i, p in enumerate(params):
        lr, wd, step = lr_list[i], wd_list[i], step_list[i]
        g = grads[i]
        low_precision = p.dtype in (torch.bfloat16, torch.float16)
        if low_precision:
            p32 = p.float()
            g = g.float()
        else:
            p32 = p
        if scale != 1.0:
            g = g * scale
        if maximize:
            g = -g
        m, v = exp_avgs[i], exp_avg_sqs[i]
        low_state = m.dtype != p32.dtype
        if low_state:
            m32, v32 = m.to(p32.dtype), v.to(p32.dtype)
        else:
            m32, v32 = m, v
        p32.mul_(1 - lr * wd)
        m32.lerp_(g.to(p32.dtype), 1 - beta1)
        v32.mul_(beta2).addcmul_(g, g, value=1 - beta2)
        bias_correction1 = 1 - beta1**step
        bias_correction2 = 1 - beta2**step
        step_size = lr / bias_correction1
        bias_correction2_sqrt = bias_correction2**0.5
        if amsgrad:
            vmax = max_exp_avg_sqs[i]  # type: ignore[index]
            vmax32 = vmax.to(p32.dtype) if low_state else vmax
            torch.maximum(vmax32, v32, out=vmax32)
            denom = (vmax32.sqrt() / bias_correction2_sqrt).add_(eps)
            if low_state:
                vmax.copy_(vmax32)
        else:
            denom = (v32.sqrt() / bias_correction2_sqrt).add_(eps)
        p32.addcdiv_(m32, denom, value=-step_size)
        if low_state:
            m.copy_(m32)
            v.copy_(v32)
        if low_precision:
            p.copy_(p32)
    return norm


def _adamw_step_on_device(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, lrs, weight_decays, steps, *, beta1,
                          beta2, eps, amsgrad, maximize, inv_scale, found_inf, max_grad_norm) -> Tensor | None:
    """The same step with every scalar (LR, weight decay, step, bias corrections, grad scale, found_inf) a tensor on
    the device, arranged as torch.optim.AdamW(capturable=True) does: no host sync, no host-to-device copy.
    With ``found_inf`` the new values are computed and then discarded with torch.where (nothing changes)."""
    norm = global_grad_norm(grads, inv_scale) if max_grad_norm is not None else None
    scale = None if inv_scale is None else inv_scale.reshape(()).float()
    if norm is not None:
        coef = clip_coefficient(norm, max_grad_norm)
        scale = coef if scale is None else scale * coef
    keep = None if found_inf is None else found_inf.reshape(()) == 0
    steps.add_(1 if keep is None else keep.to(steps.dtype))
    for i, p in enumerate(params):
        lr, wd, step = lrs[i], weight_decays[i], steps[i]
        low_precision = p.dtype in (torch.bfloat16, torch.float16)
        p32 = p.float() if low_precision else p
        g = grads[i].to(p32.dtype)
        if scale is not None:
            g = g * scale
        if maximize:
            g = -g
        m, v = exp_avgs[i], exp_avg_sqs[i]
        vmax = max_exp_avg_sqs[i] if amsgrad else None  # type: ignore[index]
        low_state = m.dtype != p32.dtype
        m32, v32 = (m.to(p32.dtype), v.to(p32.dtype)) if low_state else (m, v)
        vmax32 = None if vmax is None else (vmax.to(p32.dtype) if low_state else vmax)
        olds = None if keep is None else [t.clone() for t in (p32, m32, v32, vmax32) if t is not None]
        p32.mul_(1 - lr * wd)
        m32.lerp_(g, 1 - beta1)
        v32.mul_(beta2).addcmul_(g, g, value=1 - beta2)
        bias_correction1 = 1 - torch.pow(beta1, step)
        bias_correction2 = 1 - torch.pow(beta2, step)
        step_size_neg = (lr / bias_correction1).neg()
        if vmax32 is not None:
            torch.maximum(vmax32, v32, out=vmax32)
        vh = v32 if vmax32 is None else vmax32
        denom = (vh.sqrt() / (bias_correction2.sqrt() * step_size_neg)).add_(eps / step_size_neg)
        p32.addcdiv_(m32, denom)
        if olds is not None:
            for new, old in zip([t for t in (p32, m32, v32, vmax32) if t is not None], olds):
                new.copy_(torch.where(keep, new, old))
        if low_state:
            m.copy_(m32)
            v.copy_(v32)
            if vmax is not None:
                vmax.copy_(vmax32)
        if low_precision:
            p.copy_(p32)
    return norm
