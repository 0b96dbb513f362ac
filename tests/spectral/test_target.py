"""``target_error`` and the cost model of ``method="auto"`` (llr_kernels.spectral.target and .cost).

Expected alphas come from float64 numpy eigenvalues + Eq. 2 (tests/reference.py), on fresh random matrices whose
seed is printed in every assertion message. SLQ runs at small n (256) with few steps so the suite stays fast on
one CPU thread; the same rules hold at any n.
"""
import math

import numpy as np
import pytest
import torch
from reference import esd_np, hill_np, power_law_matrix

from llr_kernels.spectral import hill_alpha
from llr_kernels.spectral.batched import hill_alpha_fast
from llr_kernels.spectral.cost import (
    AUTO_PRIOR_ALPHA,
    COSTS,
    SLQ_BIAS_C,
    SLQ_ERR_C,
    TARGET_Z,
    DeviceCost,
    choose_method,
    probes_needed,
    slq_error_bound,
    slq_error_model,
)
from llr_kernels.ops.gram.naive import tf32_round



def fresh_seed() -> int:
    return int(np.random.SeedSequence().entropy % (2**31))


def family(kind: str, n: int, m: int, rng: np.random.Generator) -> np.ndarray:
    """Gaussian, iid Student-t (df 3) entries, iid Pareto-tailed entries (P(|x| > t) = t^-2.5), power-law ESD."""
    if kind == "gaussian":
        return rng.standard_normal((n, m))
    if kind == "student_t3":
        return rng.standard_t(3.0, size=(n, m))
    if kind == "pareto":
        return (rng.pareto(2.5, size=(n, m)) + 1.0) * rng.choice([-1.0, 1.0], size=(n, m))
    if kind == "pareto_esd":
        u, _ = np.linalg.qr(rng.standard_normal((n, n)))
        v, _ = np.linalg.qr(rng.standard_normal((m, n)))
        lam = (1.0 - rng.random(n)) ** (-1.0 / 2.0)  # density ~ l^-3
        return (u * np.sqrt(lam)) @ v.T
    raise ValueError(kind)


KINDS = ("gaussian", "student_t3", "pareto", "pareto_esd")


def ref_alpha(w: np.ndarray) -> float:
    return hill_np(esd_np(torch.from_numpy(w)))


# ------------------------------------------------------------------------------------------ target_error
def test_target_met_or_handed_to_exact():
    """Every matrix reported as meeting the target is within it of float64 Eq. 2; the matrices SLQ cannot bring
    there within max_probes go to exact (within 1e-5); some matrices were refined (more probes) on the way."""
    seed = fresh_seed()
    rng = np.random.default_rng(seed)
    ws = [family(k, 256, 512, rng) for k in KINDS for _ in range(2)]
    ref = np.array([ref_alpha(w) for w in ws])
    target = 0.1
    rep: dict = {}
    r = hill_alpha_fast([torch.from_numpy(w) for w in ws], method="lanczos", probes=32, steps=48, seed=seed,
                        target_error=target, max_probes=512, report=rep)
    msg = f"seed {seed}: alpha {r.alpha.tolist()} ref {ref.tolist()} report {rep['probes']} {rep['to_exact']}"
    err = np.abs(r.alpha.numpy() - ref)
    assert rep["target_met"] == [True] * len(ws), msg
    assert r.status == ["ok"] * len(ws), msg
    for i in range(len(ws)):
        assert err[i] <= target, msg
        assert rep["error_est"][i] <= target, msg
        if i in rep["to_exact"]:
            assert rep["method"][i] == "exact" and rep["probes"][i] == 0 and err[i] <= 1e-5 * ref[i], msg
        else:
            assert rep["method"][i] == "lanczos" and rep["probes"][i] >= 32, msg
            steps_term = float(rep["steps_error"][i])
            assert 0.0 <= steps_term < target, msg
            bound = slq_error_bound(float(r.alpha[i]), 256, rep["probes"][i], float(rep["stderr"][i]), steps_term)
            assert rep["error_est"][i] == pytest.approx(bound), msg
    assert max(rep["probes"]) > 32, msg  # the adaptive budget was used
    # the fixed budget's answer is kept: its error is what the refinement fixed
    assert np.all(np.isfinite(rep["alpha_fixed"].numpy())), msg


def test_target_flag_mode_says_which_missed():
    """target_fallback="flag": nothing goes to exact; a matrix whose bound exceeds the target is flagged
    (target_met False), and every matrix not flagged is within the target."""
    seed = fresh_seed()
    rng = np.random.default_rng(seed)
    ws = [family(k, 256, 512, rng) for k in KINDS]
    ref = np.array([ref_alpha(w) for w in ws])
    target = 0.1
    rep: dict = {}
    r = hill_alpha_fast([torch.from_numpy(w) for w in ws], method="lanczos", probes=32, steps=48, seed=seed,
                        target_error=target, max_probes=64, target_fallback="flag", report=rep)
    msg = f"seed {seed}: alpha {r.alpha.tolist()} ref {ref.tolist()} est {rep['error_est'].tolist()}"
    assert rep["to_exact"] == [] and rep["method"] == ["lanczos"] * len(ws), msg
    err = np.abs(r.alpha.numpy() - ref)
    for i, met in enumerate(rep["target_met"]):
        assert met == bool(rep["error_est"][i] <= target), msg
        if met:
            assert err[i] <= target, msg
    assert not all(rep["target_met"]), msg  # (alpha-1)^2 bias at n = 256 alone exceeds 0.1 for alpha >~ 2.8


def test_steps_term_is_the_half_steps_difference():
    """report["steps_error"] is |alpha(s steps) - alpha(s/2 steps)| on the same probes: checked against two separate
    fixed-budget runs (the first s/2 steps of an s-step Lanczos run are an s/2-step run), and it is part of the
    bound: error_est = slq_error_bound(..., steps_error)."""
    seed = fresh_seed()
    rng = np.random.default_rng(seed)
    mats = [torch.from_numpy(family(k, 160, 300, rng)) for k in KINDS]
    kw = dict(method="lanczos", probes=16, groups=4, seed=seed)
    rep: dict = {}
    r = hill_alpha_fast(mats, steps=40, target_error=1e6, report=rep, **kw)  # met at once: no refinement
    full = hill_alpha_fast(mats, steps=40, **kw).alpha
    half = hill_alpha_fast(mats, steps=20, **kw).alpha
    msg = f"seed {seed}"
    assert torch.equal(r.alpha, full), msg
    torch.testing.assert_close(rep["steps_error"], (full - half).abs(), rtol=1e-9, atol=1e-12, msg=msg)
    assert float(rep["steps_error"].max()) > 1e-4, msg  # 20 vs 40 steps differ: the term is not trivially 0
    for i in range(len(mats)):
        bound = slq_error_bound(float(full[i]), 160, 16, float(rep["stderr"][i]), float(rep["steps_error"][i]))
        assert float(rep["error_est"][i]) == pytest.approx(bound), msg


def test_cpu_cost_model_hands_misses_to_exact():
    """On CPU exact is always cheaper than more SLQ (cost model): every matrix missing the target after the first
    round goes to exact, so all alphas meet 0.02 (exact ones within 1e-5 of float64 Eq. 2)."""
    seed = fresh_seed()
    rng = np.random.default_rng(seed)
    ws = [family(k, 256, 512, rng) for k in KINDS]
    ref = np.array([ref_alpha(w) for w in ws])
    rep: dict = {}
    r = hill_alpha_fast([torch.from_numpy(w) for w in ws], method="lanczos", probes=16, steps=32, groups=4, seed=seed,
                        target_error=0.02, report=rep)
    msg = f"seed {seed}: {rep['to_exact']} {rep['error_est'].tolist()}"
    assert rep["target_met"] == [True] * len(ws), msg
    assert rep["to_exact"] == list(range(len(ws))), msg  # bias alone at n = 256: 3 (alpha-1)^2 / 256 > 0.02
    assert rep["steps_error"].tolist() == [0.0] * len(ws), msg  # exact has no quadrature term
    np.testing.assert_allclose(r.alpha.numpy(), ref, rtol=1e-5, err_msg=msg)


def test_target_none_is_the_fixed_budget():
    """target_error=None is the fixed budget; a target every matrix meets in the first round changes nothing
    (same probes, same alphas bit for bit) and only adds report entries."""
    seed = fresh_seed()
    rng = np.random.default_rng(seed)
    mats = [torch.from_numpy(family(k, 96, 160, rng)) for k in KINDS]
    r0, rep0 = hill_alpha_fast(mats, method="lanczos", probes=8, steps=24, groups=4, seed=seed), {}
    r1 = hill_alpha_fast(mats, method="lanczos", probes=8, steps=24, groups=4, seed=seed, target_error=1e6,
                         report=rep0)
    assert torch.equal(r0.alpha, r1.alpha) and r0.status == r1.status, seed
    assert rep0["target_met"] == [True] * 4 and rep0["probes"] == [8] * 4 and rep0["to_exact"] == []
    assert torch.equal(rep0["alpha_fixed"], r0.alpha)
    rep: dict = {}
    hill_alpha_fast(mats, method="lanczos", probes=8, steps=24, groups=4, seed=seed, report=rep)
    assert "target_met" not in rep and "error_est" not in rep


def test_exact_and_auto_meet_any_target_on_cpu():
    seed = fresh_seed()
    rng = np.random.default_rng(seed)
    ws = [family(k, 120, 200, rng) for k in KINDS]
    mats = [torch.from_numpy(w).float() for w in ws]
    ref = np.array([ref_alpha(m.double().numpy()) for m in mats])
    ex = hill_alpha(mats, target_error=0.02)  # method="exact": float64 Eq. 2 itself
    torch.testing.assert_close(ex, hill_alpha(mats), rtol=0, atol=0)
    rep: dict = {}
    au = hill_alpha(mats, method="auto", target_error=0.02, report=rep)
    assert rep["method"] == ["exact"] * 4 and rep["target_met"] == [True] * 4, seed
    np.testing.assert_allclose(au.numpy(), ref, rtol=1e-5, err_msg=str(seed))
    assert np.all(rep["error_est"].numpy() <= 1e-5 * au.numpy() + 1e-15), seed


def test_target_arguments_are_checked():
    m = [torch.randn(60, 80)]
    with pytest.raises(ValueError, match="target_error"):
        hill_alpha_fast(m, target_error=0.0)
    with pytest.raises(ValueError, match="target_error"):
        hill_alpha_fast(m, target_error=float("nan"))
    with pytest.raises(ValueError, match="target_fallback"):
        hill_alpha_fast(m, target_error=0.02, target_fallback="ignore")
    with pytest.raises(ValueError, match="max_probes"):
        hill_alpha_fast(m, target_error=0.02, probes=32, max_probes=16)


# ------------------------------------------------------------------------------------------ error model
def test_error_model_is_absolute_with_alpha_minus_one_squared():
    """alpha = 1 + 1/m: an error dm in the mean log-excess moves alpha by (alpha-1)^2 dm, so the modelled error
    grows with (alpha-1)^2 and falls with sqrt(n probes); the bound adds the probe-independent bias."""
    for a, n, p in [(2.0, 256, 32), (3.2, 1024, 32), (5.0, 2048, 128)]:
        assert slq_error_model(a, n, p) == pytest.approx(SLQ_ERR_C * (a - 1) ** 2 / math.sqrt(n * p))
        assert slq_error_bound(a, n, p) == pytest.approx(
            TARGET_Z * SLQ_ERR_C * (a - 1) ** 2 / math.sqrt(n * p) + SLQ_BIAS_C * (a - 1) ** 2 / n)
    assert slq_error_model(3.0, 1024, 32) / slq_error_model(2.0, 1024, 32) == pytest.approx(4.0)
    assert probes_needed(256, 0.02, 3.0, 32) is None  # bias 3 * 4 / 256 = 0.047 > 0.02: probes cannot help
    p = probes_needed(2048, 0.02, 3.0, 32)
    assert p is not None and slq_error_bound(3.0, 2048, p) <= 0.02 < slq_error_bound(3.0, 2048, p // 2)


# ------------------------------------------------------------------------------------------ cost model
def t_exact(n: int, c: DeviceCost) -> float:
    """Tridiagonal reduction ~ 4/3 n^3 flops at the eigensolver's rate, plus its per-matrix latency."""
    return (4 / 3) * n**3 / c.eig_flops + c.eig_latency


def t_lanczos(n: int, p: int, s: int, c: DeviceCost) -> float:
    """s steps, each a (p x n) x (n x n) product (2 n^2 p) and two Gram-Schmidt passes against the j stored
    vectors (8 j n p, summed: 4 s^2 n p); bounded below by streaming the n x n Gram once per step."""
    s = min(s, n)
    return max((2 * n * n * p * s + 4 * s * s * n * p) / c.lanczos_flops, s * n * n * c.elem / c.bandwidth)


def p_needed(n: int, target: float, a: float, p: int) -> int | None:
    bias = SLQ_BIAS_C * (a - 1) ** 2 / n
    if bias >= target:
        return None
    while TARGET_Z * SLQ_ERR_C * (a - 1) ** 2 / math.sqrt(n * p) + bias > target:
        p *= 2
    return p


def expected(n, dev, p, s, target, c):
    if n <= 2 * s:
        return "exact"
    if target is not None:
        p = p_needed(n, target, AUTO_PRIOR_ALPHA, p)
        if p is None:
            return "exact"
    return "lanczos" if t_lanczos(n, p, s, c) < t_exact(n, c) else "exact"


@pytest.mark.parametrize("dev", ["cpu", "cuda"])
def test_auto_decision_table_follows_the_cost_model(dev):
    c = COSTS[dev]
    seen = set()
    for n in (64, 128, 256, 512, 768, 1024, 2048, 4096, 8192, 16384, 65536):
        for p, s in ((32, 128), (8, 32), (64, 64), (4, 256)):
            for target in (None, 0.02, 0.1):
                want = expected(n, dev, p, s, target, c)
                got = choose_method(n, torch.device(dev) if dev == "cpu" else dev, s, p, target)
                assert got == want, (n, dev, p, s, target)
                seen.add(got)
    assert seen == {"exact", "lanczos"}  # the table has both answers on both devices


def test_auto_cpu_is_exact_at_llama_shapes():
    for n in (512, 768, 1024, 2048, 2560, 4096, 5120, 8192):  # LLaMA 60M..70B hidden sizes (min dims)
        assert choose_method(n, torch.device("cpu")) == "exact"
        assert choose_method(n, torch.device("cpu"), target_error=0.02) == "exact"


def test_auto_equal_per_flop_cost_is_exact_when_probes_times_steps_exceeds_two_thirds_n():
    """With one flop rate for both methods (no latency, no bandwidth bound), SLQ costs 2 n^2 p s (1 + 2 s / n)
    against 4/3 n^3: exact once p s > 2n / 3 / (1 + 2 s / n)."""
    c = DeviceCost(lanczos_flops=1e12, eig_flops=1e12, eig_latency=0.0, bandwidth=math.inf, elem=4)
    for n in (512, 1024, 2048, 4096, 6144, 8192, 16384):
        for p, s in ((32, 128), (8, 64), (4, 128), (16, 200)):
            if n <= 2 * s:
                continue
            lanczos = p * s * (1 + 2 * s / n) < 2 * n / 3
            assert choose_method(n, "cuda", s, p, costs=c) == ("lanczos" if lanczos else "exact"), (n, p, s)
    assert choose_method(6144, "cuda", 128, 32, costs=c) == "exact"  # 32 x 128 > 2n/3 for every n <= 6144
    assert choose_method(16384, "cuda", 128, 32, costs=c) == "lanczos"


def test_auto_with_target_picks_what_the_budget_costs():
    """A target that needs many more probes than the default moves "auto" from SLQ to exact on CUDA."""
    assert choose_method(2048, "cuda") == "lanczos"  # 32 x 128 beats a per-matrix syevd loop
    assert choose_method(2048, "cuda", target_error=0.02) == "exact"
    assert choose_method(2048, "cuda", target_error=0.2) == "lanczos"


# ------------------------------------------------------------------------------------------ TF32 / bf16 Gram
@pytest.mark.parametrize("shape", [(256, 688), (688, 256), (256, 256)])
def test_bf16_input_tf32_gram_moves_alpha_by_at_most_2e4(shape):
    """A bf16 weight's entries are TF32 values (7 <= 10 mantissa bits), so a TF32 tensor-core Gram of it is exact
    products with float32 accumulation: alpha within 2e-4 of float64 Eq. 2 of the same bf16 values (LLaMA-like
    aspect 2.7, heavy-tailed spectrum)."""
    seed = fresh_seed()
    w = power_law_matrix(*shape, exponent=3.0, seed=seed).to(torch.bfloat16)
    x = w.float()
    assert torch.equal(tf32_round(x), x)
    t = tf32_round(x)
    g32 = t @ t.T if shape[0] <= shape[1] else t.T @ t  # float32 accumulation
    a32 = hill_np(np.sort(np.linalg.eigvalsh(g32.double().numpy())))
    a64 = hill_np(esd_np(w))
    assert abs(a32 - a64) <= 2e-4, (seed, a32, a64)


def test_slq_gram_takes_tf32_by_default_only_where_its_products_are_exact():
    """TF32 rounds operands to 10 mantissa bits: exact for bf16/fp16 weights, lossy for float32 ones (on an H200 it
    moved a heavy-tailed float32 4096 x 4096 matrix's alpha from 1.74 to 2.09). Only CUDA has TF32."""
    from llr_kernels.spectral.slq import gram_precision

    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    bf16, fp16, fp32 = (torch.zeros(2, 2, dtype=d) for d in (torch.bfloat16, torch.float16, torch.float32))
    assert gram_precision(None, [bf16, fp16], cuda) == "tf32"
    assert gram_precision(None, [bf16, fp32], cuda) == "ieee"  # one float32 matrix in the chunk
    assert gram_precision(None, [bf16], cpu) == "ieee"
    assert gram_precision(True, [fp32], cuda) == "tf32" and gram_precision(True, [fp32], cpu) == "ieee"
    assert gram_precision(False, [bf16], cuda) == "ieee"
