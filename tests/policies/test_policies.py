"""Layerwise policies (llr_kernels.policies) against their published formulas, written out here in float64.

Each policy is checked as a map (values -> multipliers) and through the optimizer: the step it produces equals
torch.optim.AdamW with the per-layer LRs / weight decays the formula gives, as param groups.
"""
from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch

from reference import alpha_np
from tiny_models import SpectralNet, TinyLlama, batches, lm_loss
from llr_kernels import LLRAdamW, LLRMuon
from llr_kernels.policies import (
    ALPHADECAY_WD_RANGE, BlockwiseConfig, LLRConfig, RLRSConfig, UniformConfig, map_values, resolve_policy,
)

LR, WD = 1e-3, 0.1
# Measured alphas are within EXACT_REL_TOL (1e-5) x alpha of float64 Eq. 2 (spectral/exact.py); a map's slope over
# the alphas' range (span ~1-3) magnifies that at most ~20x in a multiplier.
MAP_RTOL = 2e-4


def rng_for(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


# ----------------------------------------------------------------------------------------------------- maps
def tb_map_np(x: np.ndarray, lo: float, hi: float, kind: str) -> np.ndarray:
    """TempBalance's assignment functions (tempbalance.py get_layer_temps; sigmoid: the LLR code's), relative to
    the base LR, on usable values only."""
    m = len(x)
    if kind == "linear":
        return np.interp(x, [x.min(), x.max()], [lo, hi])
    if kind == "step":
        rank = np.empty(m)
        rank[np.argsort(x)] = np.arange(m)
        return lo + (hi - lo) * rank / m
    if kind == "sqrt":
        return np.sqrt(x) / np.sum(np.sqrt(x)) * m
    if kind == "log2":
        return np.log2(x) / np.sum(np.log2(x)) * m
    z = (x - x.mean()) / (x.std() + 1e-8)
    return 2.0 / (1.0 + np.exp(-4.0 * z))


@pytest.mark.parametrize("kind", ["linear", "step", "sqrt", "log2", "sigmoid"])
def test_maps_equal_the_tempbalance_formulas(kind, seed):
    rng = rng_for(seed)
    x = rng.uniform(1.5, 6.0, 9)
    lo, hi = float(rng.uniform(0.3, 1.0)), float(rng.uniform(2.0, 4.0))
    pinned = torch.zeros(11, dtype=torch.bool)
    pinned[10] = True
    vals = torch.tensor(list(x) + [float("nan"), 2.0], dtype=torch.float64)  # a NaN keeps previous; a pinned gets hi
    prev = torch.full((11,), 0.77, dtype=torch.float64)
    got = map_values(vals, lo, hi, kind=kind, pinned=pinned, previous=prev).numpy()
    np.testing.assert_allclose(got[:9], tb_map_np(x, lo, hi, kind), rtol=1e-12, err_msg=f"seed {seed}")
    assert got[9] == 0.77 and got[10] == hi, (seed, got)


def test_map_hand_checked_values():
    """Hand-worked: alphas 2, 3, 4 into [0.5, 2.5]; step gives ranks 0, 1, 2 of 3."""
    a = torch.tensor([2.0, 4.0, 3.0], dtype=torch.float64)
    assert map_values(a, 0.5, 2.5, kind="linear").tolist() == [0.5, 2.5, 1.5]
    assert map_values(a, 0.5, 2.5, kind="step").tolist() == pytest.approx([0.5, 0.5 + 2 * 2 / 3, 0.5 + 2 / 3])
    assert map_values(a, 0.5, 2.5, kind="log2").tolist() == pytest.approx([3 * 1 / (1 + 2 + math.log2(3)), 3 * 2 / (3 + math.log2(3)), 3 * math.log2(3) / (3 + math.log2(3))])
    assert map_values(torch.tensor([3.0, 3.0]), 0.5, 2.5, kind="sqrt").tolist() == [1.0, 1.0]  # degenerate
    with pytest.raises(ValueError, match="map must be one of"):
        map_values(a, 1.0, 2.0, kind="cubic")


# ------------------------------------------------------------------------------ LLR variants in the optimizer
def spectral_setup(seed: int):
    torch.manual_seed(seed)
    return SpectralNet(seed=seed % 1000), batches(4, vocab=SpectralNet.VOCAB, seed=seed)


def run(model, opt, data, steps=None) -> None:
    for idx in data[:steps]:
        opt.zero_grad()
        lm_loss(model, idx).backward()
        opt.step()


def test_llr_by_name_or_config_is_bit_for_bit_the_default(seed):
    """policy=None, "llr" and an explicit LLRConfig with the same fields give identical parameters."""
    finals = []
    for policy in (None, "llr", LLRConfig(s=3.0, interval=2, total_steps=4)):
        model, data = spectral_setup(seed)
        opt = LLRAdamW(model, lr=LR, weight_decay=WD, s=3.0, interval=2, total_steps=4, min_eigs=16,
                       backend="torch", policy=policy)
        run(model, opt, data)
        finals.append([p.detach().clone() for p in model.parameters()])
    for other in finals[1:]:
        for a, b in zip(finals[0], other):
            assert torch.equal(a, b), seed


def expected_alphas(model) -> dict[str, float]:
    return {n: alpha_np(p, min_eigs=16) for n, p in model.named_parameters() if p.dim() == 2}


@pytest.mark.parametrize("kind", ["sqrt", "step", "sigmoid"])
def test_llr_map_variant_and_lower_ratio_in_the_optimizer(kind, seed):
    """Multipliers after the step-0 update are the map of numpy alphas of the weights (s_min 0.5, s 3)."""
    model, data = spectral_setup(seed)
    alphas = expected_alphas(model)
    opt = LLRAdamW(model, lr=LR, min_eigs=16, backend="torch",
                   policy=LLRConfig(s=3.0, s_min=0.5, map=kind, interval=100, grad_phase=0.0, outlier_z=None))
    run(model, opt, data, 1)
    stats = {d["name"]: d for d in opt.layer_stats()}
    names = [n for n, a in alphas.items() if math.isfinite(a) and n != "embed_tokens.weight"]
    want = tb_map_np(np.array([alphas[n] for n in names]), 0.5, 3.0, kind)
    np.testing.assert_allclose([stats[n]["multiplier"] for n in names], want, rtol=MAP_RTOL, err_msg=str(seed))
    assert stats["embed_tokens.weight"]["multiplier"] == 3.0


def test_shuffled_control_deals_the_same_multipliers_to_other_layers(seed):
    model, data = spectral_setup(seed)
    ref = LLRAdamW(copy.deepcopy(model), lr=LR, min_eigs=16, interval=1, grad_phase=0.0, backend="torch", outlier_z=None)
    shuf = LLRAdamW(model, lr=LR, min_eigs=16, interval=1, grad_phase=0.0, backend="torch", outlier_z=None,
                    policy=LLRConfig(s=3.0, interval=1, grad_phase=0.0, outlier_z=None, shuffle=True, seed=seed % 97))
    ref.update_alphas(0)
    shuf.update_alphas(0)
    a, b = ref.multipliers(), shuf.multipliers()
    usable = torch.isfinite(ref.llr.alphas) & ~ref.llr.pinned
    assert sorted(a[usable].tolist()) == pytest.approx(sorted(b[usable].tolist()), rel=1e-12), seed
    assert torch.equal(a[~usable], b[~usable])
    # 5 usable layers: the identity permutation has probability 1/120 per update; over 4 updates 1/120^4
    moved = False
    for t in range(1, 5):
        shuf.update_alphas(t)
        moved |= not torch.equal(shuf.multipliers()[usable], ref.multipliers()[usable])
    assert moved, seed


def test_bias_follows_its_matrix(seed):
    model, data = spectral_setup(seed)
    opt = LLRAdamW(model, lr=LR, min_eigs=16, backend="torch",
                   policy=LLRConfig(s=3.0, interval=100, grad_phase=0.0, bias_follows_matrix=True, outlier_z=None))
    run(model, opt, data, 1)
    st = {d["name"]: d["multiplier"] for d in opt.layer_stats()}
    assert st["up_proj.bias"] == st["up_proj.weight"] != 1.0, st
    assert st["norm.weight"] == 1.0


# -------------------------------------------------------------------------------- fixed and scheduled LRs
def adamw_groups(model, lr_of, wd_of=None):
    groups = []
    for n, p in model.named_parameters():
        groups.append({"params": [p], "lr": LR * lr_of(n), "weight_decay": WD * (wd_of(n) if wd_of else 1.0)})
    return torch.optim.AdamW(groups, lr=LR, weight_decay=WD)


def sharpness_ratio(name: str) -> float:
    """Wang et al. 2025 (README of the official repo): Norm 1, VO 4, FFN 6, QK 8, Emb 10; LM head at the base LR."""
    if "embed" in name:
        return 10.0
    if "q_proj" in name or "k_proj" in name:
        return 8.0
    if "v_proj" in name or "o_proj" in name:
        return 4.0
    if "mlp" in name:
        return 6.0
    return 1.0  # norms, lm_head


def test_sharpness_equals_adamw_with_the_papers_block_groups(seed):
    torch.manual_seed(seed)
    model = TinyLlama()
    ref_model = copy.deepcopy(model)
    opt = LLRAdamW(model, lr=LR, weight_decay=WD, backend="torch", policy="sharpness")
    ref = adamw_groups(ref_model, sharpness_ratio)
    for idx in batches(3, seed=seed):
        for m, o in ((model, opt), (ref_model, ref)):
            o.zero_grad()
            lm_loss(m, idx).backward()
            o.step()
    for (n, a), b in zip(model.named_parameters(), ref_model.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-7, msg=lambda s, n=n: f"{n} (seed {seed}): {s}")


def test_uniform_smax_and_blockwise_config(seed):
    torch.manual_seed(seed)
    model = TinyLlama()
    opt = LLRAdamW(model, lr=LR, s=2.5, policy="uniform-smax")
    assert {d["multiplier"] for d in opt.layer_stats()} == {2.5}
    opt = LLRAdamW(model, lr=LR, policy=BlockwiseConfig({"ffn": 3.0}, default=0.5))
    st = {d["name"]: d["multiplier"] for d in opt.layer_stats()}
    assert st["model.layers.0.mlp.up_proj.weight"] == 3.0 and st["model.layers.1.self_attn.q_proj.weight"] == 0.5


def rlrs_paper_lr(start: float, end: float, u: float, a_end: float) -> float:
    """RLRS Sec. 2 (as reported): component m runs its own cosine from l_start to a_end x l_end (x base LR)."""
    s, e = start, a_end * end
    return e + 0.5 * (s - e) * (1.0 + math.cos(math.pi * u))


def test_rlrs_follows_the_component_cosines(seed):
    """With a global cosine to 0.1 over T steps (no warmup), each component's LR is the paper's own cosine:
    start and end values exactly, the middle as the formula; a state_dict round trip mid-schedule resumes."""
    torch.manual_seed(seed)
    T = 8
    model = TinyLlama()
    opt = LLRAdamW(model, lr=LR, total_steps=T, policy=RLRSConfig({"embedding": 5.0, "ffn": 0.3},
                                                                   {"embedding": 0.6, "ffn": 1.125}, total_steps=T))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(t, T) / T)))
    data = batches(T + 1, seed=seed)
    seen = []
    for t, idx in enumerate(data):
        st = {d["name"]: d for d in opt.layer_stats()}
        seen.append((st["model.embed_tokens.weight"]["lr"], st["model.layers.0.mlp.up_proj.weight"]["lr"],
                     st["model.layers.0.self_attn.q_proj.weight"]["lr"]))
        opt.zero_grad()
        lm_loss(model, idx).backward()
        opt.step()
        sched.step()
        if t == 3:
            saved = copy.deepcopy(opt.state_dict())
    for t, (emb, ffn, attn) in enumerate(seen):
        u = min(t, T) / T
        assert emb == pytest.approx(LR * rlrs_paper_lr(5.0, 0.6, u, 0.1), rel=1e-12), (seed, t)
        assert ffn == pytest.approx(LR * rlrs_paper_lr(0.3, 1.125, u, 0.1), rel=1e-12), (seed, t)
        assert attn == pytest.approx(LR * rlrs_paper_lr(1.0, 1.0, u, 0.1), rel=1e-12), (seed, t)
    assert seen[0][0] == pytest.approx(5.0 * LR) and seen[T][0] == pytest.approx(0.6 * 0.1 * LR)
    again = LLRAdamW(TinyLlama(), lr=LR, total_steps=T, policy="rlrs")
    with pytest.raises(ValueError, match="policy 'rlrs'"):  # another start/end table is fine; another policy is not
        LLRAdamW(TinyLlama(), lr=LR, policy="sharpness").load_state_dict(saved)
    again.load_state_dict(saved)
    assert again.llr_step == 4


# ------------------------------------------------------------------------------------------------ AlphaDecay
@pytest.mark.parametrize("policy", ["alphadecay", "llr+alphadecay"])
def test_alphadecay_weight_decays_from_weight_alphas(policy, seed):
    """AlphaDecay (He et al. 2025, Eq. 3): wd_i = wd (s1 + (s2 - s1) (a_i - min) / (max - min)) over the hidden
    matrices, from weight alphas; embedding, LM head and vectors keep wd. The step equals AdamW with those groups."""
    model, data = spectral_setup(seed)
    ref_model = copy.deepcopy(model)
    alphas = expected_alphas(model)
    hidden = [n for n, a in alphas.items() if math.isfinite(a) and n not in ("embed_tokens.weight", "lm_head.weight")]
    x = np.array([alphas[n] for n in hidden])
    s1, s2 = ALPHADECAY_WD_RANGE
    wd_mult = dict(zip(hidden, s1 + (s2 - s1) * (x - x.min()) / (x.max() - x.min())))
    opt = LLRAdamW(model, lr=LR, weight_decay=WD, min_eigs=16, interval=100, grad_phase=0.0, backend="torch",
                   outlier_z=None, policy=policy)
    run(model, opt, data, 1)
    st = {d["name"]: d for d in opt.layer_stats()}
    for n in st:
        assert st[n]["wd_multiplier"] == pytest.approx(wd_mult.get(n, 1.0), rel=MAP_RTOL), (seed, n)
    if policy == "alphadecay":
        assert {d["multiplier"] for d in st.values()} == {1.0}
        ref = adamw_groups(ref_model, lambda n: 1.0, lambda n: wd_mult.get(n, 1.0))
        ref.zero_grad()
        lm_loss(ref_model, data[0]).backward()
        ref.step()
        for (n, a), b in zip(model.named_parameters(), ref_model.parameters()):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-7, msg=lambda s, n=n: f"{n} (seed {seed}): {s}")


def test_alphadecay_waits_for_weight_alphas_in_the_gradient_phase(seed):
    model, data = spectral_setup(seed)
    opt = LLRAdamW(model, lr=LR, min_eigs=16, interval=1, total_steps=100, grad_phase=0.5, backend="torch",
                   policy="llr+alphadecay")
    run(model, opt, data, 2)
    assert opt.llr.last_source == "grad" and {d["wd_multiplier"] for d in opt.layer_stats()} == {1.0}


def test_muon_takes_a_policy_too(seed):
    model, data = spectral_setup(seed)
    opt = LLRMuon(model, lr=0.02, adamw_lr=LR, min_eigs=16, backend="torch", policy="sharpness")
    run(model, opt, data, 1)
    st = {d["name"]: d["multiplier"] for d in opt.layer_stats()}
    assert st["q_proj.weight"] == 8.0 and st["embed_tokens.weight"] == 10.0 and st["norm.weight"] == 1.0
    assert st["up_proj.bias"] == st["up_proj.weight"] == 6.0  # a bias takes its module's block (the official code)


# ----------------------------------------------------------------------------------------- state and errors
@pytest.mark.parametrize("policy", ["llr-shuffled", "llr+alphadecay", "rlrs"])
def test_resume_mid_schedule_equals_the_uninterrupted_run(policy, seed):
    model, data = spectral_setup(seed)
    data = batches(6, vocab=SpectralNet.VOCAB, seed=seed)
    kw = dict(lr=LR, weight_decay=WD, min_eigs=16, interval=2, total_steps=6, grad_phase=0.2, backend="torch",
              ramp_steps=2, policy=policy)
    whole_model = copy.deepcopy(model)
    whole = LLRAdamW(whole_model, **kw)
    run(whole_model, whole, data)
    first = LLRAdamW(model, **kw)
    run(model, first, data[:3])
    saved = copy.deepcopy(first.state_dict())
    resumed = LLRAdamW(model, **kw)
    resumed.load_state_dict(saved)
    run(model, resumed, data[3:])
    for a, b in zip(model.parameters(), whole_model.parameters()):
        assert torch.equal(a, b), (seed, policy)
    assert torch.equal(resumed.multipliers(), whole.multipliers())
    assert torch.equal(resumed.llr.wd_multipliers(6), whole.llr.wd_multipliers(6))


def test_policy_errors_are_raised_at_construction():
    model = TinyLlama()
    with pytest.raises(ValueError, match="unknown policy 'lion'"):
        LLRAdamW(model, policy="lion")
    with pytest.raises(ValueError, match="RLRS needs total_steps"):
        LLRAdamW(model, policy="rlrs")
    with pytest.raises(ValueError, match="unknown block 'mlp'"):
        LLRAdamW(model, policy=BlockwiseConfig({"mlp": 2.0}))
    with pytest.raises(ValueError, match=r"wd_range\[1\] must be >= 2"):
        LLRAdamW(model, policy=LLRConfig(wd_range=(2.0, 1.0)))
    with pytest.raises(ValueError, match="fit='ks' applies to the power-law metrics"):
        LLRAdamW(model, policy=LLRConfig(metric="stable_rank", fit="ks"))
    with pytest.raises(ValueError, match="map must be one of"):
        LLRAdamW(model, policy=LLRConfig(map="tanh"))
    with pytest.raises(ValueError, match="s must be >= 1.5"):
        LLRAdamW(model, policy=LLRConfig(s=1.2, s_min=1.5))
    with pytest.raises(TypeError, match="policy must be None, a preset name"):
        LLRAdamW(model, policy=3)
    with pytest.raises(ValueError, match="scale must be > 0"):
        resolve_policy(UniformConfig(0.0), LLRConfig())
    with pytest.raises(ValueError, match="does not measure layers"):
        LLRAdamW(model, policy="uniform").update_alphas()


def test_weight_decay_multipliers_ramp_like_the_lrs(seed):
    """ramp_steps applies to the weight-decay multipliers too: after an update they move linearly, over r steps,
    from the values in force before it to the new ones (observed at both ends)."""
    model, _ = spectral_setup(seed)
    data = batches(12, vocab=SpectralNet.VOCAB, seed=seed)
    opt = LLRAdamW(model, lr=LR, min_eigs=16, interval=6, grad_phase=0.0, ramp_steps=4, backend="torch",
                   outlier_z=None, policy="llr+alphadecay")
    seen = []
    for idx in data:
        seen.append(np.array([d["wd_multiplier"] for d in opt.layer_stats()]))
        opt.zero_grad()
        lm_loss(model, idx).backward()
        opt.step()
    seen.append(np.array([d["wd_multiplier"] for d in opt.layer_stats()]))
    # seen[t]: what step t will use, read before it; the update runs at step 6, whose step already uses 1/4 of
    # the move (as the LR ramp: step t uses (t - 6 + 1) / 4 of it), so steps 7, 8 use 2/4, 3/4 and step 9 all
    old, new = seen[6], seen[10]
    assert not np.allclose(old, new), seed  # the weights moved, so the second update changed the decays
    for t in (7, 8):
        np.testing.assert_allclose(seen[t], old + (new - old) * (t - 6 + 1) / 4, rtol=1e-12, err_msg=str(seed))
    np.testing.assert_array_equal(seen[9], new, err_msg=str(seed))


def test_muon_weight_decay_multipliers_equal_per_group_weight_decay(seed):
    """LLRMuon with AlphaDecay steps like LLRMuon whose param groups carry weight_decay x the multiplier."""
    model, data = spectral_setup(seed)
    ref_model = copy.deepcopy(model)
    opt = LLRMuon(model, lr=0.02, weight_decay=WD, adamw_lr=LR, min_eigs=16, interval=100, grad_phase=0.0,
                  backend="torch", outlier_z=None, policy="alphadecay")
    run(model, opt, data, 1)
    wd_of = {d["name"]: d["wd_multiplier"] for d in opt.layer_stats()}
    assert len({round(v, 9) for v in wd_of.values()}) > 2, (seed, wd_of)  # the decays differ across layers
    groups = [{"params": [(n, p)], "weight_decay": WD * wd_of[n]} for n, p in ref_model.named_parameters()]
    ref = LLRMuon(groups, model=ref_model, lr=0.02, weight_decay=WD, adamw_lr=LR, min_eigs=16, interval=100,
                  grad_phase=0.0, backend="torch", policy="uniform")
    run(ref_model, ref, data, 1)
    for (n, a), b in zip(model.named_parameters(), ref_model.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-7, msg=lambda s, n=n: f"{n} (seed {seed}): {s}")


def metric_np(w: torch.Tensor, metric: str) -> float:
    """WeightWatcher's definitions on the eigenvalues of W^T W (squared singular values), float64."""
    lam = np.sort(np.linalg.svd(w.detach().double().numpy(), compute_uv=False) ** 2)
    if metric == "spectral_norm":
        return float(lam[-1])
    if metric == "frobenius_norm":
        return float(lam.sum())
    if metric == "stable_rank":
        return float(lam.sum() / lam[-1])
    if metric == "alpha_hat":
        return alpha_np(w, min_eigs=16) * math.log10(lam[-1])
    raise ValueError(metric)


@pytest.mark.parametrize("metric", ["spectral_norm", "frobenius_norm", "stable_rank", "alpha_hat", "grad_norm"])
def test_other_metrics_feed_the_same_map(metric, seed):
    """The paper's Fig. 7 ablation: the LR follows another per-layer metric through Eq. 3's map."""
    model, data = spectral_setup(seed)
    opt = LLRAdamW(model, lr=LR, min_eigs=16, backend="torch",
                   policy=LLRConfig(s=3.0, interval=100, grad_phase=0.0, metric=metric))
    opt.zero_grad()
    lm_loss(model, data[0]).backward()
    named = dict(model.named_parameters())
    if metric == "grad_norm":
        want = {n: float(np.linalg.norm(p.grad.double().numpy())) for n, p in named.items() if p.dim() == 2}
    else:
        want = {n: metric_np(p, metric) for n, p in named.items() if p.dim() == 2}
    opt.step()
    usable = [n for n, v in want.items() if math.isfinite(v) and n != "embed_tokens.weight"]
    x = np.array([want[n] for n in usable])
    st = {d["name"]: d for d in opt.layer_stats()}
    np.testing.assert_allclose([st[n]["multiplier"] for n in usable], tb_map_np(x, 1.0, 3.0, "linear"),
                               rtol=MAP_RTOL, atol=1e-9, err_msg=f"{metric} seed {seed}")
    np.testing.assert_allclose([st[n]["alpha"] for n in usable], x, rtol=1e-4, err_msg=f"{metric} seed {seed}")


@pytest.mark.parametrize("fit", ["ks", "fix_finger"])
def test_other_power_law_fits_reach_the_optimizer(fit, seed):
    """The paper's Fig. 8 ablation: alphas by another fit (their values are tested in test_fits.py)."""
    from llr_kernels.spectral import fit_power_law

    model, data = spectral_setup(seed)
    opt = LLRAdamW(model, lr=LR, min_eigs=16, backend="torch",
                   policy=LLRConfig(s=3.0, interval=100, grad_phase=0.0, fit=fit, outlier_z=None))
    named = dict(model.named_parameters())
    run(model, opt, data, 0)
    opt.update_alphas(0)
    for d in opt.layer_stats():
        p = named[d["name"]]
        if p.dim() == 2 and min(p.shape) >= 16:
            lam = torch.from_numpy(np.sort(np.linalg.svd(p.detach().double().numpy(), compute_uv=False) ** 2))
            assert d["alpha"] == pytest.approx(float(fit_power_law(lam, fit).alpha), rel=1e-4), (seed, d["name"])
    with pytest.raises(ValueError, match="leave hill_variant='paper'"):
        LLRAdamW(model, hill_variant="reference", policy=LLRConfig(fit=fit))


def test_one_entry_point_switches_scheme_with_one_argument(seed):
    """layerwise_optimizer(model, policy) equals building the optimizer by hand, for each kind of scheme."""
    from llr_kernels import LAMB, layerwise_optimizer

    torch.manual_seed(seed)
    model = TinyLlama()
    data = batches(2, seed=seed)
    for policy, optimizer, by_hand in (
        ("sharpness", "adamw", lambda m: LLRAdamW(m, lr=LR, policy="sharpness")),
        ("uniform", "muon", lambda m: LLRMuon(m, lr=LR, policy="uniform")),
        ("lamb", "adamw", lambda m: LAMB(m.parameters(), lr=LR)),
    ):
        a_model, b_model = copy.deepcopy(model), copy.deepcopy(model)
        a, b = layerwise_optimizer(a_model, policy, optimizer=optimizer, lr=LR), by_hand(b_model)
        assert type(a) is type(b)
        for m, o in ((a_model, a), (b_model, b)):
            run(m, o, data)
        for x, y in zip(a_model.parameters(), b_model.parameters()):
            assert torch.equal(x, y), (seed, policy)
    with pytest.raises(ValueError, match="optimizer must be one of"):
        layerwise_optimizer(model, "llr", optimizer="sgd")
    with pytest.raises(ValueError, match="is its own optimizer"):
        layerwise_optimizer(model, "lars", optimizer="muon")
    with pytest.raises(ValueError, match="unknown policy 'lion'"):
        layerwise_optimizer(model, "lion")
