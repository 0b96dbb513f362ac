"""Grouped Gram kernel (one launch over a table of matrices) against float64 numpy W @ W.T.

On a GPU the same asserts hold without change: values are compared with a tolerance (2e-6 of the largest
entry; compiled dots accumulate with FMAs or tensor cores, the interpreter with the machine's BLAS, and both
are ~1e-7 relative per term at these K), and the one bit-for-bit assert, symmetry, holds by construction on
any machine: the kernel writes each value computed for i >= j twice, at (i, j) and (j, i), and never the
values it computed above a diagonal tile's diagonal (those may sum in another order).
"""
import numpy as np
import pytest
import torch

from conftest import needs, triton_launch_missing
from llr_kernels.ops.gram.naive import gram_batch_torch, tf32_round

needs_triton = needs(triton_launch_missing(), "Triton launches")
DEV = "cuda" if torch.cuda.is_available() else "cpu"


def np_gram(w: torch.Tensor) -> np.ndarray:
    a = w.detach().cpu().double().numpy()
    return a @ a.T if a.shape[0] <= a.shape[1] else a.T @ a


def mixed_mats(seed: int, dtype: torch.dtype) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    shapes = [(70, 130), (150, 90), (64, 64), (33, 257), (129, 65)]
    mats = [torch.randn(s, generator=g).to(dtype) for s in shapes]
    mats.append(torch.randn(96, 80, generator=g).to(dtype).t())  # non-contiguous view: strides swapped
    mats.append(torch.randn(40, 300, generator=g)[:, ::3].to(dtype))  # strided columns
    return [m.to(DEV) for m in mats]


@needs_triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("seed", [0, 1])
def test_gram_triton_matches_float64(dtype, seed):
    from llr_kernels.ops.gram.triton import gram_batch_triton

    mats = mixed_mats(seed, dtype)
    flat, views = gram_batch_triton(mats)
    assert flat.dtype == torch.float32 and flat.numel() == sum(min(m.shape) ** 2 for m in mats)
    for w, v in zip(mats, views):
        ref = np_gram(w)  # of the (rounded) low-precision values: products are exact in fp32
        got = v.double().cpu().numpy()
        assert got.shape == ref.shape
        err = np.abs(got - ref).max() / np.abs(ref).max()
        assert err < 2e-6, (tuple(w.shape), dtype, err)
        assert np.array_equal(got, got.T)  # every (j, i) is a copy of (i, j)


@needs_triton
def test_gram_triton_single_launch_mixed_sizes_same_buffer():
    from llr_kernels.ops.gram.triton import gram_batch_triton

    mats = [torch.randn(50 + 17 * i, 200, device=DEV) for i in range(6)]
    flat, views = gram_batch_triton(mats, block=32, block_k=16)
    off = 0
    for w, v in zip(mats, views):
        assert v.data_ptr() == flat.data_ptr() + 4 * off
        off += min(w.shape) ** 2
        assert np.allclose(v.double().cpu().numpy(), np_gram(w), rtol=0, atol=2e-6 * np.abs(np_gram(w)).max())


@needs_triton
def test_gram_triton_rejects_bad_input():
    from llr_kernels.ops.gram.triton import gram_batch_triton

    with pytest.raises(ValueError, match="2-D"):
        gram_batch_triton([torch.randn(2, 3, 4, device=DEV)])
    with pytest.raises(ValueError, match="dtype"):
        gram_batch_triton([torch.randn(8, 8, dtype=torch.float64, device=DEV)])
    with pytest.raises(ValueError, match="precision"):
        gram_batch_triton([torch.randn(8, 8, device=DEV)], precision="fp8")
    with pytest.raises(ValueError, match=r"\(block, block_k\) must be one of"):
        gram_batch_triton([torch.randn(8, 8, device=DEV)], block=128, block_k=32)  # would spill on sm_90


def test_gram_torch_reference_contract():
    mats = mixed_mats(3, torch.float32)
    flat, views = gram_batch_torch(mats, dtype=torch.float64)
    for w, v in zip(mats, views):
        assert np.allclose(v.cpu().numpy(), np_gram(w), rtol=1e-12, atol=1e-9)


def test_tf32_round_emulation():
    x = torch.randn(10000, generator=torch.Generator().manual_seed(0)) * 1e3
    r = tf32_round(x)
    rel = ((r - x).abs() / x.abs()).max().item()
    assert 0 < rel <= 2.0**-11
    assert torch.equal(tf32_round(r), r)  # idempotent: TF32 values are representable
    exact = torch.tensor([1.0, 0.5, -3.0, 1 + 2.0**-10])
    assert torch.equal(tf32_round(exact), exact)
