"""Deterministic cases of the spectral paths' status and rank branches (target mode included), where the other
spectral tests check them statistically.

* A full Krylov space on a Gram whose eigenvectors are the coordinate axes (W = P diag(sigma) Q_n with P a signed
  permutation, Q orthogonal: W W^T = P diag(sigma^2) P^T): with steps >= the number of distinct eigenvalues every
  Rademacher probe's Gauss rule has the eigenvalues as nodes and weight 1/n on each, so SLQ is a closed form (its
  node cells as documented in ops/hill/naive.py: Eq. 2's threshold falls on the node, the tail log-sum is Eq. 2's
  plus the threshold cell's own h/4), the same for every probe (jackknife stderr 0).
* Rank-deficient matrices of known rank: statuses and alphas of every path (float64 reference, batched exact,
  SLQ) from hill.py's rule 6 written out here (r <= k: Eq. 2 on the r nonzero eigenvalues, k' = floor(r/2), or
  "rank_deficient" below min_eigs / with rank_deficient="nan"; r > k: Eq. 2 unchanged).
* A tail whose status differs between half and full steps: rank r with steps/2 < r + 1 <= steps (the half-steps
  rule cannot see the zero eigenvalues): the steps term is inf, target mode hands the matrix to exact or flags it.
* The fits' and metrics' rank rules against hill_alpha's, and the entropy's rank on matrices of known rank.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from llr_kernels.spectral import hill_alpha
from llr_kernels.spectral.batched import hill_alpha_fast
from llr_kernels.spectral.fits import fit_power_law
from llr_kernels.spectral.metrics import layer_metrics, measure

MIN_EIGS = 16
SLQ = dict(method="lanczos", probes=8, groups=4, min_eigs=MIN_EIGS)


def axis_gram_matrix(lams: np.ndarray, m: int, rng: np.random.Generator) -> torch.Tensor:
    """An n x m float64 matrix (n = len(lams) <= m) whose Gram W W^T is diag(lams) up to a signed permutation."""
    n = len(lams)
    q, _ = np.linalg.qr(rng.standard_normal((m, m)))
    p = np.zeros((n, n))
    p[np.arange(n), rng.permutation(n)] = rng.choice([-1.0, 1.0], n)
    return torch.from_numpy(p @ np.diag(np.sqrt(lams)) @ q[:n])


def cell_half_width(u: np.ndarray, t: int) -> float:
    """Half-width of node t's cell among ascending log-nodes u (ops/hill/naive.py node_cells): a quarter of the
    two gaps, capped at the smaller one; an end node takes half of its one gap."""
    if t == 0 or t == len(u) - 1:
        return 0.5 * (u[1] - u[0] if t == 0 else u[-1] - u[-2])
    left, right = u[t] - u[t - 1], u[t + 1] - u[t]
    return min(0.25 * (left + right), left, right)


def threshold_index(n: int, variant: str) -> tuple[int, int]:
    """(0-based index of Eq. 2's threshold among n ascending eigenvalues, Eq. 2's numerator)."""
    return (n - n // 2 - 1, n // 2) if variant == "paper" else (n // 2, n - n // 2)


def rule6_part(lams: np.ndarray, variant: str) -> tuple[np.ndarray, int, int]:
    """hill.py rule 6: (the eigenvalues Eq. 2 runs on, ascending; its threshold index there; its numerator):
    all n when the threshold is nonzero (r > k), else the r nonzero ones with r's own indices."""
    lam = np.sort(lams)
    t, num = threshold_index(lam.size, variant)
    if lam[t] > 0:
        return lam, t, num
    nz = lam[lam > 0]
    return (nz, *threshold_index(nz.size, variant))


def eq2_rule6(lams: np.ndarray, variant: str = "paper") -> float:
    """Float64 Eq. 2 as rule 6 applies it (the rank-aware k where the threshold is zero)."""
    lam, t, num = rule6_part(lams, variant)
    return 1.0 + num / float(np.sum(np.log(lam[t + 1:] / lam[t])))


def slq_closed_form(lams: np.ndarray, variant: str = "paper") -> float:
    """SLQ's alpha of a coordinate-axis Gram with a full Krylov space: Eq. 2 (rule 6) with the threshold cell's
    h/4 added to the log-sum; zero eigenvalues are one point mass, outside every cell."""
    lam, t, num = rule6_part(lams, variant)
    nz = lam[lam > 0]
    t -= lam.size - nz.size  # the threshold's place among the nonzero (live) nodes
    u = np.log(nz)
    return 1.0 + num / (float(np.sum(u[t + 1:] - u[t])) + cell_half_width(u, t) / 4.0)


def spectrum(rng: np.random.Generator, n: int, rank: int) -> np.ndarray:
    """n eigenvalues: ``rank`` distinct ones log-uniform over e^-3 .. e^3, the rest exactly zero."""
    lams = np.zeros(n)
    lams[:rank] = np.exp(rng.uniform(-3.0, 3.0, rank))
    return rng.permutation(lams)


# ------------------------------------------------------------------------------------------- full Krylov space
@pytest.mark.parametrize("variant", ["paper", "reference"])
@pytest.mark.parametrize("n", [48, 63])
def test_full_krylov_space_makes_slq_its_closed_form(n, variant, seed):
    rng = np.random.default_rng(seed)
    lams = spectrum(rng, n, n)
    w = axis_gram_matrix(lams, n + 17, rng)
    for steps in (n, n + 9):
        rep: dict = {}
        res = hill_alpha_fast([w], steps=steps, variant=variant, report=rep, seed=seed % 1000, **{**SLQ})
        assert res.status == ["ok"], (seed, res)
        assert float(res.alpha[0]) == pytest.approx(slq_closed_form(lams, variant), rel=1e-12, abs=0), (seed, steps)
        assert float(rep["stderr"][0]) < 1e-12, (seed, rep["stderr"])  # every probe gives the same answer
    exact = hill_alpha([w], method="exact", variant=variant, min_eigs=MIN_EIGS)
    assert float(exact[0]) == pytest.approx(eq2_rule6(lams, variant), rel=1e-12), seed


# ------------------------------------------------------------------------------------ known rank, every path
def rule6(lams: np.ndarray, min_eigs: int, mode: str = "nonzero") -> tuple[float, str]:
    """hill.py rule 6 written out: the expected (alpha, status) of a spectrum with exact zeros."""
    n, r = lams.size, int((lams > 0).sum())
    if r > n // 2:
        return eq2_rule6(lams), "ok"
    if mode == "nan" or r < max(2, min_eigs):
        return float("nan"), "rank_deficient"
    return eq2_rule6(lams), "ok_rank_deficient"


@pytest.mark.parametrize("rank", [10, 16, 20, 31, 32, 33, 40, 64])
def test_known_rank_statuses_and_alphas_on_every_path(rank, seed):
    """n = 64 (k = 32): ranks below min_eigs, at it, between it and k, at k, just above, full."""
    rng = np.random.default_rng(seed)
    lams = spectrum(rng, 64, rank)
    w = axis_gram_matrix(lams, 96, rng)
    want_a, want_st = rule6(lams, MIN_EIGS)
    paths = {
        "exact": hill_alpha([w], method="exact", min_eigs=MIN_EIGS, return_status=True),
        "auto": hill_alpha([w], method="auto", min_eigs=MIN_EIGS, return_status=True),
        "auto-fp32": hill_alpha([w.float()], method="auto", min_eigs=MIN_EIGS, return_status=True),
        "metrics": measure([w], "alpha", min_eigs=MIN_EIGS),
    }
    for name, (a, st) in paths.items():
        assert list(st) == [want_st], (seed, name, st)
        if want_st == "rank_deficient":
            assert math.isnan(float(a[0])), (seed, name)
        else:
            tol = 1e-10 if name != "auto-fp32" else 1e-5
            assert float(a[0]) == pytest.approx(want_a, rel=tol), (seed, name)
    nan_mode = hill_alpha([w], method="exact", min_eigs=MIN_EIGS, rank_deficient="nan", return_status=True)
    assert nan_mode.status == [rule6(lams, MIN_EIGS, "nan")[1]], (seed, nan_mode)
    # SLQ with a full Krylov space (rank + 1 distinct eigenvalues): the rank from the zero mass, exactly
    slq = hill_alpha_fast([w], steps=rank + 1 if rank < 64 else 64, seed=seed % 1000, **SLQ)
    assert slq.status == [want_st], (seed, slq)
    if want_st != "rank_deficient":
        assert float(slq.alpha[0]) == pytest.approx(slq_closed_form(lams), rel=1e-12), seed


def test_status_differs_between_half_and_full_steps(seed):
    """Rank 24 of 64 (k = 32), steps 30: the full rule sees the 25 distinct eigenvalues (zero included) and says
    ok_rank_deficient; the half-steps rule (15 nodes) cannot place mass at zero and says otherwise. The steps term
    is inf, so the bound is inf: target mode hands the matrix to exact ("exact") or reports it missed ("flag")."""
    rng = np.random.default_rng(seed)
    lams = spectrum(rng, 64, 24)
    good = spectrum(rng, 64, 64)
    mats = [axis_gram_matrix(lams, 80, rng), axis_gram_matrix(good, 80, rng)]
    kw = dict(steps=30, seed=seed % 1000, target_error=1.0, **SLQ)  # a loose target: only the inf must miss
    rep: dict = {}
    flagged = hill_alpha_fast(mats, target_fallback="flag", report=rep, **kw)
    assert rep["status_fixed"][0] == "ok_rank_deficient" and float(rep["steps_error"][0]) == math.inf, (seed, rep)
    assert float(rep["error_est"][0]) == math.inf and not bool(rep["target_met"][0]), seed
    assert float(flagged.alpha[0]) == pytest.approx(slq_closed_form(lams), rel=1e-12), seed  # SLQ's own, flagged
    assert math.isfinite(float(rep["steps_error"][1])) and bool(rep["target_met"][1]), (seed, rep)
    rep = {}
    handed = hill_alpha_fast(mats, target_fallback="exact", report=rep, **kw)
    assert 0 in list(rep["to_exact"]) and 1 not in list(rep["to_exact"]), (seed, rep["to_exact"])
    assert handed.status[0] == "ok_rank_deficient"
    assert float(handed.alpha[0]) == pytest.approx(eq2_rule6(lams), rel=1e-5), seed  # exact's answer
    rep = {}
    hill_alpha_fast(mats[:1], steps=52, seed=seed % 1000, target_error=1.0, report=rep, target_fallback="flag",
                    **{k: v for k, v in SLQ.items()})
    assert float(rep["steps_error"][0]) < 1e-12, rep  # 26 half steps >= 25: both rules exact, no steps term


# ------------------------------------------------------------------------------- fits and metrics vs hill_alpha
@pytest.mark.parametrize("rank", [12, 24, 40, 64])
@pytest.mark.parametrize("min_eigs", [16, 50])
def test_fits_and_metrics_rank_rules_follow_hill_alpha(rank, min_eigs, seed):
    """Every fit applies hill_alpha's rank rule: "rank_deficient" exactly where hill_alpha says so (rank below
    min_eigs only matters when Eq. 2's threshold is zero); a finite alpha otherwise, its xmin above zero and its
    tail within the nonzero part. The median fit equals hill_alpha; alpha_hat has alpha's status."""
    rng = np.random.default_rng(seed)
    u, _ = np.linalg.qr(rng.standard_normal((64, rank)))
    v, _ = np.linalg.qr(rng.standard_normal((96, rank)))
    w = torch.from_numpy((u * rng.uniform(0.5, 2.0, rank)) @ v.T)  # dense, rank known, nonzero part well conditioned
    h = hill_alpha([w], method="exact", min_eigs=min_eigs, return_status=True)
    lam = np.sort(np.linalg.eigvalsh(w.numpy() @ w.numpy().T))
    nonzero = lam[lam > 1e-8 * lam[-1]]
    assert nonzero.size == rank, "the construction has the rank it says"
    want = "ok" if rank > 32 else "rank_deficient" if rank < min_eigs else "ok_rank_deficient"
    assert h.status == [want], (seed, h)
    for fit in ("median", "ks", "fix_finger"):
        a, st = measure([w], "alpha", fit=fit, min_eigs=min_eigs)
        hat = layer_metrics([w], ("alpha_hat",), fit=fit, min_eigs=min_eigs).status["alpha_hat"]
        assert hat == st, (fit, hat, st)
        if want == "rank_deficient":
            assert st == ["rank_deficient"] and math.isnan(float(a[0])), (seed, fit, st)
            continue
        assert st[0] in ("ok", "ok_rank_deficient") and math.isfinite(float(a[0])), (seed, fit, st, rank, min_eigs)
        if fit == "median":
            assert st == h.status and float(a[0]) == pytest.approx(float(h.alpha[0]), rel=1e-12), (seed, fit)
        else:
            res = fit_power_law(torch.from_numpy(lam), fit)
            assert float(res.xmin[0] if res.xmin.dim() else res.xmin) > 1e-8 * lam[-1], (seed, fit)
            assert int(res.num_tail.reshape(-1)[0]) <= rank, (seed, fit, res)
    med = fit_power_law(torch.from_numpy(lam), "median")
    if rank >= 2:
        assert float(med.alpha.reshape(-1)[0]) == pytest.approx(eq2_rule6(np.where(lam > 1e-8 * lam[-1], lam, 0)),
                                                                rel=1e-10), seed


@pytest.mark.parametrize("rank", [1, 7, 30])
def test_entropy_normalises_by_the_known_rank(rank, seed):
    """WeightWatcher's entropy: -sum p ln p / ln R with R the numerical rank, here known exactly."""
    rng = np.random.default_rng(seed)
    lams = spectrum(rng, 40, rank)
    w = axis_gram_matrix(lams, 55, rng)
    p = np.sort(lams[lams > 0]) / lams.sum()
    want = -np.sum(p * np.log(p)) / math.log(1.000001 if rank == 1 else rank)
    got = layer_metrics([w], ("entropy",)).values["entropy"]
    assert float(got[0]) == pytest.approx(want, rel=1e-9, abs=1e-12), seed


def test_float32_eigensolver_failure_falls_through_to_float64(seed):
    """LAPACK's float32 eigvalsh fails to converge on some Grams with many repeated zero eigenvalues (about 1 in 4
    rank-10 coordinate-axis matrices of n = 64) and the op returns NaN: the matrix is finite, so the checked tiers
    hand it to float64 (rule 6: "rank_deficient" here), never call it "non_finite"."""
    from llr_kernels.spectral.context import op

    _, eig32 = op("gram_eigvalsh", "auto", torch.device("cpu"))
    rng = np.random.default_rng(seed)
    for _ in range(200):  # P(no failing draw in 200) < 1e-20 at the measured rate
        lams = spectrum(rng, 64, 10)
        w = axis_gram_matrix(lams, 96, rng).float()
        if bool(torch.isnan(eig32([w], torch.float32, False)[0]).any()):
            break
    else:
        pytest.fail(f"no draw made float32 eigvalsh fail (seed {seed}): the test no longer reaches its branch")
    assert torch.isfinite(w).all()
    for method in ("auto", "exact"):
        res = hill_alpha([w], method=method, min_eigs=MIN_EIGS, return_status=True)
        assert res.status == [rule6(lams, MIN_EIGS)[1]] == ["rank_deficient"], (seed, method, res)
