"""hill_alpha (exact) against an independent float64 numpy computation of paper Eq. 2, and the documented rules
for spectra without a tail (llr_kernels/spectral/rules.py module docstring) checked from numpy float64 spectra."""
import math

import numpy as np
import pytest
import torch

from llr_kernels.spectral import (
    STATUS_FLAT,
    STATUS_NON_FINITE,
    STATUS_OK,
    STATUS_OK_RANK_DEFICIENT,
    STATUS_OUT_OF_RANGE,
    STATUS_RANK_DEFICIENT,
    STATUS_TOO_FEW,
    STATUS_ZERO,
    hill_alpha,
)

U = {torch.float64: 2.0**-53, torch.float32: 2.0**-24, torch.bfloat16: 2.0**-8, torch.float16: 2.0**-11}


def np_eigs(w: np.ndarray) -> np.ndarray:
    """Squared singular values in float64 (numpy SVD, not the Gram/eigvalsh path), ascending."""
    w = w.reshape(w.shape[0], -1).astype(np.float64)
    return np.sort(np.linalg.svd(w, compute_uv=False) ** 2)


def np_hill_paper(l: np.ndarray) -> float:
    n = len(l)
    k = n // 2
    # 1-based l_{n-k} is 0-based index n-k-1; the sum runs over l_{n-i+1}, i = 1..k
    thr = l[n - k - 1]
    return 1.0 + k / sum(math.log(l[n - i] / thr) for i in range(1, k + 1))


def np_hill_reference(l: np.ndarray) -> float:
    n = len(l)
    i = n // 2
    return 1.0 + (n - i) / sum(math.log(l[j] / l[i]) for j in range(i, n))


def with_spectrum(rng: np.random.Generator, eigs: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """A rows x cols matrix with the given squared singular values and random singular vectors."""
    n = min(rows, cols)
    u, _ = np.linalg.qr(rng.standard_normal((rows, n)))
    v, _ = np.linalg.qr(rng.standard_normal((cols, n)))
    return (u * np.sqrt(eigs)) @ v.T


def pareto_eigs(rng: np.random.Generator, n: int, alpha: float) -> np.ndarray:
    """n eigenvalues from a density ~ l^-alpha on [1, inf), stratified so the tail is sampled evenly."""
    u = (np.arange(n) + rng.random(n)) / n
    return (1.0 - u) ** (-1.0 / (alpha - 1.0))


@pytest.mark.parametrize("alpha", [2.0, 3.0, 4.0, 5.0, 6.0])
def test_recovers_power_law_tail(alpha):
    rng = np.random.default_rng()
    eigs = pareto_eigs(rng, 512, alpha)
    w = with_spectrum(rng, eigs, 512, 768)
    est = float(hill_alpha(torch.from_numpy(w))[0])
    assert abs(est - alpha) / alpha < 0.03, (est, alpha)  # spread over seeds: ~0.3% (1 sigma)
    assert est == pytest.approx(np_hill_paper(np_eigs(w)), rel=1e-9)


@pytest.mark.parametrize("shape", [(96, 300), (300, 96), (128, 128), (64, 4, 25)])
def test_gaussian_matches_numpy_both_ways(shape):
    w = torch.randn(*shape, dtype=torch.float64)
    res = hill_alpha([w], return_status=True)
    assert res.status == [STATUS_OK]
    assert float(res.alpha[0]) == pytest.approx(np_hill_paper(np_eigs(w.numpy())), rel=1e-10)


def test_spiked_matrix():
    rng = np.random.default_rng()
    g = rng.standard_normal((200, 400)) / math.sqrt(400)
    u, v = rng.standard_normal(200), rng.standard_normal(400)
    w = g + 5.0 * np.outer(u / np.linalg.norm(u), v / np.linalg.norm(v))
    est = float(hill_alpha(torch.from_numpy(w))[0])
    assert est == pytest.approx(np_hill_paper(np_eigs(w)), rel=1e-10)


def test_batched_mixed_shapes_keep_input_order():
    shapes = [(64, 80), (80, 64), (64, 80), (100, 100), (64, 80), (120, 60)]
    mats = [torch.randn(*s) * (i + 1) for i, s in enumerate(shapes)]
    got = hill_alpha(mats)
    want = [np_hill_paper(np_eigs(m.numpy())) for m in mats]
    # float32 input, float64 compute: agreement limited only by the input rounding
    assert np.allclose(got.numpy(), want, rtol=1e-6)


def test_float32_compute_error_is_small():
    mats = [torch.randn(256, 1024), torch.from_numpy(with_spectrum(np.random.default_rng(), pareto_eigs(np.random.default_rng(), 256, 3.0), 256, 1024)).float()]
    a64 = hill_alpha(mats)
    a32 = hill_alpha(mats, dtype=torch.float32)
    assert torch.allclose(a32, a64, rtol=1e-5)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_inputs(dtype):
    w = torch.randn(128, 256)
    got = float(hill_alpha(w.to(dtype))[0])
    want = np_hill_paper(np_eigs(w.to(dtype).float().numpy()))
    assert got == pytest.approx(want, rel=1e-6)


@pytest.mark.parametrize("shape", [(90, 200), (201, 77)])
def test_reference_variant_matches_its_formula(shape):
    w = torch.randn(*shape, dtype=torch.float64)
    got = float(hill_alpha(w, variant="reference")[0])
    l = np_eigs(w.numpy())
    assert got == pytest.approx(np_hill_reference(l), rel=1e-10)
    assert got != pytest.approx(np_hill_paper(l), rel=1e-6)


def test_guards_give_nan_with_a_reason():
    ortho, _ = torch.linalg.qr(torch.randn(80, 80, dtype=torch.float64))
    lowrank = torch.randn(80, 20) @ torch.randn(20, 120)
    inf = torch.randn(64, 64)
    inf[3, 5] = float("inf")
    nan = torch.randn(64, 64)
    nan[0, 0] = float("nan")
    mats = [torch.randn(30, 200), torch.zeros(64, 64), ortho, lowrank, inf, nan, torch.randn(64, 128)]
    res = hill_alpha(mats, return_status=True)
    assert res.status == [STATUS_TOO_FEW, STATUS_ZERO, STATUS_FLAT, STATUS_RANK_DEFICIENT, STATUS_NON_FINITE, STATUS_NON_FINITE, STATUS_OK]
    assert torch.isnan(res.alpha[:6]).all() and torch.isfinite(res.alpha[6])


def test_min_eigs_is_configurable():
    w = torch.randn(20, 60, dtype=torch.float64)
    assert torch.isnan(hill_alpha(w)).all()
    assert float(hill_alpha(w, min_eigs=8)[0]) == pytest.approx(np_hill_paper(np_eigs(w.numpy())), rel=1e-10)


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="variant"):
        hill_alpha(torch.randn(64, 64), variant="wrong")
    with pytest.raises(ValueError, match="method"):
        hill_alpha(torch.randn(64, 64), method="svd")
    with pytest.raises(ValueError, match="matrices"):
        hill_alpha([torch.randn(64)])
    with pytest.raises(ValueError, match="rank_deficient"):
        hill_alpha(torch.randn(64, 64), rank_deficient="drop")
    with pytest.raises(ValueError, match="alpha_max"):
        hill_alpha(torch.randn(64, 64), alpha_max=0.5)


# ---------------------------------------------------------------- rules for spectra without a tail
def noise_level(n: int, dtype: torch.dtype) -> float:
    """The documented noise level for float64 computation: 4 u_in + 8 sqrt(n) max(u64, min(u_in, u32))."""
    return 4 * U[dtype] + 8 * math.sqrt(n) * max(U[torch.float64], min(U[dtype], U[torch.float32]))


def mean_log_excess(l: np.ndarray) -> float:
    """m = (1/k) sum_{i=1..k} ln(l_{n-i+1} / l_{n-k}), so that Eq. 2 is alpha = 1 + 1/m."""
    n = len(l)
    k = n // 2
    return float(np.mean(np.log(l[n - k :] / l[n - k - 1])))


def orthogonal(rows: int, cols: int, dtype: torch.dtype, seed: int) -> torch.Tensor:
    """nn.init.orthogonal_ made in float32 (float64 for float64) and stored in ``dtype``, as a user would."""
    torch.manual_seed(seed)
    w = torch.empty(rows, cols, dtype=torch.float64 if dtype == torch.float64 else torch.float32)
    torch.nn.init.orthogonal_(w)
    return w.to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
@pytest.mark.parametrize("shape,scale", [((128, 128), 1.0), ((96, 300), 0.02), ((300, 96), 1e3)])
def test_orthogonal_is_flat_in_its_own_precision(dtype, shape, scale):
    """The issue: fp32 orthogonal init gave alpha ~2.5e6 "ok" because the guard used float64 rounding."""
    seed = int(np.random.SeedSequence().entropy % 2**31)
    w = (orthogonal(*shape, dtype, seed).double() * scale).to(dtype)
    n = min(shape)
    m = mean_log_excess(np_eigs(w.double().numpy()))
    assert m <= noise_level(n, dtype) / 4, (seed, m)  # the spec's premise, measured independently
    res = hill_alpha(w, return_status=True)
    assert res.status == [STATUS_FLAT], (seed, res)
    assert math.isnan(float(res.alpha[0]))


def spectrum_matrix(eigs: np.ndarray, rows: int, cols: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return with_spectrum(rng, np.sort(eigs), rows, cols)


def test_out_of_range_alpha_is_nan_with_its_own_status():
    """A measurable but tiny top-half spread (m = 0.005, alpha ~ 200): not flat, not a tail either."""
    n = 120
    rng = np.random.default_rng()
    eigs = np.exp(0.02 * rng.random(n))  # ln l uniform on [0, 0.02]: m about 0.005
    w = torch.from_numpy(spectrum_matrix(eigs, n, 200, int(rng.integers(2**31))))
    want = np_hill_paper(np_eigs(w.numpy()))
    assert 120 < want < 400 and mean_log_excess(np_eigs(w.numpy())) > 100 * noise_level(n, torch.float64)
    res = hill_alpha(w, return_status=True)
    assert res.status == [STATUS_OUT_OF_RANGE] and math.isnan(float(res.alpha[0]))
    assert float(hill_alpha(w, alpha_max=None)[0]) == pytest.approx(want, rel=1e-9)
    assert float(hill_alpha(w, alpha_max=1000.0)[0]) == pytest.approx(want, rel=1e-9)


def low_rank(rows: int, cols: int, rank: int, seed: int, dtype: torch.dtype) -> torch.Tensor:
    """An exactly rank-``rank`` product (heavy-tailed factor scales) computed in float32/64, stored in ``dtype``."""
    g = torch.Generator().manual_seed(seed)
    cd = torch.float64 if dtype == torch.float64 else torch.float32
    a = torch.randn(rows, rank, generator=g, dtype=cd) * torch.rand(rank, generator=g, dtype=cd).pow(-0.4)
    return (a @ torch.randn(rank, cols, generator=g, dtype=cd)).to(dtype)


def np_hill_nonzero(l: np.ndarray, r: int) -> float:
    """Eq. 2 on the r largest eigenvalues with k = floor(r / 2)."""
    return np_hill_paper(l[len(l) - r :])


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("rows,cols,rank", [(200, 300, 60), (300, 200, 99), (128, 400, 50)])
def test_rank_deficient_uses_the_nonzero_part(dtype, rows, cols, rank):
    """Numerical rank below n/2 (gradients of small batches): Eq. 2 on the r nonzero eigenvalues, k = r // 2,
    the rank read in the input's precision (bf16/fp16 rounding noise counts as zero)."""
    seed = int(np.random.SeedSequence().entropy % 2**31)
    w = low_rank(rows, cols, rank, seed, dtype)
    l = np_eigs(w.double().numpy())
    res = hill_alpha(w, return_status=True)
    assert res.status == [STATUS_OK_RANK_DEFICIENT], (seed, res)
    assert float(res.alpha[0]) == pytest.approx(np_hill_nonzero(l, rank), rel=1e-7), seed
    old = hill_alpha(w, rank_deficient="nan", return_status=True)
    assert old.status == [STATUS_RANK_DEFICIENT] and math.isnan(float(old.alpha[0]))
    few = hill_alpha(w, min_eigs=rank + 1, return_status=True)  # fewer nonzero eigenvalues than min_eigs
    assert few.status == [STATUS_RANK_DEFICIENT] and math.isnan(float(few.alpha[0]))


def test_rank_above_half_keeps_eq2():
    """Rank 3n/4: the threshold l_{n-k} is nonzero, so Eq. 2 over all n eigenvalues applies unchanged."""
    seed = int(np.random.SeedSequence().entropy % 2**31)
    w = low_rank(160, 240, 120, seed, torch.float64)
    res = hill_alpha(w, return_status=True)
    assert res.status == [STATUS_OK], seed
    assert float(res.alpha[0]) == pytest.approx(np_hill_paper(np_eigs(w.numpy())), rel=1e-8), seed


@pytest.mark.parametrize("dtype,scale", [(torch.float32, 1e-30), (torch.float32, 1e30), (torch.float64, 1e-200),
                                         (torch.float64, 1e200), (torch.bfloat16, 1e-35), (torch.float16, 1e-4)])
def test_scale_invariance_tiny_and_huge(dtype, scale):
    """alpha does not depend on the scale, even where a plain Gram would over- or underflow."""
    rng = np.random.default_rng()
    w = torch.from_numpy(with_spectrum(rng, pareto_eigs(rng, 96, 3.0), 96, 200))
    x = (w * scale).to(dtype)
    want = np_hill_paper(np_eigs((x.double() / scale).numpy()))
    res = hill_alpha(x, return_status=True)
    assert res.status == [STATUS_OK]
    assert float(res.alpha[0]) == pytest.approx(want, rel=1e-6)


def test_vectors_and_thin_matrices_are_too_few():
    mats = [torch.randn(1, 300), torch.randn(300, 1), torch.randn(2, 2), torch.randn(49, 1000)]
    res = hill_alpha(mats, return_status=True)
    assert res.status == [STATUS_TOO_FEW] * 4 and torch.isnan(res.alpha).all()
    assert hill_alpha(torch.randn(300, 1), min_eigs=2, return_status=True).status == [STATUS_TOO_FEW]
