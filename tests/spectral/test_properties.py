"""Property-based tests (hypothesis) of hill_alpha over shapes, dtypes and values (inf, NaN, zeros, tiny and huge
scales, orthogonal, rank-deficient, spiked): the float64 reference, the fast exact path and Lanczos never raise;
an alpha is finite, > 1 and <= alpha_max exactly when its status is "ok"/"ok_rank_deficient", else NaN; the fast
exact path has the reference's statuses and alphas within 1e-5; and on families whose status is not a near
call, Lanczos gives the same status as exact. Every example prints its seed through hypothesis on failure.
"""
import math

import numpy as np
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llr_kernels.spectral import OK_STATUSES, hill_alpha

STATUSES = {"ok", "ok_rank_deficient", "too_few_eigenvalues", "non_finite", "zero_matrix", "rank_deficient",
            "flat_spectrum", "out_of_range"}
DTYPES = [torch.float32, torch.bfloat16, torch.float16, torch.float64]
LANCZOS = dict(probes=16, steps=24, groups=4)
SETTINGS = dict(deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])



def orthogonal(rows: int, cols: int, g: torch.Generator) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(max(rows, cols), min(rows, cols), generator=g, dtype=torch.float64))
    return q if rows >= cols else q.T


def build(kind: str, rows: int, cols: int, seed: int, rank: int = 1, spike: float = 1.0) -> torch.Tensor:
    """A float64 matrix of the given kind (cast by the caller)."""
    g = torch.Generator().manual_seed(seed)
    if kind == "gauss":
        return torch.randn(rows, cols, generator=g, dtype=torch.float64)
    if kind == "powerlaw":
        w = torch.randn(rows, cols, generator=g, dtype=torch.float64)
        return w * torch.rand(cols, generator=g, dtype=torch.float64).pow(-0.7)
    if kind == "orthogonal":
        return orthogonal(rows, cols, g)
    if kind == "rank":
        a = torch.randn(rows, rank, generator=g, dtype=torch.float64)
        return a @ torch.randn(rank, cols, generator=g, dtype=torch.float64)
    if kind == "zeros":
        return torch.zeros(rows, cols, dtype=torch.float64)
    if kind == "const":
        return torch.full((rows, cols), 0.37, dtype=torch.float64)
    if kind == "spiked":  # flat bulk, one singular value times ``spike``
        q = orthogonal(rows, cols, g)
        u, s, v = torch.linalg.svd(q, full_matrices=False)
        s[0] *= spike
        return (u * s) @ v
    raise ValueError(kind)


@st.composite
def any_matrix(draw) -> tuple[torch.Tensor, str]:
    rows, cols = draw(st.integers(1, 40)), draw(st.integers(1, 40))
    dtype = draw(st.sampled_from(DTYPES))
    kind = draw(st.sampled_from(["gauss", "powerlaw", "orthogonal", "rank", "zeros", "const", "spiked"]))
    seed = draw(st.integers(0, 2**31 - 1))
    w = build(kind, rows, cols, seed, rank=draw(st.integers(1, max(1, min(rows, cols)))),
              spike=draw(st.floats(0.5, 3.0)))
    lo, hi = (-6, 3) if dtype == torch.float16 else (-30, 30)
    w = (w * 10.0 ** draw(st.integers(lo, hi))).to(dtype)
    poison = draw(st.sampled_from([None, None, None, "nan", "inf", "-inf"]))
    if poison:
        w[draw(st.integers(0, rows - 1)), draw(st.integers(0, cols - 1))] = float(poison)
    return w, f"{kind} {rows}x{cols} {dtype} seed={seed} poison={poison}"


def check_invariants(res, n_mats: int, alpha_max: float, where: str) -> None:
    assert len(res.alpha) == n_mats and len(res.status) == n_mats, where
    for a, s in zip(res.alpha.tolist(), res.status):
        assert s in STATUSES, (where, s)
        if s in OK_STATUSES:
            assert math.isfinite(a) and 1.0 < a <= alpha_max, (where, a, s)
        else:
            assert math.isnan(a), (where, a, s)


@settings(max_examples=250, **SETTINGS)
@given(st.lists(any_matrix(), min_size=1, max_size=4), st.integers(2, 12), st.sampled_from(["nonzero", "nan"]))
def test_never_raises_and_alpha_matches_status(items, min_eigs, mode):
    mats = [w for w, _ in items]
    where = [d for _, d in items]
    kw = dict(min_eigs=min_eigs, rank_deficient=mode, return_status=True)
    ref = hill_alpha(mats, method="exact", **kw)
    check_invariants(ref, len(mats), 50.0, f"exact {where}")
    fast = hill_alpha(mats, method="auto", **kw)
    check_invariants(fast, len(mats), 50.0, f"auto {where}")
    assert fast.status == ref.status, where
    ok = [i for i, s in enumerate(ref.status) if s in OK_STATUSES]
    np.testing.assert_allclose(fast.alpha.numpy()[ok], ref.alpha.numpy()[ok], rtol=1e-5, err_msg=str(where))
    lz = hill_alpha(mats, method="lanczos", **kw, **LANCZOS)
    check_invariants(lz, len(mats), 50.0, f"lanczos {where}")


@st.composite
def clear_case(draw) -> tuple[torch.Tensor, str, str]:
    """A matrix whose status is not a near call, and that status from the rules in hill.py."""
    n = draw(st.integers(24, 48))
    m = n + draw(st.integers(0, 40))
    rows, cols = (n, m) if draw(st.booleans()) else (m, n)
    seed = draw(st.integers(0, 2**31 - 1))
    family = draw(st.sampled_from(["gauss", "orthogonal", "low_rank", "mid_rank", "zeros", "poison", "spike"]))
    dtype = draw(st.sampled_from(DTYPES if family != "spike" else [torch.float32, torch.float64]))
    scale = 10.0 ** draw(st.integers(-3, 3))
    if family == "gauss":
        w, want = build("gauss", rows, cols, seed), "ok"
    elif family == "orthogonal":
        w, want = build("orthogonal", rows, cols, seed), "flat_spectrum"
    elif family == "low_rank":  # fewer nonzero eigenvalues than min_eigs = 8
        w, want = build("rank", rows, cols, seed, rank=draw(st.integers(1, 3))), "rank_deficient"
    elif family == "mid_rank":  # rank in [12, n/3] for n >= 36: SLQ reads the rank from the quadrature mass at
        # zero, about +-1 here with 16 probes, so >= min_eigs + 4; <= n/3 keeps a spectral gap above zero that
        # 24 Lanczos steps resolve (Ritz values ~1e-10 lmax, below the 1e-8 lmax zero floor)
        n = max(n, 36)
        rows, cols = (n, max(m, n)) if rows <= cols else (max(m, n), n)
        w, want = build("rank", rows, cols, seed, rank=draw(st.integers(12, n // 3))), "ok_rank_deficient"
    elif family == "zeros":
        w, want = build("zeros", rows, cols, seed), "zero_matrix"
    elif family == "poison":
        w, want = build("gauss", rows, cols, seed), "non_finite"
        w[draw(st.integers(0, rows - 1)), draw(st.integers(0, cols - 1))] = float(draw(st.sampled_from(["nan", "inf"])))
    else:  # a flat bulk and one spike with l x 1.05: m = ln(1.05) / k, alpha >= 1 + 12 / 0.049 = 247 (SLQ, which
        # sees the spike's mass through 16 probes, stays above 50 unless it overestimates that mass 5x), m >> noise
        w, want = build("spiked", rows, cols, seed, spike=1.05**0.5), "out_of_range"
    return (w * scale).to(dtype), want, f"{family} {rows}x{cols} {dtype} seed={seed}"


@settings(max_examples=150, **SETTINGS)
@given(st.lists(clear_case(), min_size=1, max_size=4))
def test_exact_and_lanczos_agree_on_clear_cases(items):
    mats = [w for w, _, _ in items]
    want = [s for _, s, _ in items]
    where = [d for _, _, d in items]
    ref = hill_alpha(mats, method="exact", min_eigs=8, return_status=True)
    assert ref.status == want, (where, ref.status)
    lz = hill_alpha(mats, method="lanczos", min_eigs=8, return_status=True, **LANCZOS)
    assert lz.status == want, (where, lz.status)
