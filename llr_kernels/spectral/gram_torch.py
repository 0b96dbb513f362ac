"""Pure-torch references for the grouped Gram (same contract as ``gram_triton.gram_batch_triton``) and a TF32
rounding emulator used to measure what TF32 tensor cores do to alpha on machines without them."""
from __future__ import annotations

import torch


def gram_batch_torch(
    mats: list[torch.Tensor], *, dtype: torch.dtype = torch.float32, precision: str = "ieee"
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Reference with the same contract as ``gram_batch_triton``: one matmul per matrix (precision is
    honoured through torch's TF32 switch on CUDA)."""
    sizes = [min(w.shape) for w in mats]
    out = torch.empty(sum(n * n for n in sizes), dtype=dtype, device=mats[0].device)
    views, off = [], 0
    prev = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = precision == "tf32"
    try:
        for w, n in zip(mats, sizes):
            v = out[off : off + n * n].view(n, n)
            a = w.to(dtype)
            a = a if a.shape[0] <= a.shape[1] else a.t()
            torch.matmul(a, a.t(), out=v)
            views.append(v)
            off += n * n
    finally:
        torch.backends.cuda.matmul.allow_tf32 = prev
    return out, views


def tf32_round(x: torch.Tensor) -> torch.Tensor:
    """Round fp32 values to TF32 (10 explicit mantissa bits, round-to-nearest-even): emulates what tensor
    cores see, so the effect of TF32 on alpha can be measured on any machine."""
    b = x.to(torch.float32).contiguous().view(torch.int32)
    lsb = (b >> 13) & 1
    r = (b + 0x0FFF + lsb) & ~0x1FFF
    return r.view(torch.float32)
