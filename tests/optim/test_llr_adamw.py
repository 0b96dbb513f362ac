"""LLRAdamW end to end on the torch backend, against independent float64 references.

The expected alphas come from numpy eigenvalues of every weight (or gradient) matrix and Eq. 2, the expected
multipliers from Eq. 3 and Algorithm 1 (tests/reference.py: ``LLRScheduleF64``), and the expected parameters
from torch.optim.AdamW with one param group per layer whose LR is set by hand to base LR x expected
multiplier. The model (tests/tiny_models.py: ``SpectralNet``) has power-law spectra with known exponents, so
every alpha is finite and distinct and the tests can say which layer must get which LR.
"""
from __future__ import annotations

import copy
import io
import math

import pytest
import torch

from llr_kernels import LLRAdamW
from reference import LLRScheduleF64, alpha_np
from tiny_models import SpectralNet, TinyLlama, batches, lm_loss

pytestmark = pytest.mark.usefixtures("nan_fill")

V = SpectralNet.VOCAB
LR, WD = 1e-3, 0.1
# The optimizers' default spectral path (hill_method="auto": exact on CPU) computes in float32 and guarantees
# every alpha within 1e-5 relative of float64 Eq. 2 (llr_kernels/spectral/exact.py, EXACT_REL_TOL). Through
# Eq. 3 (span of the alphas here >= 3, s <= 3) that moves a multiplier by at most ~1e-4; a wrong map, pin,
# index or argument moves one by 0.1 or more.
ALPHA_RTOL = 1e-5
MULT_ATOL = 5e-4


def data(n: int, seed: int = 0) -> list[torch.Tensor]:
    return batches(n, vocab=V, bsz=8, seq=12, seed=seed)


def warmup_cosine(total: int, warmup: int):
    def f(t: int) -> float:
        if t < warmup:
            return (t + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (t - warmup) / max(1, total - warmup)))

    return f


def llr_reference(model: SpectralNet, **kw) -> LLRScheduleF64:
    """The float64 schedule for ``model``; pins follow the LLRAdamW keyword defaults (embedding pinned)."""
    pinned = []
    if kw.pop("pin_embedding", True):
        pinned.append("embed_tokens.weight")
    if kw.pop("pin_lm_head", False):
        pinned.append("lm_head.weight")
    names = [n for n, _ in model.named_parameters()]
    return LLRScheduleF64(names, [p.dim() == 2 for _, p in model.named_parameters()], pinned=pinned, **kw)


def train_pair(model, opt, ref_model, ref_llr: LLRScheduleF64, steps: int, batches_, *, sched=None, start: int = 0,
               ref_opt=None, check=None):
    """Step ``opt`` and a hand-driven torch.optim.AdamW (one group per layer, LR = base x expected multiplier)
    side by side; after every step the multipliers and the parameters must agree."""
    names = [n for n, _ in ref_model.named_parameters()]
    if ref_opt is None:
        ref_opt = torch.optim.AdamW([{"params": [p]} for p in ref_model.parameters()], lr=LR, weight_decay=WD, foreach=False)
    for t in range(start, start + steps):
        idx = batches_[t]
        for m, o in ((model, opt), (ref_model, ref_opt)):
            o.zero_grad()
            lm_loss(m, idx).backward()
        base = sched.get_last_lr()[0] if sched is not None else LR
        ref_llr.before_step(t, dict(ref_model.named_parameters()),
                            {n: p.grad for n, p in ref_model.named_parameters()})
        want = ref_llr.multipliers(t)
        for g, name in zip(ref_opt.param_groups, names):
            g["lr"] = base * want[names.index(name)]
        opt.step()
        ref_opt.step()
        if sched is not None:
            sched.step()
        got = opt.llr.multipliers(t).tolist()  # what step t used
        assert got == pytest.approx(want, abs=MULT_ATOL), f"step {t}"
        for (n, p), q in zip(model.named_parameters(), ref_model.parameters()):
            # LRs agree to ~1e-4 relative (MULT_ATOL): ~1e-7 per step of lr = 1e-3; a wrong LR is ~1e-3 per step
            torch.testing.assert_close(p, q, rtol=1e-5, atol=5e-6, msg=lambda s, n=n: f"step {t}, {n}: {s}")
        if check is not None:
            check(t)
    return ref_opt


def stats_by_name(opt) -> dict[str, dict]:
    return {r["name"]: r for r in opt.layer_stats()}


# ----- which layer gets which LR ------------------------------------------------------------------
@pytest.mark.parametrize("pin_lm_head", [False, True], ids=["head-free", "head-pinned"])
@pytest.mark.parametrize("variant", ["paper", "reference"])
def test_layer_lrs_follow_float64_eq2_eq3(variant, pin_lm_head):
    s = 3.0
    model = SpectralNet()
    ref_model = copy.deepcopy(model)
    opt = LLRAdamW(model, lr=LR, weight_decay=WD, s=s, interval=2, min_eigs=16, hill_variant=variant,
                   pin_lm_head=pin_lm_head, backend="torch")
    ref = llr_reference(ref_model, s=s, interval=2, min_eigs=16, variant=variant, pin_lm_head=pin_lm_head)
    train_pair(model, opt, ref_model, ref, 3, data(3))
    names = [n for n, _ in model.named_parameters()]
    got = {n: float(a) for n, a in zip(names, opt.llr.alphas)}
    for n, a in zip(names, ref.alphas):
        if math.isfinite(a):
            assert got[n] == pytest.approx(a, rel=ALPHA_RTOL), n
    other = "reference" if variant == "paper" else "paper"
    assert abs(got["q_proj.weight"] - alpha_np(model.q_proj.weight, other, 16)) > 1e-3  # the variant matters here
    st = stats_by_name(opt)
    # order of the alphas is the order of the spectra's exponents (SpectralNet.EXPONENTS)
    assert got["q_proj.weight"] < got["up_proj.weight"] < got["down_proj.weight"] < got["lm_head.weight"]
    assert st["q_proj.weight"]["lr"] == pytest.approx(LR)  # lowest alpha: lr
    assert st["embed_tokens.weight"]["lr"] == pytest.approx(s * LR)  # pinned
    top = "down_proj.weight" if pin_lm_head else "lm_head.weight"  # highest alpha among the free layers: s * lr
    assert st[top]["lr"] == pytest.approx(s * LR)
    assert st["lm_head.weight"]["lr"] == pytest.approx(s * LR)  # pinned, or the highest alpha
    assert LR < st["up_proj.weight"]["lr"] < st["down_proj.weight"]["lr"] <= s * LR
    assert st["narrow_in.weight"]["status"] == "too_few_eigenvalues" and st["narrow_in.weight"]["lr"] == pytest.approx(LR)
    assert st["norm.weight"]["status"] == "vector" and st["norm.weight"]["lr"] == pytest.approx(LR)


@pytest.mark.parametrize("min_eigs", [8, 16, 64])
def test_min_eigs_decides_which_layers_are_measured(min_eigs):
    model = SpectralNet()
    ref_model = copy.deepcopy(model)
    opt = LLRAdamW(model, lr=LR, weight_decay=WD, s=2.0, interval=2, min_eigs=min_eigs, backend="torch")
    ref = llr_reference(ref_model, s=2.0, interval=2, min_eigs=min_eigs)
    train_pair(model, opt, ref_model, ref, 2, data(2))
    st = stats_by_name(opt)
    narrow = "ok" if min_eigs <= SpectralNet.NARROW else "too_few_eigenvalues"
    wide = "ok" if min_eigs <= SpectralNet.D else "too_few_eigenvalues"
    assert st["narrow_in.weight"]["status"] == narrow and st["q_proj.weight"]["status"] == wide
    assert math.isfinite(st["narrow_out.weight"]["alpha"]) == (narrow == "ok")
    if min_eigs == 64:  # nothing measurable: every free layer keeps 1, the embedding s
        assert [r["multiplier"] for r in opt.layer_stats()] == [2.0 if r["kind"] == "embedding" else 1.0 for r in opt.layer_stats()]


def test_pin_embedding_false_maps_the_embedding_by_its_alpha():
    model = SpectralNet()
    ref_model = copy.deepcopy(model)
    opt = LLRAdamW(model, lr=LR, weight_decay=WD, s=3.0, interval=2, min_eigs=16, pin_embedding=False, backend="torch")
    ref = llr_reference(ref_model, s=3.0, interval=2, min_eigs=16, pin_embedding=False)
    train_pair(model, opt, ref_model, ref, 2, data(2))
    m = stats_by_name(opt)["embed_tokens.weight"]["multiplier"]
    assert 1.0 < m < 3.0  # its alpha lies inside the range


def test_scheduler_composes_with_the_multipliers():
    """LR of every layer = scheduled LR x multiplier, with a warmup-cosine LambdaLR and alphas re-measured."""
    total = 12
    model = SpectralNet()
    ref_model = copy.deepcopy(model)
    opt = LLRAdamW(model, lr=LR, weight_decay=WD, s=3.0, interval=4, min_eigs=16, backend="torch")
    sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(total, 3))
    ref = llr_reference(ref_model, s=3.0, interval=4, min_eigs=16)
    train_pair(model, opt, ref_model, ref, total, data(total), sched=sched)
    assert opt.llr.num_updates == 3 and ref.sources == [(0, "weight"), (4, "weight"), (8, "weight")]
    for r in opt.layer_stats():
        assert r["lr"] == pytest.approx(opt.param_groups[0]["lr"] * r["multiplier"], rel=1e-15)


def test_ramp_moves_each_layer_linearly_to_its_new_lr():
    """ramp_steps = 3: every step's LRs are the float64 schedule's ramp between the old and new multipliers."""
    total = 9
    model = SpectralNet()
    ref_model = copy.deepcopy(model)
    opt = LLRAdamW(model, lr=LR, weight_decay=WD, s=3.0, interval=4, ramp_steps=3, min_eigs=16, backend="torch")
    ref = llr_reference(ref_model, s=3.0, interval=4, ramp_steps=3, min_eigs=16)
    train_pair(model, opt, ref_model, ref, total, data(total))
    assert opt.llr.last_update == 8 and opt.llr.ramping(8)


def test_gradient_then_weight_phase():
    total = 12
    model = SpectralNet()
    ref_model = copy.deepcopy(model)
    opt = LLRAdamW(model, lr=LR, weight_decay=WD, s=2.0, interval=3, total_steps=total, grad_phase=0.25, min_eigs=16,
                   backend="torch")
    ref = llr_reference(ref_model, s=2.0, interval=3, total_steps=total, grad_phase=0.25, min_eigs=16)
    train_pair(model, opt, ref_model, ref, total, data(total),
               check=lambda t: t % 3 or opt.llr.last_source == ("grad" if t / total <= 0.25 else "weight"))
    assert ref.sources == [(0, "grad"), (3, "grad"), (6, "weight"), (9, "weight")]
    assert opt.llr.num_updates == 4


def test_active_until_freezes_the_multipliers():
    total = 10
    model = SpectralNet()
    ref_model = copy.deepcopy(model)
    kw = dict(s=3.0, interval=2, total_steps=total, grad_phase=0.0, active_until=0.3, min_eigs=16)
    opt = LLRAdamW(model, lr=LR, weight_decay=WD, backend="torch", **kw)
    ref = llr_reference(ref_model, **kw)
    train_pair(model, opt, ref_model, ref, total, data(total))
    assert opt.llr.num_updates == 2 and opt.llr.last_update == 2  # updates at 0 and 2; frozen from t = 3


def test_nan_alpha_keeps_the_previous_multiplier():
    """A layer whose alpha turns NaN (here: its weight is zeroed) keeps the multiplier it had, not 1."""
    model = SpectralNet()
    ref_model = copy.deepcopy(model)
    opt = LLRAdamW(model, lr=LR, weight_decay=WD, s=3.0, interval=2, min_eigs=16, backend="torch")
    ref = llr_reference(ref_model, s=3.0, interval=2, min_eigs=16)
    batches_ = data(4)
    ref_opt = train_pair(model, opt, ref_model, ref, 2, batches_)
    before = stats_by_name(opt)["lm_head.weight"]["multiplier"]
    assert before == pytest.approx(3.0)  # highest alpha
    with torch.no_grad():
        model.lm_head.weight.zero_()
        ref_model.lm_head.weight.zero_()
    train_pair(model, opt, ref_model, ref, 2, batches_, start=2, ref_opt=ref_opt)
    st = stats_by_name(opt)["lm_head.weight"]
    assert st["status"] == "zero_matrix" and math.isnan(st["alpha"])
    assert st["multiplier"] == before
    assert stats_by_name(opt)["down_proj.weight"]["multiplier"] == pytest.approx(3.0)  # now the highest free alpha


# ----- checkpoints ---------------------------------------------------------------------------------
def make_run(total: int, **kw):
    model = SpectralNet()
    opt = LLRAdamW(model, lr=LR, weight_decay=WD, s=3.0, min_eigs=16, total_steps=total, backend="torch", **kw)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(total, 3))
    return model, opt, sched


def run_steps(model, opt, sched, batches_, t0: int, t1: int, record: list | None = None, ref: LLRScheduleF64 | None = None):
    """Train steps t0..t1-1; record the multipliers each step used (and the float64 schedule's, from the same
    weights and gradients, when ``ref`` is given)."""
    for t in range(t0, t1):
        opt.zero_grad()
        lm_loss(model, batches_[t]).backward()
        if ref is not None:
            ref.before_step(t, dict(model.named_parameters()), {n: p.grad for n, p in model.named_parameters()})
        opt.step()
        sched.step()
        if record is not None:
            record.append((opt.llr.multipliers(t).clone(), None if ref is None else ref.multipliers(t), list(ref.start) if ref else None))


def checkpoint(model, opt, sched) -> dict:
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict()}, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


@pytest.mark.parametrize(
    "cut, kw",
    [(5, dict(interval=4, ramp_steps=3, grad_phase=0.0)), (4, dict(interval=3, grad_phase=0.5, ramp_steps=0))],
    ids=["inside-a-ramp", "inside-the-gradient-phase"],
)
def test_resume_continues_bit_for_bit(cut, kw):
    """Cut and resume mid-run (inside a ramp, or inside the gradient phase): the resumed run equals the
    uninterrupted one bit for bit, its multipliers are the float64 schedule's (the ramp's start included), and
    the Hill statuses are restored."""
    total = 10
    batches_ = data(total)
    a = make_run(total, **kw)
    ref = llr_reference(a[0], s=3.0, min_eigs=16, total_steps=total, **kw)
    whole: list = []
    run_steps(*a, batches_, 0, total, whole, ref=ref)

    b = make_run(total, **kw)
    run_steps(*b, batches_, 0, cut)
    ck = checkpoint(*b)
    c = make_run(total, **kw)
    c[0].load_state_dict(ck["model"])
    c[1].load_state_dict(ck["opt"])
    c[2].load_state_dict(ck["sched"])
    assert c[1].llr_step == cut and c[1].hill_status == b[1].hill_status
    assert c[1].llr_update_seconds == b[1].llr_update_seconds > 0
    assert set(c[1].hill_status) == {"ok", "too_few_eigenvalues", "vector"}
    assert c[1].llr.last_source == ("grad" if kw["grad_phase"] else "weight")
    resumed: list = []
    run_steps(*c, batches_, cut, total, resumed)
    for t, ((x, want, start), (y, _, _)) in enumerate(zip(whole[cut:], resumed), start=cut):
        assert torch.equal(x, y), f"multipliers at step {t}"
        assert y.tolist() == pytest.approx(want, abs=MULT_ATOL), f"step {t} against the float64 schedule"
    if kw["ramp_steps"]:  # the cut is inside the ramp of the update at 4 (steps 4, 5, 6) ...
        assert not torch.equal(whole[cut][0], whole[cut + 1][0])
        init = [3.0 if n == "embed_tokens.weight" else 1.0 for n, _ in a[0].named_parameters()]
        assert sum(abs(x - y) > 1e-3 for x, y in zip(whole[cut][2], init)) >= 3  # ... whose start is not the initial state
    for p, q in zip(a[0].parameters(), c[0].parameters()):
        assert torch.equal(p, q)
    assert torch.equal(a[1].llr.alphas.nan_to_num(-1), c[1].llr.alphas.nan_to_num(-1))


def test_loading_into_a_used_optimizer_rewinds_it():
    """Load an earlier checkpoint into an optimizer that has stepped since: it continues as from the checkpoint."""
    total = 8
    batches_ = data(total)
    a = make_run(total, interval=3, ramp_steps=2, grad_phase=0.0)
    run_steps(*a, batches_, 0, 3)
    ck = checkpoint(*a)
    run_steps(*a, batches_, 3, 6)  # the optimizer moves on (new step views, launches, state) ...
    a[0].load_state_dict(ck["model"])
    a[1].load_state_dict(ck["opt"])  # ... and is rewound
    a[2].load_state_dict(ck["sched"])
    run_steps(*a, batches_, 3, total)
    b = make_run(total, interval=3, ramp_steps=2, grad_phase=0.0)
    run_steps(*b, batches_, 0, total)
    for p, q in zip(a[0].parameters(), b[0].parameters()):
        assert torch.equal(p, q)
    assert all(float(a[1].state[p]["step"]) == total for p in a[0].parameters())


def test_load_rejects_a_state_from_another_model():
    opt = LLRAdamW(TinyLlama(), backend="torch")
    other = LLRAdamW(torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.Linear(64, 8)), backend="torch")
    with pytest.raises(ValueError, match="layers do not match"):
        opt.load_state_dict(other.state_dict())
    with pytest.raises(ValueError, match="no 'llr' entry"):
        opt.load_state_dict(torch.optim.AdamW(TinyLlama().parameters()).state_dict())


def test_bf16_params_keep_fp32_state_through_a_checkpoint():
    torch.manual_seed(0)
    model = TinyLlama().to(torch.bfloat16)
    opt = LLRAdamW(model, lr=1e-3, s=2.0, interval=3, backend="torch")
    batches_ = batches(8)

    def step(m, o, idx):
        o.zero_grad()
        lm_loss(m, idx).float().backward()
        o.step()

    for idx in batches_[:4]:
        step(model, opt, idx)
    ck = checkpoint(model, opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 1.0))
    torch.manual_seed(1)
    model2 = TinyLlama().to(torch.bfloat16)
    model2.load_state_dict(ck["model"])
    opt2 = LLRAdamW(model2, lr=1e-3, s=2.0, interval=3, backend="torch")
    opt2.load_state_dict(ck["opt"])
    p2 = next(iter(model2.parameters()))
    assert opt2.state[p2]["exp_avg"].dtype == torch.float32
    for idx in batches_[4:]:
        step(model, opt, idx)
        step(model2, opt2, idx)
    for p, q in zip(model.parameters(), model2.parameters()):
        assert torch.equal(p, q)


# ----- plain AdamW and the API ---------------------------------------------------------------------
@pytest.mark.parametrize("tied", [False, True], ids=["untied", "tied"])
def test_s1_is_torch_adamw_bit_for_bit(tied, seed):
    torch.manual_seed(seed)
    model = TinyLlama(tied=tied)
    ref_model = copy.deepcopy(model)
    opt = LLRAdamW(model, lr=3e-3, betas=(0.9, 0.95), weight_decay=0.1, s=1.0, interval=10, total_steps=40, backend="torch")
    ref = torch.optim.AdamW(ref_model.parameters(), lr=3e-3, betas=(0.9, 0.95), weight_decay=0.1, foreach=False)
    for idx in batches(40, seed=seed):
        for m, o in ((model, opt), (ref_model, ref)):
            o.zero_grad()
            lm_loss(m, idx).backward()
            o.step()
    for p, q in zip(model.parameters(), ref_model.parameters()):
        assert torch.equal(p, q)
    assert opt.llr.num_updates == 4  # alphas were measured, and s = 1 kept every multiplier at 1


def test_param_groups_named_by_model_and_closure():
    model = TinyLlama()
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = LLRAdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}], model=model, lr=1e-3, backend="torch")
    assert {l.kind for l in opt.layers} >= {"attn_q", "ffn_down", "embedding", "lm_head", "vector"}
    assert opt.layers[opt.layer_of(model.lm_head.weight)].name == "lm_head.weight"
    idx = batches(1)[0]

    def closure():
        opt.zero_grad()
        loss = lm_loss(model, idx)
        loss.backward()
        return loss

    before = [p.detach().clone() for p in no_decay]
    loss = opt.step(closure)
    assert torch.isfinite(loss)
    assert all(not torch.equal(a, p) for a, p in zip(before, no_decay))


def test_grad_alpha_source_momentum_measures_exp_avg(seed):
    """grad_alpha_source="momentum": a gradient-phase update measures each layer's exp_avg as the steps before
    left it (the gradient at step 0, before a moment exists). Expected alphas: numpy float64 Eq. 2 (alpha_np) of
    those tensors, which differ from the gradient's alphas."""
    torch.manual_seed(seed)
    model = SpectralNet()
    opt = LLRAdamW(model, lr=LR, weight_decay=WD, s=3.0, interval=2, total_steps=10, grad_phase=1.0, min_eigs=16,
                   grad_alpha_source="momentum", backend="torch")
    hidden = [i for i, l in enumerate(opt.layers) if l.is_matrix and min(l.shape) >= 16 and l.kind != "embedding"]
    batches_ = data(3, seed=seed % 1000)
    for t in range(3):
        opt.zero_grad()
        lm_loss(model, batches_[t]).backward()
        grads = [opt.layers[i].param.grad.clone() for i in hidden]
        source = grads if t == 0 else [opt.state[opt.layers[i].param]["exp_avg"].clone() for i in hidden]
        opt.step()
        if t % 2:
            continue
        want = [alpha_np(x, min_eigs=16) for x in source]
        got = opt.llr.alphas[hidden].tolist()
        assert got == pytest.approx(want, rel=ALPHA_RTOL), f"step {t}"
        if t == 2:
            from_grad = [alpha_np(g, min_eigs=16) for g in grads]
            assert max(abs(a - b) / b for a, b in zip(want, from_grad)) > 100 * ALPHA_RTOL  # the test can tell them apart
