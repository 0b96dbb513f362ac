"""Issue 12: no layer can switch LLR off or squash everyone else's LR, and odd inputs have tested answers.

Expected alphas and multipliers come from tests/reference.py (numpy eigenvalues, Eq. 2 with the rank-aware
rule, Eq. 3, the robust outlier rule written out independently), never from the optimizer itself.
"""
from __future__ import annotations

import math
import os
import sys
import warnings

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from llr_kernels import LLRAdamW, LLRMuon
from llr_kernels.ops import dispatch
from llr_kernels.policies.llr import LLRConfig, LLRPolicy, robust_outliers
from conftest import device_for, requires
from reference import eq3, esd_np, hill_llr_np, robust_outliers_np
from tiny_models import SpectralNet

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "python"))
import models as harness  # noqa: E402 - the training harness's models (python/models.py)

S = 3.0


# ----- the policy: bounded multipliers, invalid alphas isolated, outliers by the robust rule -------------

alpha_values = st.one_of(
    st.floats(1.05, 12.0),
    st.sampled_from([float("nan"), float("inf"), 2.5e6, 1.0 + 1e-9, 60.0]),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(alpha_values, min_size=1, max_size=24), st.data())
def test_policy_multipliers_bounded_and_outliers_follow_the_rule(alphas, data):
    n = len(alphas)
    pinned = data.draw(st.lists(st.booleans(), min_size=n, max_size=n))
    previous = data.draw(st.lists(st.floats(1.0, S), min_size=n, max_size=n))
    policy = LLRPolicy(LLRConfig(s=S), n, torch.tensor(pinned))
    policy.target = torch.tensor(previous, dtype=torch.float64)
    out_mask = policy.update(0, torch.tensor(alphas, dtype=torch.float64), "weight")
    got = policy.multipliers(0)

    expected_out = robust_outliers_np(alphas, pinned)
    assert out_mask.tolist() == expected_out
    mapped = [float("nan") if (o or not math.isfinite(a)) else a for a, o in zip(alphas, expected_out)]
    want = eq3(mapped, S, pinned, previous)
    assert torch.allclose(got, torch.tensor(want, dtype=torch.float64), rtol=0, atol=1e-12)
    assert bool(((got >= 1.0) & (got <= S)).all())


@settings(max_examples=150, deadline=None)
@given(st.lists(st.floats(2.0, 3.5), min_size=5, max_size=12),
       st.lists(st.sampled_from([float("nan"), float("inf"), 2.5e6, 1.0 + 1e-9]), min_size=1, max_size=2))
def test_invalid_alphas_never_move_the_others(good, extra):
    """Appending NaN / inf / extreme alphas leaves every other layer's multiplier at Eq. 3 of the good ones
    (alphas in [2, 3.5] span ln(alpha - 1) < 1 = z * min_scale, so none of them is ever an outlier)."""
    alphas = torch.tensor(good + extra, dtype=torch.float64)
    policy = LLRPolicy(LLRConfig(s=S), alphas.numel(), torch.zeros(alphas.numel(), dtype=torch.bool))
    policy.update(0, alphas, "weight")
    want = eq3(good, S) + [1.0] * len(extra)  # the extras keep their previous (initial) multiplier
    assert policy.multipliers(0).tolist() == pytest.approx(want, abs=1e-12)


def test_robust_outliers_on_typical_and_extreme_layers():
    typical = torch.tensor([2.1, 2.4, 2.2, 2.9, 4.1, 4.8, 5.6, 3.3, 2.6, 6.0], dtype=torch.float64)
    assert not robust_outliers(typical, torch.ones(10, dtype=torch.bool)).any()  # attention ~2, FFN ~5: all kept
    with_orth = torch.cat([typical, torch.tensor([2.5e6, 1.0 + 1e-6], dtype=torch.float64)])
    mask = robust_outliers(with_orth, torch.ones(12, dtype=torch.bool))
    assert mask.tolist() == [False] * 10 + [True, True]
    assert not robust_outliers(with_orth[:4], torch.ones(4, dtype=torch.bool)).any()  # too few layers for the rule
    with pytest.raises(ValueError, match="outlier_z"):
        LLRConfig(outlier_z=0.0).validate()


def test_outlier_rule_can_be_switched_off():
    alphas = torch.tensor([2.0, 2.5, 3.0, 3.5, 4.0, 40.0], dtype=torch.float64)
    on = LLRPolicy(LLRConfig(s=S), 6, torch.zeros(6, dtype=torch.bool))
    off = LLRPolicy(LLRConfig(s=S, outlier_z=None), 6, torch.zeros(6, dtype=torch.bool))
    assert on.update(0, alphas, "weight").tolist() == [False] * 5 + [True]
    assert not off.update(0, alphas, "weight").any()
    assert on.multipliers(0).tolist() == pytest.approx(eq3([2.0, 2.5, 3.0, 3.5, 4.0, float("nan")], S))
    assert off.multipliers(0).tolist() == pytest.approx(eq3(alphas.tolist(), S))


# ----- flat spectra: one orthogonal layer cannot squash the range ------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_orthogonal_layer_does_not_squash_the_others(dtype):
    model = SpectralNet(seed=3)
    with torch.no_grad():
        nn.init.orthogonal_(model.q_proj.weight)
    model = model.to(dtype)
    opt = LLRAdamW(model, lr=1e-3, s=S, interval=1, min_eigs=16, backend="torch")
    with pytest.warns(RuntimeWarning, match="q_proj"):
        opt.update_alphas(0)
    names = [l.name for l in opt.layers]
    stats = {r["name"]: r for r in opt.layer_stats()}
    assert stats["q_proj.weight"]["status"] in ("flat_spectrum", "out_of_range", "outlier")
    assert stats["q_proj.weight"]["multiplier"] == 1.0  # keeps its previous (initial) multiplier

    ref = [hill_llr_np(esd_np(l.param), min_eigs=16) if l.is_matrix else float("nan") for l in opt.layers]
    pinned = opt.llr.pinned.tolist()
    out = robust_outliers_np(ref, pinned)
    ref = [float("nan") if o else a for a, o in zip(ref, out)]
    want = eq3(ref, S, pinned)
    got = [stats[n]["multiplier"] for n in names]
    assert got == pytest.approx(want, abs=5e-4)
    spread = [stats[n]["multiplier"] for n in ("up_proj.weight", "down_proj.weight", "lm_head.weight")]
    assert min(spread) == pytest.approx(1.0) and max(spread) == pytest.approx(S)  # the others still span [1, s]


# ----- rank-deficient gradients keep LLR on --------------------------------------------------------------


def _harness_model(seed: int, vocab: int = 128) -> nn.Module:
    torch.manual_seed(seed)
    return harness.build_model(harness.model_config("tiny", vocab_size=vocab, max_seq_len=64))


def _lm_loss(model: nn.Module, idx: torch.Tensor) -> torch.Tensor:
    logits = model(idx[:, :-1])
    return nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), idx[:, 1:].reshape(-1))


def test_rank_deficient_gradients_keep_llr_on(seed):
    """32 tokens per step on 64-wide layers: every gradient has rank <= 32 = n/2, so Eq. 2's threshold is zero.
    The rank-aware estimate keeps LLR working, says so once, and matches the numpy reference."""
    model = _harness_model(seed)
    opt = LLRAdamW(model, lr=1e-3, s=S, interval=2, total_steps=20, grad_phase=1.0, min_eigs=16, backend="torch")
    gen = torch.Generator().manual_seed(seed)
    caught = []
    for t in range(5):
        idx = torch.randint(0, 128, (1, 33), generator=gen)  # 32 predicted tokens
        _lm_loss(model, idx).backward()
        grads = {l.name: l.param.grad.detach().clone() for l in opt.layers if l.is_matrix}
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            opt.step()
        caught += [str(x.message) for x in w if "rank-deficient" in str(x.message)]
        if opt.llr.is_update_step(t):
            stats = {r["name"]: r for r in opt.layer_stats()}
            hidden = [l for l in opt.layers if l.kind not in ("embedding", "lm_head") and l.is_matrix]
            assert {stats[l.name]["status"] for l in hidden} == {"ok_rank_deficient"}
            ref = [hill_llr_np(esd_np(grads[l.name]), min_eigs=16) if l.is_matrix else float("nan") for l in opt.layers]
            out = robust_outliers_np(ref, opt.llr.pinned.tolist())
            want = eq3([float("nan") if o else a for a, o in zip(ref, out)], S, opt.llr.pinned.tolist())
            got = [stats[l.name]["multiplier"] for l in opt.layers]
            assert got == pytest.approx(want, abs=5e-4)
            assert max(stats[l.name]["multiplier"] for l in hidden) > 2.0  # LLR is on: the range is used
        opt.zero_grad()
    assert len(caught) == 1  # one warning for the cause, not one per update


# ----- a real training loop with faults injected at update steps -------------------------------------------


def test_fault_injection_training_loop(seed):
    model = _harness_model(seed)
    with torch.no_grad():
        nn.init.orthogonal_(dict(model.named_parameters())[_find(model, "layers.1", "wq", "q_proj")])
    opt = LLRAdamW(model, lr=2e-3, s=S, interval=3, total_steps=30, grad_phase=0.3, min_eigs=16, backend="torch")
    named = dict(model.named_parameters())
    nan_target = _find(model, "layers.0", "wk", "k_proj")
    zero_target = _find(model, "layers.0", "w2", "down")
    none_target = _find(model, "layers.1", "wv", "v_proj")
    gen = torch.Generator().manual_seed(seed)
    causes = []
    for t in range(30):
        idx = torch.randint(0, 128, (1, 33), generator=gen)
        loss = _lm_loss(model, idx)
        assert torch.isfinite(loss), f"loss went non-finite at step {t}"
        loss.backward()
        backup = None
        if t == 3:  # a NaN gradient at a gradient-phase update: measured, then rolled back by the "user"
            backup = (named[nan_target].detach().clone(), {k: v.clone() for k, v in opt.state[named[nan_target]].items()})
            named[nan_target].grad[0, 0] = float("nan")
        if t == 6:
            named[zero_target].grad.zero_()
        if t == 9:
            named[none_target].grad = None
        before = opt.multipliers().clone()
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            opt.step()
        causes += [str(x.message) for x in w]
        if opt.llr.is_update_step(t):
            stats = {r["name"]: r for r in opt.layer_stats()}
            hit = {3: (nan_target, "non_finite"), 6: (zero_target, "zero_matrix"), 9: (none_target, "no_grad")}.get(t)
            if hit is not None:
                name, status = hit
                assert stats[name]["status"] == status
                i = [l.name for l in opt.layers].index(name)
                assert float(opt.multipliers()[i]) == float(before[i])  # an invalid alpha moves nothing
            mapped = [r for r, pin in zip(opt.layer_stats(), opt.llr.pinned.tolist())
                      if not pin and r["status"] in ("ok", "ok_rank_deficient")]
            mults = sorted(r["multiplier"] for r in mapped)
            assert mults[0] == pytest.approx(1.0) and mults[-1] == pytest.approx(S)  # still spread over [1, s]
            assert np.median(mults) < S - 0.05 and np.median(mults) > 1.05  # not squashed to one end
        if backup is not None:
            with torch.no_grad():
                named[nan_target].copy_(backup[0])
                for key, value in backup[1].items():  # in place: the step's cached launch tables hold these tensors
                    opt.state[named[nan_target]][key].copy_(value)
        opt.zero_grad()
    for cause in ("inf or NaN", "all-zero", "no gradient"):
        assert sum(cause in c for c in causes) == 1, (cause, causes)


def _find(model: nn.Module, block: str, *keys: str) -> str:
    """The name of the first matrix parameter under ``block`` whose name contains one of ``keys``."""
    for name, p in model.named_parameters():
        if block in name and p.dim() == 2 and any(k in name for k in keys):
            return name
    raise AssertionError(f"no parameter under {block} matching {keys}: {[n for n, _ in model.named_parameters()]}")


# ----- odd parameters on every step backend ---------------------------------------------------------------


class OddNet(nn.Module):
    """Every awkward parameter at once: 1 x N, N x 1, tiny, all-zero, rank-one, tied, frozen, unused."""

    def __init__(self, scale: float, dtype: torch.dtype) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(7)
        self.emb = nn.Embedding(40, 60)
        self.row = nn.Parameter(torch.randn(1, 60, generator=g))
        self.col = nn.Parameter(torch.randn(60, 1, generator=g))
        self.tiny = nn.Linear(60, 60, bias=False)
        self.zero = nn.Linear(60, 60, bias=False)
        self.rank1 = nn.Linear(60, 60, bias=True)
        self.frozen = nn.Linear(60, 60)
        self.unused = nn.Linear(60, 60)
        self.head = nn.Linear(60, 40, bias=False)
        self.head.weight = self.emb.weight  # tied
        with torch.no_grad():
            self.tiny.weight.mul_(scale)
            self.zero.weight.zero_()
            u, v = torch.randn(60, 1, generator=g), torch.randn(1, 60, generator=g)
            self.rank1.weight.copy_(u @ v / 60)
        self.frozen.requires_grad_(False)
        self.to(dtype)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        h = self.emb(idx) * (self.row + self.col.mT)
        h = h + self.tiny(h) + self.zero(h) + torch.tanh(self.rank1(h)) + self.frozen(h)
        return self.head(h)


BACKENDS = [pytest.param(b, marks=requires(dispatch.unavailable_reason(b, device_for(b)), b)) for b in ("torch", "cpp", "triton")]


@pytest.mark.parametrize("backend", BACKENDS)
@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(scale=st.sampled_from([1e-30, 1e-3, 1.0, 1e3]), dtype=st.sampled_from([torch.float32, torch.bfloat16]),
       source=st.sampled_from(["grad", "weight"]))
def test_odd_parameters_step_without_exceptions(backend, scale, dtype, source):
    model = OddNet(scale, dtype).to(device_for(backend))
    total = 4 if source == "grad" else None
    opt = LLRAdamW(model, lr=1e-3, s=S, interval=1, total_steps=total, grad_phase=1.0, min_eigs=16, backend=backend)
    idx = torch.randint(0, 40, (2, 9), generator=torch.Generator().manual_seed(0)).to(device_for(backend))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        for _ in range(3):
            model(idx).float().square().mean().backward()
            opt.step()
            opt.zero_grad()
    mult = opt.multipliers()
    assert bool(((mult >= 1.0) & (mult <= S)).all())
    for layer, stat in zip(opt.layers, opt.layer_stats()):
        if stat["status"] not in ("ok", "ok_rank_deficient"):
            assert math.isnan(stat["alpha"]) or stat["status"] == "outlier"
    for p in model.parameters():
        assert torch.isfinite(p.float()).all()


def test_sparse_embedding_fails_at_construction():
    model = nn.Sequential(nn.Embedding(10, 4, sparse=True), nn.Linear(4, 4))
    with pytest.raises(ValueError, match=r"0 is an Embedding with sparse=True.*sparse=False"):
        LLRAdamW(model)


# ----- Hugging Face Conv1D (stored (in, out)): Muon's shape factor uses the logical (out, in) shape ---------


def test_gpt2_conv1d_gets_the_shape_factor_of_an_equivalent_linear():
    import transformers  # a test dependency (pyproject's "test" extra)

    cfg = transformers.GPT2Config(n_embd=64, n_layer=1, n_head=2, vocab_size=100, n_positions=32,
                                  resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    torch.manual_seed(0)
    gpt = transformers.GPT2LMHeadModel(cfg)
    lin = _linearized(gpt)
    idx = torch.randint(0, 100, (2, 16), generator=torch.Generator().manual_seed(1))
    for m in (gpt, lin):
        m(idx).logits.float().square().mean().backward()
    kw = dict(lr=0.02, adamw_lr=1e-3, s=1.0, min_eigs=16, ns_dtype=torch.float64, muon_backend="torch", backend="torch")
    opt_g, opt_l = LLRMuon(gpt, **kw), LLRMuon(lin, **kw)
    stats_g = {r["name"]: r for r in opt_g.layer_stats()}
    stats_l = {r["name"]: r for r in opt_l.layer_stats()}
    convs = {n: m for n, m in gpt.named_modules() if type(m).__name__ == "Conv1D"}
    assert convs
    for name, mod in convs.items():
        key = name + ".weight"
        out_f, in_f = mod.nf, mod.weight.shape[0]
        assert stats_g[key]["update_lr"] == pytest.approx(0.02 * math.sqrt(max(1.0, out_f / in_f)))  # Keller Jordan's rule
        assert stats_g[key]["update_lr"] == pytest.approx(stats_l[key]["update_lr"])
    opt_g.step()
    opt_l.step()
    lin_params = dict(lin.named_parameters())
    for name in convs:
        w_g = dict(gpt.named_parameters())[name + ".weight"]
        assert torch.allclose(w_g.detach().mT, lin_params[name + ".weight"].detach(), rtol=0, atol=1e-6)


def _linearized(gpt: nn.Module) -> nn.Module:
    """A deep copy of a GPT-2 model whose Conv1D modules are nn.Linear with the transposed weights (the same
    function), so Muon on it is the reference for Muon on Conv1D."""
    import copy

    lin = copy.deepcopy(gpt)
    for name, mod in list(lin.named_modules()):
        if type(mod).__name__ != "Conv1D":
            continue
        new = nn.Linear(mod.weight.shape[0], mod.nf)
        with torch.no_grad():
            new.weight.copy_(mod.weight.mT)
            new.bias.copy_(mod.bias)
        parent = lin.get_submodule(name.rsplit(".", 1)[0])
        setattr(parent, name.rsplit(".", 1)[1], new)
    return lin


# ----- determinism ------------------------------------------------------------------------------------------


def test_same_seed_same_multipliers_bit_for_bit():
    runs = []
    for _ in range(2):
        model = _harness_model(11)
        opt = LLRAdamW(model, lr=2e-3, s=S, interval=2, total_steps=8, grad_phase=0.5, min_eigs=16)
        gen = torch.Generator().manual_seed(11)
        hist = []
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            for _t in range(8):
                _lm_loss(model, torch.randint(0, 128, (2, 33), generator=gen)).backward()
                opt.step()
                opt.zero_grad()
                hist.append(opt.multipliers().clone())
        runs.append((torch.stack(hist), [p.detach().clone() for p in model.parameters()]))
    assert torch.equal(runs[0][0], runs[1][0])
    assert all(torch.equal(a, b) for a, b in zip(runs[0][1], runs[1][1]))


# ----- outlier_z, the "outlier" status and its warning, pinned layers never warned about -------------------


@pytest.mark.parametrize("z", [2.0, 4.0, 5.0, 8.0])
def test_outlier_z_sets_the_cut(z):
    """outlier_z is the cut in robust standard deviations: a smaller z excludes more layers (reference:
    robust_outliers_np with the same z). The alphas give x = ln(alpha - 1) with median 0.47 and scale 0.43, so
    5.0 (x = 1.39) is an outlier below z = 2.1 and 12.0 (x = 2.40) below z = 4.5."""
    alphas = [2.0, 2.2, 2.4, 2.6, 2.8, 5.0, 12.0]
    n = len(alphas)
    pinned = [False] * n
    policy = LLRPolicy(LLRConfig(s=S, outlier_z=z), n, torch.tensor(pinned))
    got = policy.update(0, torch.tensor(alphas, dtype=torch.float64), "weight").tolist()
    want = robust_outliers_np(alphas, pinned, z=z)
    assert got == want
    assert sum(want) == {2.0: 2, 4.0: 1, 5.0: 0, 8.0: 0}[z]  # the cases differ: the test can tell z's apart
    mapped = [float("nan") if o else a for a, o in zip(alphas, want)]
    assert policy.multipliers(0).tolist() == pytest.approx(eq3(mapped, S), abs=1e-12)


def _six_linears(exponents: list[float], seed: int) -> nn.Sequential:
    from reference import power_law_matrix

    model = nn.Sequential(*[nn.Linear(48, 48, bias=False) for _ in exponents])
    with torch.no_grad():
        for k, (lin, e) in enumerate(zip(model, exponents)):
            lin.weight.copy_(power_law_matrix(48, 48, e, seed=seed + k))
    return model


def test_an_outlier_layer_is_reported_keeps_its_multiplier_and_survives_a_checkpoint(seed):
    """Five layers with alphas ~2-3 and one with alpha ~12 (power-law weights, tests/reference.py): the
    robust rule (robust_outliers_np on numpy alphas) excludes the last; layer_stats says "outlier", its
    multiplier stays at 1 (its previous), the others follow Eq. 3 of the rest, one warning names it, and a
    checkpoint restores the outlier mask and statuses."""
    seed %= 1000
    model = _six_linears([2.0, 2.2, 2.4, 2.6, 2.8, 12.0], seed)
    opt = LLRAdamW(model, lr=1e-3, s=S, interval=1, min_eigs=16, backend="torch")
    ref = [hill_llr_np(esd_np(l.param), min_eigs=16) for l in opt.layers]
    out = robust_outliers_np(ref, [False] * 6)
    assert out == [False] * 5 + [True], (ref, out)  # the construction does what the test means
    with pytest.warns(RuntimeWarning, match=r"LLR: 1 layer\(s\) \(5\.weight\): alpha far from the other layers'"):
        opt.update_alphas(0)
    stats = opt.layer_stats()
    assert [r["status"] for r in stats] == ["ok"] * 5 + ["outlier"]
    assert [r["alpha"] for r in stats] == pytest.approx(ref, rel=1e-5)  # the measured alpha is kept for logging
    want = eq3(ref[:5] + [float("nan")], S)
    assert [r["multiplier"] for r in stats] == pytest.approx(want, abs=5e-4)
    assert stats[5]["multiplier"] == 1.0

    sd = opt.state_dict()
    new = LLRAdamW(_six_linears([2.0] * 6, seed), lr=1e-3, s=S, interval=1, min_eigs=16, backend="torch")
    new.load_state_dict(sd)
    assert new.llr.outliers.tolist() == [False] * 5 + [True]
    assert [r["status"] for r in new.layer_stats()] == ["ok"] * 5 + ["outlier"]


def test_pinned_layers_are_never_warned_about(seed):
    """A pinned embedding whose alpha cannot be measured (all-zero weight) sits at s without a warning: the
    warnings name only the unpinned layers whose alphas are unusable (the narrow ones, below min_eigs)."""
    model = SpectralNet(seed=seed % 1000)
    with torch.no_grad():
        model.embed_tokens.weight.zero_()
    opt = LLRAdamW(model, lr=1e-3, s=S, interval=1, min_eigs=16, backend="torch")
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        opt.update_alphas(0)
    stats = {r["name"]: r for r in opt.layer_stats()}
    assert stats["embed_tokens.weight"]["status"] == "zero_matrix"  # unusable, but pinned
    assert stats["embed_tokens.weight"]["multiplier"] == S
    messages = [str(x.message) for x in w if issubclass(x.category, RuntimeWarning)]
    assert len(messages) == 1 and "narrow_in.weight, narrow_out.weight" in messages[0], messages
    assert not any("embed_tokens" in m for m in messages), messages
