"""Short-side Gram matrices of many weight matrices in one Triton launch.

A host-built table lists every matrix (address, n = min dim, K = max dim, strides that present it as an
n x K row-major-or-not operand A, output offset) and every tile (matrix, ti, tj) of the lower triangle of
its n x n Gram A A^T. Program t computes tile t with fp32 accumulation (``tl.dot``) over K and writes its
lower-triangle part and the mirror of that, so the launch does half the flops of a full GEMM and the output is
the full, exactly symmetric Gram. Transposition (n = number of columns) is only a swap of strides: nothing is copied.
Matrices of different dtypes go in separate launches (one per dtype: the element type is compile time).

TF32 (``precision="tf32"``, GPU only; the interpreter computes fp32) rounds both operands to a 10-bit
mantissa: exact for bf16/fp16 inputs, not for float32 ones (emulated on CPU: ``ops.gram.naive.tf32_round``; on an
H200 a TF32 Gram moved a heavy-tailed float32 4096 x 4096 matrix's alpha from 1.74 to 2.09). SLQ uses it by
default for bf16/fp16 matrices only (``spectral.slq.gram_precision``); the exact path never does.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..dispatch import triton_interpreted
from ..variants import Variant

_TL_DTYPES = {torch.float32: tl.float32, torch.float16: tl.float16, torch.bfloat16: tl.bfloat16}
PRECISIONS = ("ieee", "tf32")
# (block, block_k) -> num_warps: the tile shapes gram_batch_triton accepts. 64 x 32 is the default: on sm_90
# with 8 warps it needs 97-138 registers (triton 3.6 and 3.9), with 4 warps up to 254 under triton 3.6 (one
# short of spilling), and 128 x 32 tiles spill at 4 and at 8 warps (scripts/compile_check.py prints the
# numbers). 32 x 16 keeps the interpreter (CPU tests) fast.
TILE_CONFIGS = {(64, 32): 8, (32, 16): 4}
DEFAULT_TILE = (64, 32)


@triton.jit
def _gram_tiles_kernel(
    tiles_ptr,  # int32 (T, 3): matrix index, tile row, tile col (row >= col)
    meta_ptr,  # int64 (M, 6): address, n, K, stride along n, stride along K, output element offset
    out_ptr,  # fp32 flat output
    ELEM: tl.constexpr,
    BLOCK: tl.constexpr,
    BLOCK_K: tl.constexpr,
    PRECISION: tl.constexpr,
    UPCAST: tl.constexpr,
):
    t = tl.program_id(0)
    mat = tl.load(tiles_ptr + 3 * t)
    ti = tl.load(tiles_ptr + 3 * t + 1)
    tj = tl.load(tiles_ptr + 3 * t + 2)
    mrow = meta_ptr + mat.to(tl.int64) * 6
    a_ptr = tl.load(mrow).to(tl.pointer_type(ELEM))
    n = tl.load(mrow + 1)
    k_len = tl.load(mrow + 2)
    s_n = tl.load(mrow + 3)
    s_k = tl.load(mrow + 4)
    out_off = tl.load(mrow + 5)

    ri = ti.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    rj = tj.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    rk = tl.arange(0, BLOCK_K)
    mi = ri < n
    mj = rj < n
    acc = tl.zeros((BLOCK, BLOCK), dtype=tl.float32)
    for k0 in range(0, k_len, BLOCK_K):
        kk = k0 + rk
        mk = kk < k_len
        # A[ri, kk] (BLOCK x BLOCK_K) and A[rj, kk]^T (BLOCK_K x BLOCK)
        a = tl.load(a_ptr + ri[:, None] * s_n + kk[None, :] * s_k, mask=mi[:, None] & mk[None, :], other=0.0)
        b = tl.load(a_ptr + kk[:, None] * s_k + rj[None, :] * s_n, mask=mk[:, None] & mj[None, :], other=0.0)
        if UPCAST:  # the interpreter's bf16 dot is wrong; fp32 products of bf16 values are exact anyway
            a = a.to(tl.float32)
            b = b.to(tl.float32)
        acc += tl.dot(a, b, input_precision=PRECISION)
    # Only the lower triangle (i >= j) of the computed values is written, and mirrored to (j, i): a diagonal tile's
    # (i, j) and (j, i) dot products may round differently (another summation order), so the Gram comes out
    # exactly symmetric by construction, on any machine. Off-diagonal tiles (ti > tj) lie wholly below.
    o = out_ptr + out_off
    inside = mi[:, None] & mj[None, :]
    tl.store(o + ri[:, None] * n + rj[None, :], acc, mask=inside & (ri[:, None] >= rj[None, :]))
    tl.store(o + rj[None, :] * n + ri[:, None], acc, mask=inside & (ri[:, None] > rj[None, :]))


def _operand(w: torch.Tensor) -> tuple[int, int, int, int]:
    """(n, K, stride along n, stride along K) presenting the short side as rows, without copying."""
    rows, cols = w.shape
    if rows <= cols:
        return rows, cols, w.stride(0), w.stride(1)
    return cols, rows, w.stride(1), w.stride(0)


_SIGNATURE = {"tiles_ptr": "*i32", "meta_ptr": "*i64", "out_ptr": "*fp32"}


def _constexprs(dtype: torch.dtype, block: int, block_k: int, precision: str, interpreted: bool) -> dict:
    """Constexprs of one ``_gram_tiles_kernel`` launch: the wrapper and launch_variants both call this."""
    return dict(ELEM=_TL_DTYPES[dtype], BLOCK=block, BLOCK_K=block_k, PRECISION=precision,
                UPCAST=dtype == torch.bfloat16 and interpreted)


def launch_variants(interpreted: bool = False) -> list[Variant]:
    """Every compilation gram_batch_triton can launch (see llr_kernels/ops/variants.py)."""
    return [Variant(_gram_tiles_kernel, _SIGNATURE, _constexprs(dt, blk, bk, prec, interpreted), warps,
                    default=(blk, bk) == DEFAULT_TILE)
            for dt in _TL_DTYPES for (blk, bk), warps in TILE_CONFIGS.items() for prec in PRECISIONS]


JIT_HELPERS = ()


def gram_batch_triton(
    mats: list[torch.Tensor], *, precision: str = "ieee", block: int = DEFAULT_TILE[0], block_k: int = DEFAULT_TILE[1]
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Gram A A^T (n x n, n = min dim, fp32) of every 2-D matrix, one launch per input dtype.

    Returns (flat fp32 buffer holding all Grams back to back, list of (n_i, n_i) views into it).
    precision: "ieee" (true fp32 products) or "tf32" (tensor-core TF32 on GPU; ignored by the interpreter).
    block, block_k: output tile and K step, one of ``TILE_CONFIGS``.
    """
    if not mats:
        raise ValueError("gram_batch_triton needs at least one matrix")
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be 'ieee' or 'tf32', got {precision!r}")
    warps = TILE_CONFIGS.get((block, block_k))
    if warps is None:
        raise ValueError(f"(block, block_k) must be one of {sorted(TILE_CONFIGS)}, got {(block, block_k)}")
    device = mats[0].device
    sizes, offs, total = [], [], 0
    for w in mats:
        if w.dim() != 2:
            raise ValueError(f"gram_batch_triton takes 2-D matrices, got shape {tuple(w.shape)}")
        if w.device != device:
            raise ValueError(f"all matrices must be on one device, got {w.device} and {device}")
        if w.dtype not in _TL_DTYPES:
            raise ValueError(f"unsupported dtype {w.dtype}; use float32, float16 or bfloat16")
        n = min(w.shape)
        sizes.append(n)
        offs.append(total)
        total += n * n
    out = torch.empty(total, dtype=torch.float32, device=device)
    by_dtype: dict[torch.dtype, list[int]] = {}
    for i, w in enumerate(mats):
        by_dtype.setdefault(w.dtype, []).append(i)
    for dt, idx in by_dtype.items():
        meta, tiles = [], []
        for local, i in enumerate(idx):
            w = mats[i]
            n, k_len, s_n, s_k = _operand(w)
            meta.append([w.data_ptr(), n, k_len, s_n, s_k, offs[i]])
            nt = (n + block - 1) // block
            tiles.extend([local, a, b] for a in range(nt) for b in range(a + 1))
        meta_t = torch.tensor(meta, dtype=torch.int64, device=device)
        tiles_t = torch.tensor(tiles, dtype=torch.int32, device=device)
        _gram_tiles_kernel[(len(tiles),)](
            tiles_t, meta_t, out, **_constexprs(dt, block, block_k, precision, triton_interpreted()), num_warps=warps
        )
    views = [out[o : o + n * n].view(n, n) for o, n in zip(offs, sizes)]
    return out, views
