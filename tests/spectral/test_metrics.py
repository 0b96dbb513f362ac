"""Layer metrics (llr_kernels/spectral/metrics.py, esd.py) against float64 numpy formulas written here from
WeightWatcher's / TempBalance's definitions (numpy SVD, not the Gram/eigvalsh path), on fresh random matrices of
mixed shapes; measure(alpha, median) against hill_alpha(method="exact"). Seeds come from np.random.SeedSequence
and are printed in every assertion message (replay: LLR_TEST_SEED=<entropy>)."""
from __future__ import annotations

import math
import os

import numpy as np
import pytest
import torch

from llr_kernels.spectral import hill_alpha
from llr_kernels.spectral.esd import batched_eigenvalues
from llr_kernels.spectral.fits import fit_power_law
from llr_kernels.spectral.metrics import METRICS, frobenius, layer_metrics, measure

# wide, tall, square, repeated shapes (batched together), a >2-D weight viewed as (shape[0], -1)
SHAPES = [(96, 300), (300, 96), (128, 128), (96, 300), (64, 4, 25), (300, 96), (200, 60)]


def fresh_rng() -> tuple[np.random.Generator, int]:
    entropy = int(os.environ.get("LLR_TEST_SEED") or np.random.SeedSequence().entropy)
    print(f"seed = {entropy}")
    return np.random.default_rng(entropy), entropy


def random_matrices(rng: np.random.Generator, shapes=SHAPES) -> list[np.ndarray]:
    """Gaussian, heavy-tailed (Student-t entries) and scaled matrices, so metrics vary across layers."""
    out = []
    for i, s in enumerate(shapes):
        if i % 3 == 0:
            w = rng.standard_normal(s)
        elif i % 3 == 1:
            w = rng.standard_t(2.5, s)
        else:
            w = rng.standard_normal(s) * 10.0 ** rng.uniform(-3, 2)
        out.append(w)
    return out


def np_sv(w: np.ndarray) -> np.ndarray:
    return np.sort(np.linalg.svd(w.reshape(w.shape[0], -1), compute_uv=False))


def np_metrics(w: np.ndarray, eps: float = np.finfo(np.float64).eps) -> dict[str, float]:
    """WeightWatcher's apply_norm_metrics / matrix_entropy and paper Eq. 2, from numpy singular values."""
    sv = np_sv(w)
    ev = sv**2
    n = len(ev)
    k = n // 2
    alpha = 1.0 + k / sum(math.log(ev[n - i] / ev[n - k - 1]) for i in range(1, k + 1))
    big = max(w.shape[0], int(np.prod(w.shape[1:])))
    rank = int(np.count_nonzero(sv > sv.max() * big * eps))
    p = ev / ev.sum()
    p = p[p > 0]
    entropy = -np.sum(p * np.log(p)) / np.log(1.000001 if rank == 1 else rank)
    return {
        "alpha": alpha,
        "alpha_hat": alpha * math.log10(ev.max()),
        "spectral_norm": ev.max(),
        "frobenius_norm": float(np.sum(w.astype(np.float64) ** 2)),  # ||W||_F^2 straight from the entries
        "stable_rank": ev.sum() / ev.max(),
        "entropy": float(entropy),
    }


def test_batched_eigenvalues_match_numpy_svd():
    rng, seed = fresh_rng()
    ws = random_matrices(rng)
    eigs = batched_eigenvalues([torch.from_numpy(w) for w in ws])
    for w, e in zip(ws, eigs):
        ref = np_sv(w) ** 2
        assert e.dtype == torch.float64 and e.device.type == "cpu" and e.shape == ref.shape, f"seed={seed}"
        assert (e >= 0).all() and (e[1:] >= e[:-1]).all(), f"seed={seed}"
        np.testing.assert_allclose(e.numpy(), ref, rtol=1e-9, atol=1e-12 * ref[-1], err_msg=f"seed={seed}")


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_every_metric_matches_numpy(dtype):
    rng, seed = fresh_rng()
    ws = [torch.from_numpy(w).to(dtype) for w in random_matrices(rng)]
    res = layer_metrics(ws, min_eigs=50)
    assert set(res.values) == set(METRICS)
    for i, w in enumerate(ws):
        ref = np_metrics(w.double().numpy())  # float64 eps for every dtype: WeightWatcher casts to float64 first
        for name in METRICS:
            msg = f"seed={seed} {name} shape={tuple(w.shape)} dtype={dtype}"
            assert res.status[name][i] == "ok", msg
            v = res.values[name][i].item()
            assert v == pytest.approx(ref[name], rel=1e-9, abs=1e-12), msg
            assert measure(ws[i : i + 1], name)[0].item() == pytest.approx(v, rel=1e-12), msg


def test_alpha_median_equals_hill_alpha_exact():
    """measure(alpha, median) is hill_alpha(method="exact") to 1e-10, statuses included, on ordinary and edge
    matrices (too few eigenvalues, zero, non-finite, rank deficient, flat, float32)."""
    rng, seed = fresh_rng()
    ws = [torch.from_numpy(w) for w in random_matrices(rng)]
    u, _ = np.linalg.qr(rng.standard_normal((120, 120)))
    low = rng.standard_normal((100, 20)) @ rng.standard_normal((20, 140))  # rank 20 < min_eigs
    mid = rng.standard_normal((100, 70)) @ rng.standard_normal((70, 140))  # rank 70: Eq. 2 unchanged
    low40 = rng.standard_normal((200, 80)) @ rng.standard_normal((80, 240))  # rank 80 <= k: rank-aware Eq. 2
    ws += [torch.randn(30, 200, dtype=torch.float64), torch.zeros(64, 80, dtype=torch.float64),
           torch.full((64, 64), float("inf"), dtype=torch.float64), torch.from_numpy(u), torch.from_numpy(low),
           torch.from_numpy(mid), torch.from_numpy(low40), torch.randn(150, 90)]
    for variant in ("paper", "reference"):
        got, st = measure(ws, "alpha", variant=variant)
        ref = hill_alpha(ws, method="exact", variant=variant, return_status=True)
        assert st == ref.status, f"seed={seed} {variant}"
        assert torch.allclose(got, ref.alpha, rtol=1e-10, atol=0, equal_nan=True), (got, ref.alpha, f"seed={seed}")
    assert "ok" in st and "too_few_eigenvalues" in st and "zero_matrix" in st and "non_finite" in st
    assert "rank_deficient" in st and "ok_rank_deficient" in st


@pytest.mark.parametrize("fit", ["ks", "fix_finger"])
def test_alpha_other_fits_use_the_fits_module(fit):
    rng, seed = fresh_rng()
    ws = [torch.from_numpy(w) for w in random_matrices(rng)]
    got, st = measure(ws, "alpha", fit=fit)
    eigs = batched_eigenvalues(ws)
    for i, e in enumerate(eigs):
        ref = fit_power_law(e, fit).alpha.item()
        if st[i] == "ok":
            assert got[i].item() == pytest.approx(ref, rel=1e-9), f"seed={seed} {i}"
        else:
            assert st[i] == "out_of_range" and ref > 50 and math.isnan(got[i].item()), f"seed={seed} {i}"
    hat, st_hat = measure(ws, "alpha_hat", fit=fit)
    assert st_hat == st
    lmax = torch.stack([e[-1] for e in eigs])
    assert torch.allclose(hat, got * torch.log10(lmax), rtol=1e-12, equal_nan=True), f"seed={seed}"


def test_entropy_rank_deficient_and_edge_statuses():
    rng, seed = fresh_rng()
    low = rng.standard_normal((90, 12)) @ rng.standard_normal((12, 200))  # rank 12
    one = np.outer(rng.standard_normal(70), rng.standard_normal(110))  # rank 1: WeightWatcher's 1.000001
    ws = [torch.from_numpy(low), torch.from_numpy(one), torch.zeros(60, 80, dtype=torch.float64),
          torch.full((60, 80), float("nan"), dtype=torch.float64), torch.randn(5, 7, dtype=torch.float64)]
    res = layer_metrics(ws)
    for i in (0, 1):
        sv = np_sv(ws[i].numpy())
        ev = sv**2
        p = ev / ev.sum()
        p = p[p > 1e-300]  # the zero singular values of an exactly low-rank matrix contribute 0 ln 0 = 0
        rank = 12 if i == 0 else 1.000001
        ref = -np.sum(p * np.log(p)) / np.log(rank)
        assert res.values["entropy"][i].item() == pytest.approx(ref, rel=1e-6, abs=1e-6), f"seed={seed} {i}"
    assert res.status["alpha"][:2] == ["rank_deficient", "rank_deficient"]
    assert res.values["spectral_norm"][2].item() == 0.0 and res.status["spectral_norm"][2] == "zero_matrix"
    assert res.values["frobenius_norm"][2].item() == 0.0
    for name in ("stable_rank", "entropy", "alpha", "alpha_hat"):
        assert math.isnan(res.values[name][2].item()) and res.status[name][2] == "zero_matrix", name
    for name in METRICS:
        assert math.isnan(res.values[name][3].item()) and res.status[name][3] == "non_finite", name
    assert res.status["alpha"][4] == "too_few_eigenvalues" and res.status["spectral_norm"][4] == "ok"


def test_huge_and_tiny_scales():
    """Scale-invariant metrics survive matrices whose Gram over/underflows float64; norms scale exactly."""
    rng, seed = fresh_rng()
    w = rng.standard_normal((80, 120))
    base = layer_metrics([torch.from_numpy(w)])
    for e in (-300, 300):
        res = layer_metrics([torch.from_numpy(w * 2.0**e)])
        for name in ("alpha", "stable_rank", "entropy"):
            assert res.values[name][0].item() == pytest.approx(base.values[name][0].item(), rel=1e-12), (name, e)
        assert res.values["alpha_hat"][0].item() == pytest.approx(
            base.values["alpha"][0].item() * (math.log10(base.values["spectral_norm"][0].item()) + 2 * e *
                                               math.log10(2)), rel=1e-10), f"seed={seed}"


def test_frobenius_on_gradients():
    rng, seed = fresh_rng()
    gs = [rng.standard_normal(s) for s in [(96, 300), (300,), (64, 4, 25), (96, 300), (1,)]]
    got = frobenius([torch.from_numpy(g).float() for g in gs])
    ref = [float(np.sqrt(np.sum(g.astype(np.float32).astype(np.float64) ** 2))) for g in gs]
    np.testing.assert_allclose(got.numpy(), ref, rtol=1e-12, err_msg=f"seed={seed}")
    sq = frobenius([torch.from_numpy(g) for g in gs], squared=True)
    np.testing.assert_allclose(sq.numpy(), [np.sum(g**2) for g in gs], rtol=1e-12, err_msg=f"seed={seed}")
    only = layer_metrics([torch.from_numpy(gs[0])], ("frobenius_norm",))  # no eigendecomposition on this path
    assert only.values["frobenius_norm"][0].item() == pytest.approx(np.sum(gs[0] ** 2), rel=1e-12)


def test_bad_arguments():
    w = [torch.randn(60, 70)]
    with pytest.raises(ValueError, match="unknown metric.*choose from"):
        measure(w, "alpha_tilde")
    with pytest.raises(ValueError, match=r"metrics\.frobenius\(grads\)"):
        measure(w, "grad_norm")
    with pytest.raises(ValueError, match="fit must be one of"):
        measure(w, "alpha", fit="mle")
    with pytest.raises(ValueError, match="need 2-D weights"):
        measure([torch.randn(60)], "alpha")
    with pytest.raises(ValueError, match="wrap a single matrix as"):
        measure(torch.randn(60, 70), "alpha")
    with pytest.raises(ValueError, match="pass variant='paper'"):
        measure(w, "alpha", fit="ks", variant="reference")
    with pytest.raises(ValueError, match="min_eigs must be >= 2"):
        measure(w, "alpha", min_eigs=1)
    with pytest.raises(ValueError, match="floating matrix"):
        batched_eigenvalues([torch.randn(5)])
    with pytest.raises(ValueError, match="floating tensors"):
        frobenius([torch.ones(3, dtype=torch.long)])
