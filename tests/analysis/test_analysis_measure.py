"""Metrics of ``analyze`` / ``measure_matrices`` against float64 numpy references written here from the formulas
(singular values by numpy's SVD, Eq. 2, the CSN/WeightWatcher KS fit as a plain loop, WeightWatcher's norm metrics
and entropy), on fresh heavy-tailed random matrices: float64 precision to 1e-9, the checked float32 path to its
1e-5 claim, WeightWatcher's conventions (``Settings.ww_compatible``), statuses and the two-checkpoint deltas."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from reference import alpha_np

from llr_kernels.analysis import Settings, analyze, compare, measure_matrices

EPS64 = np.finfo(np.float64).eps


def heavy(rng: np.random.Generator, shape, tail: float) -> np.ndarray:
    """A matrix with a power-law spectrum: G diag(s) H, s_i ~ i^-1/tail, plus Student-t noise."""
    n, m = shape[0], int(np.prod(shape[1:]))
    k = min(n, m)
    q1, _ = np.linalg.qr(rng.standard_normal((n, k)))
    q2, _ = np.linalg.qr(rng.standard_normal((m, k)))
    s = (np.arange(1, k + 1) ** (-1.0 / tail)) * rng.uniform(0.8, 1.2, k)
    w = (q1 * s) @ q2.T + 0.02 * rng.standard_t(3, (n, m)) / math.sqrt(m)
    return w.reshape(shape)


def np_eigs(w: np.ndarray) -> np.ndarray:
    return np.sort(np.linalg.svd(w.reshape(w.shape[0], -1).astype(np.float64), compute_uv=False) ** 2)


def np_ks(ev: np.ndarray, min_tail: int, floor: float) -> tuple[float, float, float, int]:
    """(alpha, xmin, D, tail size): every eigenvalue > floor with a tail of >= min_tail values is a candidate,
    the smallest KS distance wins (first on ties)."""
    best = (math.inf, math.nan, math.nan, 0)
    n = len(ev)
    for i in range(n):
        m = n - i
        if m < min_tail or ev[i] <= floor:
            continue
        logs = np.log(ev[i:] / ev[i])
        if logs.sum() <= 0:
            continue
        a = 1.0 + m / logs.sum()
        d = np.max(np.abs(1.0 - (ev[i:] / ev[i]) ** (1.0 - a) - np.arange(m) / m))
        if d < best[0]:
            best = (d, a, ev[i], m)
    d, a, x, m = best
    return a, x, d, m


def np_entropy(ev: np.ndarray, shape, ww: bool) -> float:
    sv = np.sqrt(ev)
    big = max(shape[0], int(np.prod(shape[1:])))
    rank = np.count_nonzero(sv > sv.max() * big * EPS64)  # numpy.linalg.matrix_rank's rule, float64 (as WW)
    p = ev / ev.sum()
    if ww:
        p = p + 1e-10
        return float(-np.sum(p * np.log(p)) / np.log(rank + 1e-10))
    p = p[p > 0]
    return float(-np.sum(p * np.log(p)) / np.log(1.000001 if rank == 1 else rank))


def references(w: np.ndarray, min_tail: int = 10, floor: float | None = None, ww: bool = False) -> dict:
    ev = np_eigs(w)
    fl = ev[-1] * 1e-8 if floor is None else floor  # full-rank test matrices: every eigenvalue is far above
    a_fit, xmin, d, m = np_ks(ev, min_tail, fl)
    return {"alpha": alpha_np(torch.from_numpy(w)), "alpha_fit": a_fit, "xmin": xmin, "ks_distance": d,
            "num_tail": m, "alpha_hat": a_fit * math.log10(ev[-1]), "spectral_norm": ev[-1],
            "frobenius_norm": float(np.sum(w.astype(np.float64) ** 2)), "stable_rank": ev.sum() / ev[-1],
            "entropy": np_entropy(ev, w.shape, ww)}


def matrices(seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    shapes = [(120, 200), (200, 120), (150, 150), (150, 150), (64, 16, 3, 3)]
    return [heavy(rng, s, rng.uniform(1.5, 4.0)) for s in shapes]


METRICS = ("alpha", "alpha_fit", "xmin", "ks_distance", "alpha_hat", "spectral_norm", "frobenius_norm",
           "stable_rank", "entropy")


def assert_rows(rows, refs, rel, seed, what):
    for i, (row, ref) in enumerate(zip(rows, refs)):
        assert row["status"] == "ok" and row["fit_status"] == "ok", (seed, i, row)
        assert row["num_tail"] == ref["num_tail"], f"seed={seed} {what} matrix {i}: tail {row['num_tail']} vs {ref}"
        for k in METRICS:  # D is a distance in [0, 1]: its tolerance is absolute
            want = pytest.approx(ref[k], abs=rel) if k == "ks_distance" else pytest.approx(ref[k], rel=rel)
            assert row[k] == want, f"seed={seed} {what} matrix {i} {k}"


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_float64_precision_matches_numpy(seed, dtype):
    ws = [torch.from_numpy(w).to(dtype) for w in matrices(seed)]
    rows = measure_matrices(ws, Settings(precision="float64"))
    refs = [references(w.double().numpy()) for w in ws]
    assert_rows(rows, refs, 1e-9, seed, f"float64 {dtype}")
    assert {r["precision"] for r in rows} == {"fp64"}


def test_auto_precision_meets_its_claim(seed):
    """Checked float32 Grams: every metric within 1e-5 relative of float64 (the documented tolerance), whether the
    matrix was settled in float32 or sent to float64 by a check; bf16 inputs too."""
    ws = [torch.from_numpy(w).float() for w in matrices(seed)]
    ws.append(torch.from_numpy(matrices(seed + 1)[0]).bfloat16())
    rows = measure_matrices(ws, Settings())
    refs = [references(w.double().numpy()) for w in ws]
    assert_rows(rows, refs, 1e-5, seed, "auto")
    print("precision per matrix:", [r["precision"] for r in rows])


def test_auto_precision_uses_float32_where_checks_pass(seed):
    """Norms alone are always within 1e-5 from a float32 Gram (lambda_max 7.6e-6, ||W||_F^2 from W): no matrix needs
    float64."""
    ws = [torch.from_numpy(w).float() for w in matrices(seed)]
    rows = measure_matrices(ws, Settings(metrics=("spectral_norm", "frobenius_norm", "stable_rank")))
    assert {r["precision"] for r in rows} == {"fp32-gram"}
    for w, row in zip(ws, rows):
        ref = references(w.double().numpy())
        for k in ("spectral_norm", "frobenius_norm", "stable_rank"):
            assert row[k] == pytest.approx(ref[k], rel=1e-5), f"seed={seed} {k}"


def test_alpha_alone_takes_the_checked_fast_path(seed):
    ws = [torch.from_numpy(w).float() for w in matrices(seed)]
    rows = measure_matrices(ws, Settings(metrics=("alpha",)))
    for w, row in zip(ws, rows):
        assert row["precision"] == "checked" and row["status"] == "ok"
        assert row["alpha"] == pytest.approx(alpha_np(w.double()), rel=1e-5), f"seed={seed}"


def test_ww_conventions_on_synthetic(seed):
    """Tails of >= 2 above an absolute 1e-5 floor and WeightWatcher's entropy formula (EPSILON 1e-10 moves the
    entropy by ~1e-7, so 1e-9 tells the formulas apart): the numpy loop with the same rules."""
    ws = [torch.from_numpy(w) for w in matrices(seed)]
    rows = measure_matrices(ws, Settings.ww_compatible())
    refs = [references(w.numpy(), min_tail=2, floor=1e-5, ww=True) for w in ws]
    assert_rows(rows, refs, 1e-9, seed, "ww")


def test_entropy_rank_counts_with_float64_eps_for_float32_weights(seed):
    """WeightWatcher casts to float64 before counting the rank, so a float32 matrix whose small singular values
    lie between sigma_max N eps_64 and sigma_max N eps_32 has full rank (the old rule used eps_32)."""
    rng = np.random.default_rng(seed)
    n, m = 100, 400
    q1, _ = np.linalg.qr(rng.standard_normal((n, n)))
    q2, _ = np.linalg.qr(rng.standard_normal((m, n)))
    s = np.linspace(1.0, 2.0, n)
    s[:10] = 10 ** rng.uniform(-5.5, -4.5, 10)  # below 400 eps_32 = 4.8e-5, far above the Gram's resolution
    w = torch.from_numpy((q1 * s) @ q2.T).float()
    ev = np_eigs(w.double().numpy())
    row = measure_matrices([w], Settings(metrics=("entropy",), precision="float64"))[0]
    assert row["entropy"] == pytest.approx(np_entropy(ev, w.shape, ww=False), rel=1e-9), f"seed={seed}"
    p = ev / ev.sum()
    rank32 = np.count_nonzero(np.sqrt(ev) > np.sqrt(ev[-1]) * m * np.finfo(np.float32).eps)
    assert rank32 < n
    old = -np.sum(p * np.log(p)) / np.log(rank32)
    assert abs(row["entropy"] - old) > 1e-3, f"seed={seed}: the test cannot tell the two rules apart"
    auto = measure_matrices([w], Settings(metrics=("entropy",)))[0]
    assert auto["entropy"] == pytest.approx(row["entropy"], rel=1e-5)


def test_statuses_of_degenerate_matrices(seed):
    torch.manual_seed(seed)
    bad = torch.randn(80, 90)
    bad[3, 4] = float("nan")
    ws = [torch.zeros(80, 90), bad, torch.randn(30, 90)]
    for prec in ("auto", "float64"):
        rows = measure_matrices(ws, Settings(precision=prec))
        assert [r["status"] for r in rows] == ["zero_matrix", "non_finite", "too_few_eigenvalues"]
        assert [r["fit_status"] for r in rows] == ["zero_matrix", "non_finite", "too_few_eigenvalues"]
        assert rows[0]["spectral_norm"] == 0.0 and rows[0]["frobenius_norm"] == 0.0
        assert math.isnan(rows[1]["spectral_norm"]) and math.isnan(rows[0]["entropy"])
        ref = np_eigs(ws[2].double().numpy())
        assert rows[2]["spectral_norm"] == pytest.approx(ref[-1], rel=1e-5)  # norms need no minimum size
        assert math.isnan(rows[2]["alpha"]) and math.isnan(rows[2]["alpha_fit"])


def test_compare_gives_per_layer_deltas(seed):
    ws = matrices(seed)
    names = ["layers.0.attn.q_proj.weight", "layers.0.mlp.up_proj.weight", "layers.1.attn.q_proj.weight"]
    before = {k: torch.from_numpy(w) for k, w in zip(names, ws)}
    after = {k: torch.from_numpy(w + 0.3 * heavy(np.random.default_rng(seed + 7), w.shape, 2.0))
             for k, w in zip(names[:2], ws)}
    after["lm_head.weight"] = torch.from_numpy(ws[3])
    cmp_ = compare(analyze(before, progress=False, precision="float64"),
                   analyze(after, progress=False, precision="float64"))
    assert [r["name"] for r in cmp_.rows] == names[:2]
    assert cmp_.only_before == names[2:] and cmp_.only_after == ["lm_head.weight"]
    for r in cmp_.rows:
        a0, a1 = alpha_np(before[r["name"]]), alpha_np(after[r["name"]])
        assert r["d_alpha"] == pytest.approx(a1 - a0, rel=1e-8, abs=1e-10), f"seed={seed}"
        assert r["before_alpha"] == pytest.approx(a0, rel=1e-9)
    with pytest.raises(ValueError, match="share no layer name"):
        compare(analyze(before, progress=False), analyze({"x.weight": before[names[0]]}, progress=False))


@pytest.mark.parametrize("metrics", [("entropy",), ("alpha_fit",), ("alpha", "alpha_hat", "spectral_norm")])
def test_whole_spectrum_metrics_go_straight_to_float64(seed, metrics):
    """The entropy and the KS fit read every eigenvalue; under the per-eigenvalue float32 bound their checks cannot
    pass, so "auto" measures them in float64 from the start, to the float64 tolerance."""
    ws = [torch.from_numpy(w).float() for w in matrices(seed)[:3]]
    rows = measure_matrices(ws, Settings(metrics=metrics))
    assert {r["precision"] for r in rows} == {"fp64"}, (seed, metrics)
    for w, row in zip(ws, rows):
        ref = references(w.double().numpy())
        for k in metrics:
            assert row[k] == pytest.approx(ref[k], rel=1e-9), f"seed={seed} {k}"


def test_spectrum_bound_covers_every_eigenvalue(seed):
    """SPECTRUM_GRAM32_ERR_C u32 mean(l) bounds every eigenvalue of a float32 Gram decomposed in float64 (numpy
    float64 reference), on a spiky trained-like spectrum (the kind with the largest measured ratio)."""
    from llr_kernels.analysis.measure import SPECTRUM_GRAM32_ERR_C, _spectra_gram32

    rng = np.random.default_rng(seed)
    for shape in ((200, 120), (150, 150), (96, 300)):
        w = heavy(rng, shape, rng.uniform(1.5, 3.0))
        w[:, :3] *= 30.0  # spikes
        wt = torch.from_numpy(w).float()
        sp = _spectra_gram32([wt])[0]
        ref = np_eigs(wt.double().numpy()) / 4.0**sp.exp
        assert sp.delta == pytest.approx(SPECTRUM_GRAM32_ERR_C * 2.0**-24 * ref.mean(), rel=1e-5)
        assert float(np.abs(sp.e.numpy() - ref).max()) <= sp.delta, (seed, shape)
