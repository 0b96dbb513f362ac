"""Muon's elementwise phases with one LR per matrix: the pure-torch implementation (the contract).

Muon's step for matrix i is

    buf_i  = lerp(buf_i, g_i, 1 - mu)                   momentum (an EMA, as torch.optim.Muon)
    u_i    = lerp(g_i, buf_i, mu)  if nesterov else buf_i
    O_i    = NewtonSchulz(u_i)                          (llr_kernels.ops.muon.newton_schulz, batched per shape)
    p_i    = p_i * decay_i - step_i * O_i               decay_i = 1 - lr_i * wd_i, step_i = lr_i * adjust(shape_i)

``muon_momentum`` is the first two lines (it also writes u_i, cast to the Newton-Schulz dtype, into the
bucket's batch buffer, so no separate stack/cast pass is needed); ``muon_apply`` is the last line. Both take
lists of tensors of any shapes; the fast backends do each in one launch. Math in fp32 (float64 for float64
tensors), rounded once into bf16/fp16 params. This file follows torch.optim.Muon's single-tensor code
operation for operation, so with fp32 tensors it reproduces it bit for bit given the same Newton-Schulz
output (torch.optim.Muon rounds bf16 params twice per step, this op once).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor


def _check_lengths(name: str, n: int, *lists: list[Tensor]) -> None:
    for lst in lists:
        if len(lst) != n:
            raise ValueError(f"{name}: every list must have one entry per matrix ({n}), got {len(lst)}")


def muon_momentum_torch(
    grads: list[Tensor],
    momentum_buffers: list[Tensor],
    updates: list[Tensor],
    *,
    momentum: float,
    nesterov: bool,
) -> None:
    """buf = lerp(buf, g, 1 - mu); updates[i] <- (lerp(g, buf, mu) if nesterov else buf), cast to its dtype."""
    _check_lengths("muon_momentum", len(grads), momentum_buffers, updates)
    for g, buf, out in zip(grads, momentum_buffers, updates):
        if buf.dtype in (torch.bfloat16, torch.float16):  # low-precision state: fp32 math, one rounding on store
            g32, b32 = g.float(), buf.float()
            buf.copy_(b32.lerp_(g32, 1 - momentum))
            stored = buf.float()  # Nesterov reads the stored (rounded) buffer, as the fused kernels do
            out.copy_(g32.lerp(stored, momentum) if nesterov else stored)
            continue
        g_b = g if g.dtype == buf.dtype else g.to(buf.dtype)
        buf.lerp_(g_b, 1 - momentum)
        out.copy_(g_b.lerp(buf, momentum) if nesterov else buf)


def muon_apply_torch(params: list[Tensor], updates: list[Tensor], decays: Tensor, step_sizes: Tensor, *,
                     capturable: bool = False) -> None:
    """p = p * decays[i] - step_sizes[i] * updates[i] (decoupled weight decay, then the scaled update).

    capturable: read decays / step_sizes as device tensors (no host sync: CUDA-graph capturable) instead of
    host floats (the default, which follows torch.optim.Muon operation for operation)."""
    _check_lengths("muon_apply", len(params), updates)
    if decays.numel() != len(params) or step_sizes.numel() != len(params):
        raise ValueError("muon_apply: decays and step_sizes must have one entry per matrix")
    if capturable:
        for i, (p, u) in enumerate(zip(params, updates)):
            low = p.dtype in (torch.bfloat16, torch.float16)
            p32 = p.float() if low else p
            p32.mul_(decays[i])
            p32.addcmul_(u, step_sizes[i].neg())
            if low:
                p.copy_(p32)
        return
    for p, u, d, s in zip(params, updates, decays.tolist(), step_sizes.tolist()):
        low = p.dtype in (torch.bfloat16, torch.float16)
        p32 = p.float() if low else p  # one rounding for low-precision params, as the fused kernels
        p32.mul_(d)
        p32.add_(u, alpha=-s)
        if low:
            p.copy_(p32)


ADJUST_LR_FNS = ("original", "match_rms_adamw", "none")
def adjust_lr_ratio(adjust_lr_fn: str | None, shape: tuple[int, ...]) -> float:
    """Muon's LR factor for a matrix of ``shape`` (rows, cols), with torch.optim.Muon's names.

    "original" (default, Keller Jordan): sqrt(max(1, rows / cols)), so tall matrices keep the update's RMS.
    "match_rms_adamw" (Moonshot, arXiv 2502.16982): 0.2 * sqrt(max(rows, cols)), which makes the update RMS
    match AdamW's (~0.2), so Muon can reuse AdamW's LR and weight decay. "none": 1.
    """
    rows, cols = shape[0], shape[1]
    if adjust_lr_fn is None or adjust_lr_fn == "original":
        return math.sqrt(max(1.0, rows / cols))
    if adjust_lr_fn == "match_rms_adamw":
        return 0.2 * math.sqrt(max(rows, cols))
    if adjust_lr_fn == "none":
        return 1.0
    raise ValueError(f"adjust_lr_fn must be one of {ADJUST_LR_FNS} (or None = 'original'), got {adjust_lr_fn!r}")
