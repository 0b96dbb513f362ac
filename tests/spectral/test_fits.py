"""Power-law fits (llr_kernels/spectral/fits.py) against straightforward float64 numpy loops written here from the
published procedures (Clauset-Shalizi-Newman 2009; WeightWatcher / TempBalance xmin_peak with the log-space window
done consistently), and recovery of known Pareto tails. Seeds come from np.random.SeedSequence and are printed in
every assertion message (replay: LLR_TEST_SEED=<entropy>)."""
from __future__ import annotations

import math
import os

import numpy as np
import pytest
import torch

from llr_kernels.spectral.fits import FitResult, fit_esds, fit_power_law

MIN_TAIL = 10


def fresh_rng() -> tuple[np.random.Generator, int]:
    entropy = int(os.environ.get("LLR_TEST_SEED") or np.random.SeedSequence().entropy)
    print(f"seed = {entropy}")
    return np.random.default_rng(entropy), entropy


# ----- references: one ESD at a time, plain loops -----------------------------------------------------------
def ref_alpha_d(l: np.ndarray, i: int, num: float | None = None) -> tuple[float, float]:
    """MLE alpha with xmin = l[i] over the tail l[i:], and the KS distance max_t |F_fit - t/m| over that tail."""
    tail = l[i:]
    m = len(tail)
    xmin = l[i]
    s = sum(math.log(x / xmin) for x in tail)
    alpha = 1.0 + (m if num is None else num) / s
    d = max(abs(1.0 - (x / xmin) ** (1.0 - alpha) - t / m) for t, x in enumerate(tail))
    return alpha, d


def ref_ks(l: np.ndarray, floor: float, min_tail: int = MIN_TAIL, lo: float = 0.0, hi: float = math.inf):
    """CSN: every xmin = l[i] > floor with >= min_tail values from it (and lo <= l[i] <= hi): smallest D wins."""
    best = None
    n = len(l)
    for i in range(n):
        if not (l[i] > floor and n - i >= min_tail and lo <= l[i] <= hi):
            continue
        if not any(l[j] > l[i] for j in range(i, n)):
            continue  # a flat tail has no finite alpha
        a, d = ref_alpha_d(l, i)
        if best is None or d < best[2]:
            best = (i, a, d)
    return best


def ref_fix_finger(l: np.ndarray, floor: float, min_tail: int = MIN_TAIL, bins: int = 100, window=(0.95, 1.5)):
    nz = l[l > floor]
    counts, edges = np.histogram(np.log10(nz), bins=bins)
    xmin2 = 10.0 ** edges[int(np.argmax(counts))]
    best = ref_ks(l, floor, min_tail, window[0] * xmin2, window[1] * xmin2)
    if best is None:  # documented fallback: the candidate nearest the peak edge in log space
        n = len(l)
        cands = [i for i in range(n) if l[i] > floor and n - i >= min_tail and l[-1] > l[i]]
        i = min(cands, key=lambda j: abs(math.log10(l[j]) - math.log10(xmin2)))
        a, d = ref_alpha_d(l, i)
        best = (i, a, d)
    return best


def ref_median(l: np.ndarray):
    n = len(l)
    k = n // 2
    thr = n - k - 1  # l_{n-k} 1-based
    return (thr,) + ref_alpha_d(l, thr, num=k)


def default_floor(l: np.ndarray) -> float:
    return max(len(l) * np.finfo(np.float64).eps, 1e-8) * l[-1]


def random_spectra(rng: np.random.Generator, b: int, n: int) -> np.ndarray:
    """A mix of realistic ESDs: Marchenko-Pastur (Gaussian W), Pareto tails on a bulk, spiked bulks."""
    out = []
    for r in range(b):
        kind = r % 3
        if kind == 0:
            w = rng.standard_normal((n, int(n * rng.uniform(1.0, 3.0))))
            e = np.linalg.svd(w, compute_uv=False) ** 2
        elif kind == 1:
            a = rng.uniform(1.8, 5.0)
            e = np.concatenate([rng.uniform(0.05, 1.0, n - n // 3), 1.0 + rng.pareto(a - 1.0, n // 3)])
        else:
            e = rng.gamma(2.0, 1.0, n) * np.exp(rng.normal(0, 0.3, n))
            e[-5:] *= rng.uniform(5, 50, 5)
        out.append(np.sort(e))
    return np.stack(out)


def assert_matches(res: FitResult, l: np.ndarray, ref, what: str, msg: str) -> None:
    i, a, d = ref
    assert res.ks_distance.item() == pytest.approx(d, rel=1e-10, abs=1e-12), (what, msg)
    if res.xmin.item() != l[i]:  # a tie in D between two candidates (equal to ~1e-12) may pick either
        j = int(np.searchsorted(l, res.xmin.item()))
        assert abs(ref_alpha_d(l, j)[1] - d) < 1e-12, (what, "different xmin and not a tie", msg)
        return
    assert res.alpha.item() == pytest.approx(a, rel=1e-10), (what, msg)
    assert res.num_tail.item() == (len(l) // 2 if what == "median" else len(l) - i), (what, msg)


@pytest.mark.parametrize("n", [64, 257])
def test_vectorised_fits_match_python_loops(n):
    rng, seed = fresh_rng()
    spectra = random_spectra(rng, 6, n)
    batch = torch.from_numpy(spectra)
    got = {m: fit_power_law(batch, m, min_tail=MIN_TAIL) for m in ("median", "ks", "fix_finger")}
    for r, l in enumerate(spectra):
        msg = f"seed={seed} row={r} n={n}"
        fl = default_floor(l)
        for m, ref in (("median", ref_median(l)), ("ks", ref_ks(l, fl)), ("fix_finger", ref_fix_finger(l, fl))):
            assert_matches(FitResult(*(x[r] for x in got[m])), l, ref, m, msg)


def test_chunking_does_not_change_results():
    rng, seed = fresh_rng()
    batch = torch.from_numpy(random_spectra(rng, 4, 300))
    for m in ("ks", "fix_finger"):
        a = fit_power_law(batch, m)
        b = fit_power_law(batch, m, chunk_elems=1)  # one candidate per chunk
        for x, y in zip(a, b):
            assert torch.equal(x, y), (m, f"seed={seed}")


def test_rank_deficient_and_bad_rows():
    rng, seed = fresh_rng()
    l = np.sort(rng.gamma(2.0, 1.0, 200))
    l[:120] = 0.0  # rank 80: zeros are never an xmin
    nan_row = np.full(200, np.nan)
    zero_row = np.zeros(200)
    batch = torch.from_numpy(np.stack([l, nan_row, zero_row]))
    fl = default_floor(l)
    ks = fit_power_law(batch, "ks")
    assert_matches(FitResult(*(x[0] for x in ks)), l, ref_ks(l, fl), "ks", f"seed={seed}")
    ff = fit_power_law(batch, "fix_finger")
    assert_matches(FitResult(*(x[0] for x in ff)), l, ref_fix_finger(l, fl), "fix_finger", f"seed={seed}")
    med = fit_power_law(batch, "median")  # hill.py rule 6: Eq. 2 on the 80 nonzero eigenvalues
    i, a, d = ref_median(l[120:])
    assert med.alpha[0].item() == pytest.approx(a, rel=1e-10), f"seed={seed}"
    assert med.ks_distance[0].item() == pytest.approx(d, rel=1e-10), f"seed={seed}"
    for res in (ks, ff, med):
        assert torch.isnan(res.alpha[1:]).all() and (res.num_tail[1:] == 0).all()


@pytest.mark.parametrize("alpha", [2.0, 2.5, 3.5, 5.0])
@pytest.mark.parametrize("method", ["ks", "fix_finger"])
def test_recovers_pareto_tail(alpha, method):
    """i.i.d. Pareto eigenvalues, density ~ l^-alpha on [1, inf). The MLE with m tail points has standard error
    (alpha - 1) / sqrt(m) (CSN 2009, Eq. 3.2); the fit must lie within 5 of those of the truth (a two-sided 5-sigma
    event: ~6e-7 per draw for a normal estimator), with m the fit's own num_tail."""
    rng, seed = fresh_rng()
    n = 2000
    e = np.sort(1.0 + rng.pareto(alpha - 1.0, n))
    res = fit_power_law(torch.from_numpy(e), method)
    m = res.num_tail.item()
    tol = 5.0 * (alpha - 1.0) / math.sqrt(m)
    assert abs(res.alpha.item() - alpha) < tol, (method, alpha, res, f"seed={seed}")


def test_ks_finds_tail_above_bulk():
    """Uniform bulk on [0.05, 1] under a Pareto tail on [2, inf): KS must not fit the bulk (xmin >= 1) and alpha
    must be within 5 standard errors of the truth for the tail it chose."""
    rng, seed = fresh_rng()
    alpha = 3.0
    e = np.sort(np.concatenate([rng.uniform(0.05, 1.0, 1200), 2.0 * (1.0 + rng.pareto(alpha - 1.0, 800))]))
    res = fit_power_law(torch.from_numpy(e), "ks")
    assert res.xmin.item() >= 1.0, (res, f"seed={seed}")
    assert abs(res.alpha.item() - alpha) < 5.0 * (alpha - 1.0) / math.sqrt(res.num_tail.item()), (res, f"seed={seed}")


def test_fit_esds_mixed_lengths():
    rng, seed = fresh_rng()
    eigs = [torch.from_numpy(np.sort(rng.gamma(2.0, 1.0, n))) for n in (80, 150, 80, 60, 150)]
    for m in ("median", "ks", "fix_finger"):
        res = fit_esds(eigs, m)
        for i, e in enumerate(eigs):
            one = fit_power_law(e, m)
            for x, y in zip(res, one):
                assert x[i].item() == pytest.approx(y.item(), rel=1e-12), (m, i, f"seed={seed}")


def test_bad_arguments():
    e = torch.rand(100, dtype=torch.float64).sort().values
    with pytest.raises(ValueError, match="fit must be one of"):
        fit_power_law(e, "mle")
    with pytest.raises(ValueError, match="batched_eigenvalues first"):
        fit_power_law(torch.rand(2, 3, 4), "ks")
    with pytest.raises(ValueError, match="pass variant='paper'"):
        fit_power_law(e, "ks", variant="reference")
    with pytest.raises(ValueError, match="min_tail must be an integer >= 2"):
        fit_power_law(e, "ks", min_tail=1)
    with pytest.raises(ValueError, match="window must be"):
        fit_power_law(e, "fix_finger", window=(1.2, 1.5))
    with pytest.raises(ValueError, match="one ESD per item"):
        fit_esds([torch.rand(3, 3)], "ks")
