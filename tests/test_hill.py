"""hill_alpha (exact) against an independent float64 numpy computation of paper Eq. 2."""
import math

import numpy as np
import pytest
import torch

from llr_kernels.spectral import (
    STATUS_FLAT,
    STATUS_NON_FINITE,
    STATUS_OK,
    STATUS_RANK_DEFICIENT,
    STATUS_TOO_FEW,
    STATUS_ZERO,
    hill_alpha,
)


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
