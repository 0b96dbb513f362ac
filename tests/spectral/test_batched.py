"""Batched spectral path (llr_kernels.spectral.batched and its passes): batched exact vs float64 numpy, the float32 "auto" path within
1e-5 of float64 Eq. 2, SLQ (method="lanczos") within its documented error on Gaussian / power-law / spiked /
rank-deficient matrices over fresh seeds, the Hill reductions, Gram eigensolver ops and tridiagonal eigensolvers
against independent references, and the statuses of odd inputs (orthogonal in every dtype, near-flat, spiked,
rank-deficient, zero, non-finite, tiny, 1 x N) equal on every path."""
import math

import numpy as np
import pytest
import torch

from conftest import DEV, backend_missing, needs, require, requires, triton_launch_missing
from llr_kernels.spectral import hill_alpha
from llr_kernels.spectral.batched import hill_alpha_fast
from llr_kernels.spectral.cost import SLQ_BIAS_C, SLQ_ERR_C, choose_method
from llr_kernels.spectral.rules import hill_params
from llr_kernels.ops.eig.naive import tridiag_eig_torch
from llr_kernels.ops.hill.naive import slq_hill_torch
from llr_kernels.ops.lanczos.naive import lanczos_torch, rademacher_probes

needs_triton = needs(triton_launch_missing(), "Triton launches")



# ---------------------------------------------------------------- independent numpy references
def np_alpha(w: np.ndarray, variant: str = "paper", rank: int | None = None) -> float:
    """Eq. 2 (or the public code's variant) from numpy SVD, float64; with ``rank``, on the top ``rank``
    eigenvalues only (the rank-aware estimate of a matrix of that known rank)."""
    lam = np.sort(np.linalg.svd(w.astype(np.float64), compute_uv=False) ** 2)
    if rank is not None:
        lam = lam[-rank:]
    n = len(lam)
    if variant == "paper":
        k = n // 2
        thr = lam[n - k - 1]
        return 1.0 + k / np.sum(np.log(lam[n - k :] / thr))
    i = n // 2
    return 1.0 + (n - i) / np.sum(np.log(lam[i:] / lam[i]))


def make(kind: str, n: int, m: int, rng: np.random.Generator, tail: float = 3.0) -> np.ndarray:
    """n x m test matrices: Marchenko-Pastur (Gaussian), power-law ESD with density ~ l^-tail, a few large
    spikes on Gaussian noise, or rank 3n/4 (the threshold stays positive)."""
    if kind == "gauss":
        return rng.standard_normal((n, m))
    if kind == "powerlaw":
        u, _ = np.linalg.qr(rng.standard_normal((n, n)))
        v, _ = np.linalg.qr(rng.standard_normal((m, n)))
        lam = (1.0 - rng.random(n)) ** (-1.0 / (tail - 1.0))
        return (u * np.sqrt(lam)) @ v.T
    if kind == "spiked":
        w = rng.standard_normal((n, m))
        for _ in range(4):
            a, b = rng.standard_normal(n), rng.standard_normal(m)
            w += 8.0 * math.sqrt(m) * np.outer(a / np.linalg.norm(a), b / np.linalg.norm(b))
        return w
    if kind == "rankdef":
        r = 3 * n // 4
        return rng.standard_normal((n, r)) @ rng.standard_normal((r, m)) / math.sqrt(r)
    raise ValueError(kind)


KINDS = [("gauss", 0.0), ("powerlaw", 2.0), ("powerlaw", 3.0), ("powerlaw", 4.5), ("powerlaw", 6.0),
         ("spiked", 0.0), ("rankdef", 0.0)]


# ---------------------------------------------------------------- exact mode
@pytest.mark.parametrize("variant", ["paper", "reference"])
@pytest.mark.parametrize("backend", ["torch", pytest.param("triton", marks=requires(triton_launch_missing(), "Triton launches"))])
def test_exact_mode_matches_numpy(variant, backend):
    rng = np.random.default_rng(11)
    ws = [make(k, 60 + 7 * i, 90 + 11 * i, rng, t) for i, (k, t) in enumerate(KINDS)]
    ws.append(make("gauss", 130, 70, rng))  # tall: Gram on the column side
    mats = [torch.from_numpy(w) for w in ws]
    if backend == "triton":  # the Triton Gram is fp32-accumulated: compare fp32 inputs at fp32 accuracy
        mats = [m.float() for m in mats]
        ws = [m.double().numpy() for m in mats]
        mats = [m.to(DEV) for m in mats]
    r = hill_alpha_fast(mats, method="exact", variant=variant, backend=backend)
    ref = np.array([np_alpha(w, variant) for w in ws])
    tol = 1e-5 if backend == "torch" else 2e-4
    assert r.status == ["ok"] * len(ws)
    np.testing.assert_allclose(r.alpha.numpy(), ref, rtol=tol)


def test_exact_without_trusted_fp32_eigvalsh_starts_at_tier_2(monkeypatch, seed):
    """Where float32 eigvalsh is not trusted (CUDA: cuSOLVER broke the LAPACK-calibrated bound on an H200), every
    float32 matrix takes float64 eigenvalues of its float32 Gram (or float64 throughout), still within 1e-5 of
    float64 Eq. 2; a non-finite matrix still reads non_finite. Checked on CPU with the device test patched."""
    import llr_kernels.spectral.exact as exact

    monkeypatch.setattr(exact, "fp32_eigvalsh_trusted", lambda device: False)
    rng = np.random.default_rng(seed)
    ws = [make(k, 60 + 7 * i, 90 + 11 * i, rng, t).astype(np.float32) for i, (k, t) in enumerate(KINDS)]
    mats = [torch.from_numpy(w) for w in ws] + [torch.full((60, 90), float("nan"))]
    rep: dict = {}
    r = hill_alpha_fast(mats, method="exact", report=rep)
    assert r.status == ["ok"] * len(ws) + ["non_finite"]
    np.testing.assert_allclose(r.alpha.numpy()[:-1], [np_alpha(w.astype(np.float64)) for w in ws], rtol=1e-5)
    assert sorted(rep["fp64_eig"] + rep["fp64_rerun"]) == list(range(len(ws)))  # nothing settled in float32


def test_exact_through_hill_alpha_auto_on_cpu():
    rng = np.random.default_rng(5)
    ws = [make("powerlaw", 80, 120, rng, 3.0) for _ in range(3)]
    rep: dict = {}
    a = hill_alpha([torch.from_numpy(w) for w in ws], method="auto", report=rep)
    np.testing.assert_allclose(a.numpy(), [np_alpha(w) for w in ws], rtol=1e-5)
    assert rep["method"] == ["exact"] * 3 and float(rep["stderr"].abs().max()) == 0.0


def test_auto_rule():
    """The cost model's answers at a few points (full decision table: tests/spectral/test_target.py)."""
    assert choose_method(4096, torch.device("cpu")) == "exact"
    assert choose_method(256, torch.device("cuda")) == "exact"  # n <= 2 steps: the Krylov space is most of the space
    assert choose_method(2048, torch.device("cuda")) == "lanczos"
    assert choose_method(2048, torch.device("cuda"), steps=1024) == "exact"


def test_chunking_by_memory_budget_gives_same_result():
    rng = np.random.default_rng(2)
    mats = [torch.from_numpy(make("gauss", 64, 100, rng)) for _ in range(5)]
    one: dict = {}
    many: dict = {}
    a1 = hill_alpha_fast(mats, method="exact", report=one)
    a2 = hill_alpha_fast(mats, method="exact", memory_budget=1, report=many)
    assert one["chunks"] == 1 and many["chunks"] == 5
    assert many["peak_extra_bytes_est"] * 5 == one["peak_extra_bytes_est"]
    torch.testing.assert_close(a1.alpha, a2.alpha, rtol=1e-12, atol=0)
    l1 = hill_alpha_fast(mats, method="lanczos", probes=8, steps=24, groups=4)
    l2 = hill_alpha_fast(mats, method="lanczos", probes=8, steps=24, groups=4, memory_budget=1)
    assert np.all(np.isfinite(l1.alpha.numpy())) and np.all(np.isfinite(l2.alpha.numpy()))


# ---------------------------------------------------------------- status parity
def orthogonal(rows: int, cols: int, dtype: torch.dtype, seed: int) -> torch.Tensor:
    """nn.init.orthogonal_ made in float32 (float64 for float64), stored in ``dtype``."""
    torch.manual_seed(seed)
    w = torch.empty(rows, cols, dtype=torch.float64 if dtype == torch.float64 else torch.float32)
    torch.nn.init.orthogonal_(w)
    return w.to(dtype)


def spiked_flat(n: int, m: int, spikes: list[float], seed: int) -> torch.Tensor:
    """Orthogonal (flat) n x m matrix whose first singular values are multiplied by ``spikes``."""
    q = orthogonal(m, m, torch.float64, seed)[:n] if n <= m else orthogonal(n, n, torch.float64, seed)[:, :m]
    u, _, v = torch.linalg.svd(q, full_matrices=False)
    s = torch.ones(min(n, m), dtype=torch.float64)
    s[: len(spikes)] = torch.tensor(spikes, dtype=torch.float64)
    return ((u * s) @ v).float()


def special_mats() -> tuple[list[torch.Tensor], list[str]]:
    """Inputs with a status each that no method may change (the one expected from the rules in hill.py)."""
    g = torch.Generator().manual_seed(0)
    nanm = torch.randn(70, 90, generator=g)
    nanm[3, 4] = float("nan")
    infm = torch.randn(90, 70, generator=g)
    infm[5, 6] = float("inf")
    low = torch.zeros(100, 200)
    low[:10] = torch.randn(10, 200, generator=g)  # rank 10 < min_eigs: nothing to estimate
    ident = torch.zeros(64, 128)
    ident[:, :64] = torch.eye(64)  # exactly flat
    rank60 = torch.randn(160, 60, generator=g) @ torch.randn(60, 240, generator=g)  # rank 60 < n/2
    cases = [
        (torch.zeros(80, 90), "zero_matrix"),
        (nanm, "non_finite"),
        (infm, "non_finite"),
        (torch.randn(20, 300, generator=g), "too_few_eigenvalues"),
        (torch.randn(1, 300, generator=g), "too_few_eigenvalues"),
        (torch.randn(300, 1, generator=g), "too_few_eigenvalues"),
        (low, "rank_deficient"),
        (ident, "flat_spectrum"),
        (orthogonal(128, 128, torch.float32, 1), "flat_spectrum"),  # the issue: was alpha ~2.5e6 "ok"
        (orthogonal(96, 256, torch.bfloat16, 2), "flat_spectrum"),
        (orthogonal(256, 96, torch.float16, 3), "flat_spectrum"),
        (orthogonal(100, 100, torch.float64, 4) * 1e-3, "flat_spectrum"),
        (orthogonal(100, 300, torch.float32, 5) * 0.02, "flat_spectrum"),
        (spiked_flat(128, 200, [1.5**0.5], 6), "out_of_range"),  # one spike, l x 1.5: m = ln(1.5)/64, alpha ~ 159
        (spiked_flat(128, 200, [20.0, 15.0, 10.0, 8.0], 7), "ok"),  # four spikes on a flat bulk: alpha ~ 4.2
        (rank60, "ok_rank_deficient"),
        (torch.randn(90, 120, generator=g) * 1e-25, "ok"),  # tiny: the Gram would underflow in fp32
        (torch.randn(90, 120, generator=g), "ok"),
    ]
    return [m for m, _ in cases], [s for _, s in cases]


def test_special_statuses_follow_the_rules():
    """The expected statuses are those of numpy float64 spectra under the documented rules."""
    mats, want = special_mats()
    for w, st in zip(mats, want):
        if st in ("out_of_range", "ok") and min(w.shape) >= 50:
            a = np_alpha(w.double().numpy())
            assert (a > 50) == (st == "out_of_range") and a > 1.5, (st, a)


@pytest.mark.parametrize("method", ["exact", "lanczos", "auto"])
def test_status_parity_with_reference(method):
    mats, want = special_mats()
    ref = hill_alpha(mats, return_status=True)
    assert ref.status == want
    kw = dict(probes=16, steps=32, groups=4) if method == "lanczos" else {}
    got = hill_alpha(mats, method=method, return_status=True, **kw)
    assert got.status == ref.status
    ok = np.array([s in ("ok", "ok_rank_deficient") for s in want])
    assert np.isnan(got.alpha.numpy()[~ok]).all() and np.isfinite(got.alpha.numpy()[ok]).all()


def np_eq2(w: np.ndarray) -> float:
    """Eq. 2 from numpy float64 eigvalsh of the float64 Gram (the reference the float32 path is held to)."""
    g = w @ w.T if w.shape[0] <= w.shape[1] else w.T @ w
    lam = np.linalg.eigvalsh(g)
    n = len(lam)
    k = n // 2
    return 1.0 + k / np.sum(np.log(lam[n - k :] / lam[n - k - 1]))


def trained_like(rows: int, cols: int, rng: np.random.Generator) -> np.ndarray:
    """Marchenko-Pastur bulk with a power-law tail on the top 10% and three spikes (lmax / median ~ 1e3-1e4)."""
    n = min(rows, cols)
    a = rng.standard_normal((n, 2 * n))
    lam = np.linalg.eigvalsh(a @ a.T / (2 * n))
    t = n // 10
    lam[-t:] *= (1 - (np.arange(t) + rng.random(t)) / t) ** (-1 / rng.uniform(1.5, 4))
    lam[-3:] *= 10 ** rng.uniform(1, 2.5, 3)
    u, _ = np.linalg.qr(rng.standard_normal((rows, n)))
    v, _ = np.linalg.qr(rng.standard_normal((cols, n)))
    return (u * np.sqrt(np.sort(lam))) @ v.T


@pytest.mark.parametrize("shapes", [[(256, 256), (256, 683), (683, 256)], [(768, 768), (2048, 768)]])
def test_auto_within_1e5_of_float64_eq2(shapes):
    """hill_alpha(method="auto") (float32 with the measured bound, float64 where it fails) against numpy float64
    Eq. 2 on fresh Gaussian, power-law and trained-like matrices stored in float32 and bf16."""
    seed = int(np.random.SeedSequence().entropy % 2**31)
    rng = np.random.default_rng(seed)
    mats = []
    for r, c in shapes:
        for kind in ("gauss", "powerlaw", "trained"):
            w = trained_like(r, c, rng) if kind == "trained" else make(kind, min(r, c), max(r, c), rng,
                                                                       rng.uniform(2, 6))
            w = w if (w.shape[0] <= w.shape[1]) == (r <= c) else w.T
            mats.append(torch.from_numpy(np.ascontiguousarray(w)).to(torch.bfloat16 if len(mats) % 3 == 2 else
                                                                     torch.float32))
    rep: dict = {}
    got = hill_alpha(mats, method="auto", return_status=True, report=rep)
    want = np.array([np_eq2(m.double().numpy()) for m in mats])
    assert got.status == ["ok"] * len(mats), (seed, got.status)
    rel = np.abs(got.alpha.numpy() / want - 1)
    assert rel.max() <= 1e-5, (seed, rel, rep["fp64_eig"], rep["fp64_rerun"])


def test_gram_eigvalsh_cpp_matches_torch_reference():
    from llr_kernels.ops import extension as _ext

    require(_ext.unavailable_reason(torch.device("cpu")), "the C++ extension")
    from llr_kernels.ops.eig.naive import eigvalsh_batch_torch, gram_eigvalsh_torch
    from llr_kernels.ops.eig.cpp import eigvalsh_cpp, gram_eigvalsh_cpp

    g = torch.Generator().manual_seed(0)
    nan = torch.randn(64, 100, generator=g)
    nan[1, 2] = float("nan")
    mats = [torch.randn(64, 100, generator=g), torch.randn(150, 64, generator=g).bfloat16(),
            torch.randn(64, 64, generator=g).double() * 1e200, torch.randn(64, 70, generator=g) * 1e-30,
            torch.zeros(64, 64), nan, torch.randn(300, 64, generator=g).half()]
    ref = [None if i == 5 else np.sort(np.linalg.svd(m.double().numpy() / max(1e-300, float(m.double().abs().max())),
                                                      compute_uv=False) ** 2) for i, m in enumerate(mats)]
    for dt, tol in ((torch.float32, 1e-5), (torch.float64, 1e-12)):
        e, grams = gram_eigvalsh_cpp(mats, dt, True)
        e_t, _ = gram_eigvalsh_torch(mats, dt, True)
        assert e.dtype == dt and grams.shape == (7, 64, 64)
        for i, (x, r) in enumerate(zip(e.double().numpy(), ref)):
            if i == 4:
                assert (x == 0).all()
            elif i == 5:
                assert np.isnan(x).all() and torch.isnan(e_t[i]).all()
            else:  # scaled by a power of two or not: compare the spectra relative to their largest eigenvalue
                np.testing.assert_allclose(x / x[-1], r / r[-1], atol=tol * 10, err_msg=str((dt, i)))
                np.testing.assert_allclose(e_t[i].double().numpy() / float(e_t[i, -1]), r / r[-1], atol=tol * 10)
        e2 = eigvalsh_cpp(grams, torch.float64)
        np.testing.assert_allclose(e2[:4].numpy(), eigvalsh_batch_torch(grams[:4], torch.float64).numpy(), rtol=1e-12)


def test_lanczos_rank_deficient_alpha_near_exact():
    """Rank-60 matrices (n = 200 > 2 x 60): SLQ reads the rank from the mass at zero and Eq. 2 on the nonzero part
    near the exact rank-aware alpha. Measured at this size and budget over 600 draws: relative RMS 0.02, worst
    0.10 (the tail is 30 eigenvalues, so one gap at the threshold weighs); the median of six and the worst of six
    are checked, which a misread rank (k off by the zero mass) would miss by far."""
    seed = int(np.random.SeedSequence().entropy % 2**31)
    rng = np.random.default_rng(seed)
    ws = [rng.standard_normal((200, 60)) @ rng.standard_normal((60, 300)) for _ in range(6)]
    mats = [torch.from_numpy(w) for w in ws]
    ref = np.array([np_alpha(w, rank=60) for w in ws])
    lz = hill_alpha(mats, method="lanczos", return_status=True, probes=128, steps=48, seed=seed)
    assert lz.status == ["ok_rank_deficient"] * 6, (seed, lz)
    rel = np.abs(lz.alpha.numpy() / ref - 1)
    assert np.median(rel) < 0.05 and rel.max() < 0.2, (seed, rel)


def test_target_error_bound_of_rank_deficient_matrix_uses_its_rank():
    """The bias of a rank-r tail is about a gap among r eigenvalues, not n: the bound target_error is checked
    against is at least SLQ_BIAS_C (alpha - 1)^2 / r, so a rank-40 matrix at n = 200 cannot pass a target that
    its own eigenvalue gaps exceed."""
    seed = int(np.random.SeedSequence().entropy % 2**31)
    rng = np.random.default_rng(seed)
    ws = [rng.standard_normal((200, 40)) @ rng.standard_normal((40, 300)) for _ in range(3)]
    rep: dict = {}
    r = hill_alpha_fast([torch.from_numpy(w) for w in ws], method="lanczos", probes=128, steps=48, seed=seed,
                        target_error=0.05, target_fallback="flag", max_probes=128, min_eigs=16, report=rep)
    assert r.status == ["ok_rank_deficient"] * 3, (seed, r)
    a = r.alpha.numpy()
    bias_rank = SLQ_BIAS_C * (a - 1) ** 2 / 40
    assert np.all(rep["error_est"].numpy() >= bias_rank), (seed, rep["error_est"], bias_rank)
    assert rep["target_met"] == [False] * 3, (seed, rep["target_met"], a)


def test_bad_arguments_say_what_to_do():
    m = [torch.randn(60, 80)]
    with pytest.raises(ValueError, match="multiple of groups"):
        hill_alpha_fast(m, method="lanczos", probes=10, groups=4)
    with pytest.raises(ValueError, match="method"):
        hill_alpha_fast(m, method="svd")
    with pytest.raises(ValueError, match="backend"):
        hill_alpha_fast(m, backend="cuda")


# ---------------------------------------------------------------- SLQ accuracy (statistical)
def test_lanczos_error_within_documented_bound():
    """Over fresh seeds and every spectrum kind: RMS |d alpha| within the documented absolute model
    SLQ_ERR_C (alpha - 1)^2 / sqrt(n probes) plus the bias SLQ_BIAS_C (alpha - 1)^2 / n, |mean relative error|
    small, and the jackknife standard error calibrated (mean z^2 of order 1): the target_error check takes the
    larger of the two, so a spectrum the model underrates is still covered by its own jackknife."""
    n, m, probes, steps = 192, 320, 32, 48
    seed0 = int(np.random.SeedSequence().entropy % (2**31))  # fresh each run; printed on failure
    rel, absd, pred, z = [], [], [], []
    for s in range(3):
        rng = np.random.default_rng(seed0 + s)
        ws = [make(k, n, m, rng, t) for k, t in KINDS for _ in range(2)]
        ref = np.array([np_alpha(w) for w in ws])
        rep: dict = {}
        r = hill_alpha_fast([torch.from_numpy(w) for w in ws], method="lanczos", probes=probes, steps=steps,
                            seed=seed0 + s, report=rep)
        assert r.status == ["ok"] * len(ws), (seed0, r.status)
        a = r.alpha.numpy()
        rel.append(a / ref - 1)
        absd.append(a - ref)
        pred.append(slq_error_model_np(ref, n, probes) + SLQ_BIAS_C * (ref - 1) ** 2 / n)
        z.append((a - ref) / rep["stderr"].numpy())
    rel, absd, pred, z = np.stack(rel), np.stack(absd), np.stack(pred), np.stack(z)  # (seeds, matrices)
    per_kind_rms = np.sqrt((absd**2).reshape(3, len(KINDS), 2).mean(axis=(0, 2)))
    per_kind_pred = np.sqrt((pred**2).reshape(3, len(KINDS), 2).mean(axis=(0, 2)))
    # 2x: the model is the typical scale; a low density of ln l at the threshold (rank 3n/4) sits ~1.5x above it
    assert np.all(per_kind_rms < 2.0 * per_kind_pred), (seed0, per_kind_rms, per_kind_pred)
    assert abs(rel.mean()) < 0.01, (seed0, rel.mean())
    assert 0.2 < np.mean(z**2) < 5.0, (seed0, np.mean(z**2))


def slq_error_model_np(alpha: np.ndarray, n: int, probes: int) -> np.ndarray:
    """The documented RMS model, written out: an error dm in the mean log-excess m moves alpha = 1 + 1/m by
    (alpha - 1)^2 dm, and dm falls as 1 / sqrt(n probes)."""
    return SLQ_ERR_C * (alpha - 1) ** 2 / np.sqrt(n * probes)


def naive_threshold_logsum(nodes, weights, q, n):
    """The trap: pooled Ritz nodes, cumulative weights interpolated linearly."""
    out = []
    for b in range(nodes.shape[0]):
        x = nodes[b].flatten().numpy()
        w = weights[b].flatten().numpy() / nodes.shape[1]
        o = np.argsort(x)
        x, w = x[o], w[o]
        thr = np.interp(q, np.cumsum(w), x)
        out.append(n * np.sum(w * np.log(np.maximum(x / thr, 1.0))))
    return np.array(out)


def test_cell_spreading_removes_quadrature_bias():
    """With few steps (coarse Gauss nodes) and many probes, the naive pooled interpolation is off by
    several percent (up to ~20%) in the tail log-sum and this does not average out over probes; spreading
    each node over its own log-space cell leaves ~1%."""
    n, m, probes, steps = 192, 320, 64, 12
    seed0 = int(np.random.SeedSequence().entropy % (2**31))
    naive_err, cell_err = [], []
    for s in range(2):
        rng = np.random.default_rng(seed0 + s)
        ws = [make("gauss", n, m, rng) for _ in range(3)] + [make("spiked", n, m, rng) for _ in range(3)]
        lam = np.stack([np.sort(np.linalg.svd(w, compute_uv=False) ** 2) for w in ws])
        thr_i, top, _, q = hill_params(n, "paper")
        true = np.log(lam[:, top:] / lam[:, thr_i : thr_i + 1]).sum(1)
        g = torch.from_numpy(np.stack([w @ w.T for w in ws]))
        v0 = rademacher_probes(len(ws), probes, n, device=torch.device("cpu"), dtype=torch.float64,
                               generator=torch.Generator().manual_seed(seed0 + s))
        nodes, weights = tridiag_eig_torch(*lanczos_torch(g, v0, steps))
        bsz = len(ws)
        floor = nodes.amax((-1, -2)) * n * 1e-15
        _, logsum, _ = slq_hill_torch(nodes, weights, torch.full((bsz,), float(n), dtype=torch.float64),
                                      torch.full((bsz,), q, dtype=torch.float64), floor, groups=8)
        cell_err.append(logsum[:, 0].numpy() / true - 1)
        naive_err.append(naive_threshold_logsum(nodes, weights, q, n) / true - 1)
    # The naive error is a per-matrix offset set by where the (probe-independent) nodes fall around the
    # median, so its sign varies between matrices: compare RMS over matrices, each averaged over 64 probes.
    naive_rms = np.sqrt(np.mean(np.stack(naive_err) ** 2))
    cell_rms = np.sqrt(np.mean(np.stack(cell_err) ** 2))
    assert naive_rms > 0.03, (seed0, naive_rms)
    assert cell_rms < 0.3 * naive_rms, (seed0, cell_rms, naive_rms)


# ---------------------------------------------------------------- building blocks
def random_tridiagonals(bsz: int, s: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    a = torch.rand(bsz, s, generator=g, dtype=torch.float64) * 3
    b = torch.rand(bsz, s - 1, generator=g, dtype=torch.float64) + 0.01
    b[0, 5] = 0.0  # decoupled blocks (Lanczos breakdown) must work too
    a[1, :] = 1.0  # repeated diagonal
    return a, b


def np_gauss(a, b):
    out_x, out_w = [], []
    for ai, bi in zip(a.numpy(), b.numpy()):
        t = np.diag(ai) + np.diag(bi, 1) + np.diag(bi, -1)
        x, v = np.linalg.eigh(t)
        out_x.append(x)
        out_w.append(v[0] ** 2)
    return np.array(out_x), np.array(out_w)


def test_tridiag_torch_reference():
    a, b = random_tridiagonals(6, 40, 0)
    x, w = tridiag_eig_torch(a, b)
    rx, rw = np_gauss(a, b)
    np.testing.assert_allclose(x.numpy(), rx, atol=1e-12)
    np.testing.assert_allclose(w.numpy(), rw, atol=1e-10)


def test_tridiag_cpp_matches_numpy():
    from llr_kernels.ops import extension as _ext

    require(_ext.unavailable_reason(torch.device("cpu")), "the C++ extension")
    from llr_kernels.ops.eig.cpp import tridiag_eig_cpp

    a, b = random_tridiagonals(64, 96, 1)
    x, w = tridiag_eig_cpp(a, b)
    rx, rw = np_gauss(a, b)
    np.testing.assert_allclose(x.numpy(), rx, atol=1e-11)
    np.testing.assert_allclose(w.numpy(), rw, atol=1e-10)
    x32, w32 = tridiag_eig_cpp(a.float(), b.float())
    assert x32.dtype == torch.float32 and np.allclose(x32.numpy(), rx, atol=1e-5)


def test_lanczos_exact_when_krylov_space_is_full():
    """steps = n: the Gauss rule of each probe is the probe's exact spectral measure."""
    rng = np.random.default_rng(3)
    w = make("powerlaw", 48, 80, rng, 3.0)
    g = torch.from_numpy(w @ w.T).unsqueeze(0)
    v0 = rademacher_probes(1, 2, 48, device=torch.device("cpu"), dtype=torch.float64,
                           generator=torch.Generator().manual_seed(0))
    x, wt = tridiag_eig_torch(*lanczos_torch(g, v0, 48))
    lam, vec = np.linalg.eigh(g[0].numpy())
    np.testing.assert_allclose(x[0, 0].numpy(), lam, rtol=1e-8)
    np.testing.assert_allclose(wt[0, 0].numpy(), (vec.T @ v0[0, 0].numpy()) ** 2, atol=1e-10)


@needs_triton
def test_hill_eigs_triton_matches_numpy():
    from llr_kernels.ops.hill.triton import hill_eigs_triton

    rng = np.random.default_rng(4)
    e = np.sort(rng.pareto(2.5, size=(5, 300)) + 0.1, axis=1).astype(np.float32)
    for variant in ("paper", "reference"):
        thr_i, top, _, _ = hill_params(300, variant)
        got = hill_eigs_triton(torch.from_numpy(e).to(DEV), thr_i, top).double().cpu().numpy()
        ed = e.astype(np.float64)
        ref_ls = np.log(ed[:, top:] / ed[:, thr_i : thr_i + 1]).sum(1)
        np.testing.assert_allclose(got[:, 0], ed[:, thr_i], rtol=1e-7)
        np.testing.assert_allclose(got[:, 1], ed[:, -1], rtol=1e-7)
        np.testing.assert_allclose(got[:, 2], ref_ls, rtol=2e-5)


@needs_triton
def test_hill_nodes_triton_matches_torch_reference():
    from llr_kernels.ops.hill.triton import hill_nodes_triton

    rng = np.random.default_rng(6)
    ws = [make(k, 96, 160, rng, t) for k, t in KINDS[:4]]
    g = torch.from_numpy(np.stack([w @ w.T for w in ws]))
    v0 = rademacher_probes(4, 8, 96, device=torch.device("cpu"), dtype=torch.float64,
                           generator=torch.Generator().manual_seed(1))
    nodes, weights = tridiag_eig_torch(*lanczos_torch(g, v0, 24))
    n_t = torch.full((4,), 96.0, dtype=torch.float64)
    q = torch.full((4,), hill_params(96, "paper")[3], dtype=torch.float64)
    floor = nodes.amax((-1, -2)) * 96 * 1e-15
    ut_r, ls_r, af_r = slq_hill_torch(nodes, weights, n_t, q, floor, groups=4)
    ut_t, ls_t, af_t = hill_nodes_triton(*(x.to(DEV) for x in (nodes, weights, n_t, q, floor)), groups=4)
    np.testing.assert_allclose(ut_t.cpu().numpy(), ut_r.numpy(), atol=2e-4)
    np.testing.assert_allclose(ls_t.cpu().numpy(), ls_r.numpy(), rtol=2e-4)
    torch.testing.assert_close(af_t.cpu(), af_r)


@needs_triton
def test_lanczos_triton_backend_end_to_end():
    rng = np.random.default_rng(8)
    mats = [torch.from_numpy(make("powerlaw", 96, 150, rng, 3.0)).float() for _ in range(3)]
    t = hill_alpha_fast([m.to(DEV) for m in mats], method="lanczos", backend="triton", probes=8, steps=24, groups=4,
                        tf32=False)
    r = hill_alpha_fast(mats, method="lanczos", backend="torch", probes=8, steps=24, groups=4,
                        dtype=torch.float32)
    np.testing.assert_allclose(t.alpha.numpy(), r.alpha.numpy(), rtol=1e-3)


@needs_triton
def test_lanczos_triton_backend_target_mode():
    """The target mode's steps term and refinement rounds on the Triton ops (half-steps nodes through the same
    Hill-from-nodes kernel) agree with the float32 torch backend: alphas, steps terms, bounds and probe counts."""
    rng = np.random.default_rng(9)
    mats = [torch.from_numpy(make("powerlaw", 96, 150, rng, 3.0)).float() for _ in range(3)]
    kw = dict(method="lanczos", probes=8, steps=24, groups=4, seed=5, target_error=0.4, max_probes=32,
              target_fallback="flag")
    rt, rr = {}, {}
    t = hill_alpha_fast([m.to(DEV) for m in mats], backend="triton", report=rt, tf32=False, **kw)
    r = hill_alpha_fast(mats, backend="torch", dtype=torch.float32, report=rr, **kw)
    np.testing.assert_allclose(t.alpha.numpy(), r.alpha.numpy(), rtol=1e-3)
    np.testing.assert_allclose(rt["steps_error"].numpy(), rr["steps_error"].numpy(), rtol=0.05, atol=1e-3)
    np.testing.assert_allclose(rt["error_est"].numpy(), rr["error_est"].numpy(), rtol=1e-2)
    assert rt["probes"] == rr["probes"] and max(rr["probes"]) > 8  # a refinement round ran on both
    assert float(rr["steps_error"].max()) > 0


@pytest.mark.parametrize("backend", ["torch", pytest.param("cpp", marks=requires(backend_missing("cpp", torch.device("cpu")),
                                                                                  "backend 'cpp'"))])
def test_threaded_cpu_path_matches_numpy(backend, seed):
    """With 2 intra-op threads (the suite runs with 1): the C++ op once called MKL's eigensolver from OpenMP workers
    concurrently and got eigenvalues wrong by ~100% with 2 threads (alphas off by 0.05-0.09, unflagged). Exact
    (float32 tiers) and SLQ's tridiagonal solver against float64 numpy."""
    rng = np.random.default_rng(seed)
    ws = [make(k, 200, 260, rng, t).astype(np.float32) for k, t in KINDS[:5]]
    mats = [torch.from_numpy(w) for w in ws]
    probes = 64
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        r = hill_alpha_fast(mats, method="exact", backend=backend)
        s = hill_alpha_fast(mats, method="lanczos", backend=backend, probes=probes, steps=40, groups=4, seed=seed)
    finally:
        torch.set_num_threads(before)
    ref = np.array([np_alpha(w.astype(np.float64)) for w in ws])
    np.testing.assert_allclose(r.alpha.numpy(), ref, rtol=1e-5)
    # SLQ is statistical: within 5x its documented RMS model plus its bias. A fixed 10% tolerance at 8 probes
    # failed on a fresh draw at alpha ~6, where the model's RMS is ~0.9
    n = min(ws[0].shape)
    tol = 5 * slq_error_model_np(ref, n, probes) + SLQ_BIAS_C * (ref - 1) ** 2 / n
    assert np.all(np.abs(s.alpha.numpy() - ref) <= tol), (seed, s.alpha.numpy(), ref, tol)
