"""Short-side Gram matrices in pure torch: the reference of the grouped Triton Gram (``gram_batch_torch``, same
contract as ``ops.gram.triton.gram_batch_triton``), the power-of-two prescaling every exact path applies before
forming a Gram (no Gram entry over- or underflows; alpha is scale-invariant), and a TF32 rounding emulator that
measures what TF32 tensor cores do to alpha on machines without them."""
from __future__ import annotations

import math
from collections import defaultdict
from contextlib import contextmanager
from typing import Iterator, Sequence

import torch


def gram_batch_torch(
    mats: list[torch.Tensor], *, dtype: torch.dtype = torch.float32, precision: str = "ieee"
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Reference with the same contract as ``gram_batch_triton``: one matmul per matrix (precision is
    honoured through torch's TF32 switch on CUDA)."""
    sizes = [min(w.shape) for w in mats]
    out = torch.empty(sum(n * n for n in sizes), dtype=dtype, device=mats[0].device)
    views, off = [], 0
    with cuda_tf32(precision == "tf32"):
        for w, n in zip(mats, sizes):
            v = out[off : off + n * n].view(n, n)
            a = w.to(dtype)
            a = a if a.shape[0] <= a.shape[1] else a.t()
            torch.matmul(a, a.t(), out=v)
            views.append(v)
            off += n * n
    return out, views


@contextmanager
def cuda_tf32(enabled: bool) -> Iterator[None]:
    """CUDA fp32 matmuls in TF32 (enabled) or true fp32, for the block; restores the global setting after. True fp32
    matters for Grams of fp32 weights: TF32 perturbs the products by ~1e-3 relative, enough to move the median
    eigenvalue of a heavy-tailed spectrum."""
    prev = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = enabled
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = prev


def tf32_round(x: torch.Tensor) -> torch.Tensor:
    """Round fp32 values to TF32 (10 explicit mantissa bits, round-to-nearest-even): emulates what tensor
    cores see, so the effect of TF32 on alpha can be measured on any machine."""
    b = x.to(torch.float32).contiguous().view(torch.int32)
    lsb = (b >> 13) & 1
    r = (b + 0x0FFF + lsb) & ~0x1FFF
    return r.view(torch.float32)


def gram(w: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Gram matrix on the short side, (..., n, n) with n = min(rows, cols); batched over leading dims."""
    w = w if dtype is None else w.to(dtype)
    if w.shape[-2] <= w.shape[-1]:
        return w @ w.transpose(-1, -2)
    return w.transpose(-1, -2) @ w


def max_exponents(mats: Sequence[torch.Tensor]) -> list[float]:
    """Per matrix: the power-of-two exponent e with max|W| / 2^e in [0.5, 1) (an int), -inf for an all-zero (or
    empty) matrix, NaN for one holding inf or NaN. One host transfer per device."""
    out: list[float] = [-math.inf] * len(mats)
    by_dev: dict[torch.device, list[int]] = defaultdict(list)
    for i, w in enumerate(mats):
        if w.numel():
            by_dev[w.device].append(i)
    for idx in by_dev.values():
        ext = torch.stack([torch.stack(torch.aminmax(mats[i])).double() for i in idx]).tolist()
        for i, (lo, hi) in zip(idx, ext):
            a = max(abs(lo), abs(hi))
            if not (math.isfinite(lo) and math.isfinite(hi)):
                out[i] = math.nan
            else:
                out[i] = -math.inf if a == 0 else math.frexp(a)[1]
    return out


def applied_exponent(e: int, dtype: torch.dtype) -> int:
    """The exponent ``scaled`` applies: e when 2^e lies outside 2^+-40 (float32) / 2^+-400 (float64), else 0 (no
    Gram entry can then over- or underflow; csrc/spectral_cpu.cpp applies the same rule)."""
    return e if abs(e) > (40 if dtype.itemsize <= 4 else 400) else 0


def scaled(w: torch.Tensor, e: int, dtype: torch.dtype) -> torch.Tensor:
    """w in ``dtype`` times 2^-applied_exponent(e): powers of two are exact and alpha is scale-invariant."""
    e = applied_exponent(e, dtype)
    x = w if w.dtype.itemsize > dtype.itemsize else w.to(dtype)  # scale a float64 input before it becomes float32
    if e:
        x = x.clone() if x is w else x
    while e:
        step = max(-100, min(100, e))
        x.mul_(2.0 ** (-step))
        e -= step
    return x.to(dtype)
