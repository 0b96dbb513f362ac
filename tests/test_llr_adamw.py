"""LLRAdamW on the pure-torch path: AdamW equivalence, scheduler composition, phases, resume, errors."""
import copy
import io
import math

import pytest
import torch
from torch import nn

from llr_kernels import LLRAdamW, hill_alpha
from tiny_models import TinyLlama, batches, lm_loss


def fresh_model(tied: bool = False, seed: int | None = None) -> TinyLlama:
    if seed is not None:
        torch.manual_seed(seed)
    return TinyLlama(tied=tied)


def warmup_cosine(total: int, warmup: int):
    def f(t: int) -> float:
        if t < warmup:
            return (t + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (t - warmup) / max(1, total - warmup)))

    return f


@pytest.mark.parametrize("tied", [False, True])
def test_s1_is_torch_adamw_bit_for_bit(tied):
    model = fresh_model(tied)
    ref_model = copy.deepcopy(model)
    opt = LLRAdamW(model, lr=3e-3, betas=(0.9, 0.95), weight_decay=0.1, s=1.0, interval=10, total_steps=120, backend="torch")
    ref = torch.optim.AdamW(ref_model.parameters(), lr=3e-3, betas=(0.9, 0.95), weight_decay=0.1, foreach=False)
    for idx in batches(120, seed=torch.seed() % 2**31):
        for m, o in ((model, opt), (ref_model, ref)):
            o.zero_grad()
            lm_loss(m, idx).backward()
            o.step()
    for p, q in zip(model.parameters(), ref_model.parameters()):
        assert torch.equal(p, q)
    assert opt.llr.num_updates == 12  # alphas were measured, and s = 1 kept every multiplier at 1


def test_effective_lr_is_scheduled_lr_times_multiplier():
    total = 60
    model = fresh_model()
    ref_model = copy.deepcopy(model)
    opt = LLRAdamW(model, lr=2e-3, weight_decay=0.05, s=3.0, interval=5, total_steps=total, backend="torch")
    sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(total, 6))
    # the independent reference: plain AdamW with one param group per layer, LRs set by hand
    ref = torch.optim.AdamW([{"params": [p]} for p in ref_model.parameters()], lr=2e-3, weight_decay=0.05, foreach=False)
    layer_of = [opt.layer_of(p) for p in model.parameters()]
    for t, idx in enumerate(batches(total)):
        for m, o in ((model, opt), (ref_model, ref)):
            o.zero_grad()
            lm_loss(m, idx).backward()
        scheduled = sched.get_last_lr()[0]
        opt.step()
        mult = opt.llr.multipliers(t)
        for g, li in zip(ref.param_groups, layer_of):
            g["lr"] = scheduled * float(mult[li])
        ref.step()
        sched.step()
        for p, q in zip(model.parameters(), ref_model.parameters()):
            assert torch.equal(p, q), f"step {t}"
    mult = opt.multipliers()
    assert float(mult.max()) == pytest.approx(3.0) and float(mult.min()) == pytest.approx(1.0)
    for row, li in zip(opt.layer_stats(), range(len(opt.layers))):
        assert row["lr"] == pytest.approx(opt.param_groups[0]["lr"] * float(mult[li]), rel=1e-15)
    emb = next(r for r in opt.layer_stats() if r["kind"] == "embedding")
    assert emb["multiplier"] == 3.0  # pinned at s


def test_gradient_then_weight_phase():
    total = 40
    model = fresh_model()
    opt = LLRAdamW(model, lr=1e-3, s=2.0, interval=5, total_steps=total, grad_phase=0.25, backend="torch")
    measured = [i for i, l in enumerate(opt.layers) if l.is_matrix]
    for t, idx in enumerate(batches(total)):
        opt.zero_grad()
        lm_loss(model, idx).backward()
        if t % 5 == 0:
            src = [opt.layers[i].param.grad if t <= 10 else opt.layers[i].param for i in measured]
            want = hill_alpha([x.detach().clone() for x in src])
        opt.step()
        if t % 5 == 0:
            assert opt.llr.last_source == ("grad" if t / total <= 0.25 else "weight"), t
            assert torch.allclose(opt.llr.alphas[measured], want, rtol=1e-12, equal_nan=True), t
    assert opt.llr.num_updates == 8


def run(model, opt, sched, data):
    for idx in data:
        opt.zero_grad()
        lm_loss(model, idx).backward()
        opt.step()
        sched.step()


def make(seed_model: TinyLlama, total: int):
    model = copy.deepcopy(seed_model)
    opt = LLRAdamW(model, lr=2e-3, weight_decay=0.1, s=3.0, interval=7, total_steps=total, grad_phase=0.1, ramp_steps=3, backend="torch")
    sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(total, 8))
    return model, opt, sched


def test_resume_continues_bit_for_bit():
    total, cut = 80, 30
    init = fresh_model()
    data = batches(total, seed=torch.seed() % 2**31)
    a_model, a_opt, a_sched = make(init, total)
    run(a_model, a_opt, a_sched, data)

    b_model, b_opt, b_sched = make(init, total)
    run(b_model, b_opt, b_sched, data[:cut])
    buf = io.BytesIO()
    torch.save({"model": b_model.state_dict(), "opt": b_opt.state_dict(), "sched": b_sched.state_dict()}, buf)
    buf.seek(0)
    ckpt = torch.load(buf, weights_only=True)

    c_model, c_opt, c_sched = make(fresh_model(), total)
    c_model.load_state_dict(ckpt["model"])
    c_opt.load_state_dict(ckpt["opt"])
    c_sched.load_state_dict(ckpt["sched"])
    assert c_opt.llr_step == cut and c_opt.llr.last_update == 28
    run(c_model, c_opt, c_sched, data[cut:])
    for p, q in zip(a_model.parameters(), c_model.parameters()):
        assert torch.equal(p, q)
    assert torch.equal(a_opt.multipliers(), c_opt.multipliers())
    assert torch.allclose(a_opt.llr.alphas, c_opt.llr.alphas, equal_nan=True, rtol=0, atol=0)


def test_load_rejects_a_state_from_another_model():
    opt = LLRAdamW(fresh_model(), backend="torch")
    other = LLRAdamW(nn.Sequential(nn.Linear(64, 64), nn.Linear(64, 8)), backend="torch")
    with pytest.raises(ValueError, match="layers do not match"):
        opt.load_state_dict(other.state_dict())
    with pytest.raises(ValueError, match="no 'llr' entry"):
        opt.load_state_dict(torch.optim.AdamW(fresh_model().parameters()).state_dict())


def test_nan_alpha_layer_keeps_its_multiplier_and_says_why():
    model = nn.Sequential(nn.Linear(64, 96), nn.Tanh(), nn.Linear(96, 80), nn.Tanh(), nn.Linear(80, 8))
    opt = LLRAdamW(model, lr=1e-3, s=2.0, interval=1, backend="torch")
    x = torch.randn(32, 64)
    for _ in range(3):
        opt.zero_grad()
        model(x).square().mean().backward()
        opt.step()
    stats = {r["name"]: r for r in opt.layer_stats()}
    assert stats["4.weight"]["status"] == "too_few_eigenvalues" and stats["4.weight"]["multiplier"] == 1.0
    assert {stats["0.weight"]["multiplier"], stats["2.weight"]["multiplier"]} == {1.0, 2.0}
    assert stats["0.bias"]["status"] == "vector" and stats["0.bias"]["multiplier"] == 1.0


def test_param_groups_named_by_model_and_closure():
    model = fresh_model()
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = LLRAdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}], model=model, lr=1e-3, backend="torch")
    assert {l.kind for l in opt.layers} >= {"attn_q", "ffn_down", "embedding", "lm_head", "vector"}
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


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(s=0.9), "s must be"),
        (dict(interval=0), "interval"),
        (dict(grad_phase=2.0), "grad_phase"),
        (dict(backend="magic"), "backend must be one of"),
        (dict(lr=-1.0), "lr must be"),
        (dict(betas=(0.9, 1.0)), "betas"),
        (dict(max_grad_norm=0.0), "max_grad_norm"),
    ],
)
def test_bad_configuration_raises_value_error(kwargs, match):
    with pytest.raises(ValueError, match=match):
        LLRAdamW(fresh_model(), **kwargs)


def test_clipping_matches_clip_grad_norm_then_adamw():
    model = fresh_model()
    ref_model = copy.deepcopy(model)
    opt = LLRAdamW(model, lr=1e-3, s=1.0, max_grad_norm=0.5, backend="torch")
    ref = torch.optim.AdamW(ref_model.parameters(), lr=1e-3, foreach=False)
    for idx in batches(10):
        for m, o in ((model, opt), (ref_model, ref)):
            o.zero_grad()
            (lm_loss(m, idx) * 50).backward()
        norm = torch.nn.utils.clip_grad_norm_(ref_model.parameters(), 0.5, foreach=False)
        opt.step()
        ref.step()
        assert float(opt.last_grad_norm) == pytest.approx(float(norm), rel=1e-5)
    for p, q in zip(model.parameters(), ref_model.parameters()):
        assert torch.allclose(p, q, rtol=1e-5, atol=1e-7)


def test_bf16_params_keep_fp32_state_through_a_checkpoint():
    torch.manual_seed(0)
    model = fresh_model().to(torch.bfloat16)
    opt = LLRAdamW(model, lr=1e-3, s=2.0, interval=3, backend="torch")
    data = batches(8)

    def step(m, o, idx):
        o.zero_grad()
        lm_loss(m, idx).float().backward()
        o.step()

    for idx in data[:4]:
        step(model, opt, idx)
    buf = io.BytesIO()
    torch.save({"m": model.state_dict(), "o": opt.state_dict()}, buf)
    buf.seek(0)
    ck = torch.load(buf, weights_only=True)
    model2 = fresh_model().to(torch.bfloat16)
    model2.load_state_dict(ck["m"])
    opt2 = LLRAdamW(model2, lr=1e-3, s=2.0, interval=3, backend="torch")
    opt2.load_state_dict(ck["o"])
    p2 = next(iter(model2.parameters()))
    assert opt2.state[p2]["exp_avg"].dtype == torch.float32
    for idx in data[4:]:
        step(model, opt, idx)
        step(model2, opt2, idx)
    for p, q in zip(model.parameters(), model2.parameters()):
        assert torch.equal(p, q)
