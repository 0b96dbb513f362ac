"""Triton helpers shared by the kernels (imported only by kernel modules: needs triton)."""
from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def cast_rne(x, T: tl.constexpr, MANUAL_RTNE: tl.constexpr):
    """fp32 -> T, rounding to nearest even. The interpreter truncates fp32 -> bf16, so there (MANUAL_RTNE) bf16 is
    rounded by hand, with NaN kept NaN (the bit trick alone can carry a NaN payload into inf); compiled kernels
    round natively. CPU tests thus see the bits torch and the GPU produce."""
    if MANUAL_RTNE and T == tl.bfloat16:
        bits = x.to(tl.uint32, bitcast=True)
        bits = bits + (((bits >> 16) & 1) + 0x7FFF)
        hi = (bits >> 16).to(tl.uint16).to(tl.bfloat16, bitcast=True)
        return tl.where(x != x, x.to(tl.bfloat16), hi)
    else:
        return x.to(T)


JIT_HELPERS = (cast_rne,)
