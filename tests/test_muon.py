"""LLRMuon, batched Newton-Schulz and the Muon elementwise kernels, against independent references.

The Triton kernels run through the interpreter on CPU (TRITON_INTERPRET=1, set by conftest.py when there is
no CUDA). Shapes are small on purpose; nothing here is timed.
"""
from __future__ import annotations

import os

if not __import__("torch").cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import copy
import io
import math

import pytest
import torch
from torch import nn

from llr_kernels.dispatch import get_op, triton_importable
from llr_kernels.ops.muon_torch import muon_apply_torch, muon_momentum_torch
from llr_kernels.ops.newton_schulz import POLAR_EXPRESS, QUINTIC, newton_schulz, resolve_coefficients
from llr_kernels.optim.muon import LLRMuon, adjust_lr_ratio

HAS_TORCH_MUON = hasattr(torch.optim, "Muon")
needs_triton = pytest.mark.skipif(not triton_importable(), reason="triton is not installed")
MUON_BACKENDS = ["torch", pytest.param("triton", marks=needs_triton)]


# ----- references ---------------------------------------------------------------------------------
def ns_reference(G: torch.Tensor, coeffs, safety: float = 1.0, eps: float = 1e-7) -> torch.Tensor:
    """Single matrix, float64, Keller Jordan's layout (transpose tall matrices, Gram on the short side)."""
    X = G.to(torch.float64)
    tall = X.shape[0] > X.shape[1]
    if tall:
        X = X.T
    X = X / max(float(X.norm()) * safety, eps)
    for a, b, c in coeffs:
        A = X @ X.T
        X = a * X + (b * A + c * A @ A) @ X
    return X.T if tall else X


class ReferenceMuon:
    """Straightforward single-tensor Muon with one LR per matrix (float64 Newton-Schulz)."""

    def __init__(self, params, lrs, wd, momentum=0.95, nesterov=True, coeffs="quintic", steps=5, adjust="original"):
        self.params, self.lrs, self.wd, self.mu, self.nesterov = params, lrs, wd, momentum, nesterov
        self.coeffs, self.safety = resolve_coefficients(coeffs, steps)
        self.adjust = adjust
        self.bufs = [torch.zeros_like(p) for p in params]

    def zero_grad(self):
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self):
        for p, buf, lr in zip(self.params, self.bufs, self.lrs):
            g = p.grad
            buf.mul_(self.mu).add_(g, alpha=1 - self.mu)
            u = (1 - self.mu) * g + self.mu * buf if self.nesterov else buf
            o = ns_reference(u, self.coeffs, self.safety)
            p.mul_(1 - lr * self.wd)
            p.sub_(lr * adjust_lr_ratio(self.adjust, tuple(p.shape)) * o.to(p.dtype))


class TinyLM(nn.Module):
    """Embedding, attention-like and FFN-like matrices (square, tall, wide), a norm, biases and a head."""

    def __init__(self, vocab=40, d=16, ff=32):
        super().__init__()
        self.embed_tokens = nn.Embedding(vocab, d)
        self.q_proj = nn.Linear(d, d, bias=False)
        self.k_proj = nn.Linear(d, d, bias=False)
        self.up_proj = nn.Linear(d, ff, bias=True)  # tall (ff x d)
        self.down_proj = nn.Linear(ff, d, bias=False)  # wide (d x ff)
        self.norm = nn.LayerNorm(d)
        self.lm_head = nn.Linear(d, vocab, bias=False)

    def forward(self, x):
        h = self.embed_tokens(x)
        h = h + torch.tanh(self.q_proj(h)) * self.k_proj(h)
        h = h + self.down_proj(torch.relu(self.up_proj(h)))
        return self.lm_head(self.norm(h))

    def muon_params(self):
        return [self.q_proj.weight, self.k_proj.weight, self.up_proj.weight, self.down_proj.weight]

    def other_params(self):
        ids = {id(p) for p in self.muon_params()}
        return [p for p in self.parameters() if id(p) not in ids]


def train(model, opts, steps, seed=1, vocab=40):
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x = torch.randint(0, vocab, (4, 6), generator=g)
        for o in opts:
            o.zero_grad()
        model(x).logsumexp(-1).mean().backward()
        for o in opts:
            o.step()


def assert_same(m1, m2, atol=0.0):
    for (n, a), b in zip(m1.named_parameters(), m2.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=atol, msg=lambda s: f"{n}: {s}")


# ----- Newton-Schulz ------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(24, 24), (16, 40), (40, 16)])
@pytest.mark.parametrize("coeffs", ["quintic", "polar_express"])
def test_ns_batch_matches_float64_single_reference(shape, coeffs):
    torch.manual_seed(0)
    G = torch.randn(5, *shape, dtype=torch.float64)
    out = newton_schulz(G, coeffs, 5, dtype=torch.float64)
    steps, safety = resolve_coefficients(coeffs, 5)
    ref = torch.stack([ns_reference(g, steps, safety) for g in G])
    assert out.shape == G.shape and out.dtype == torch.float64
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-12)
    # bf16 batch (the default) stays close to the float64 reference
    out_bf16 = newton_schulz(G.float(), coeffs, 5)
    assert out_bf16.dtype == torch.bfloat16
    assert (out_bf16.double() - ref).abs().max() < 0.05


@pytest.mark.parametrize("coeffs,band", [("quintic", (0.6, 1.25)), ("polar_express", (0.8, 1.2))])
@pytest.mark.parametrize("shape", [(32, 64), (64, 32)])
def test_ns_singular_values_in_band(coeffs, band, shape):
    torch.manual_seed(1)
    G = torch.randn(6, *shape)
    sv = torch.linalg.svdvals(newton_schulz(G, coeffs, 5).double())
    assert sv.min() > band[0] and sv.max() < band[1], (sv.min(), sv.max())
    # a matrix that is already orthogonal stays near the band's centre
    Q = torch.linalg.qr(torch.randn(48, 48, dtype=torch.float64))[0]
    sq = torch.linalg.svdvals(newton_schulz(Q, coeffs, 5, dtype=torch.float64))
    assert sq.min() > band[0] and sq.max() < band[1]


@pytest.mark.skipif(not HAS_TORCH_MUON, reason="torch.optim.Muon not in this torch")
@pytest.mark.parametrize("shape", [(32, 32), (24, 48), (48, 24)])
def test_ns_bf16_matches_torch_muon_kernel(shape):
    from torch.optim._muon import _zeropower_via_newtonschulz

    torch.manual_seed(2)
    G = torch.randn(3, *shape)
    ours = newton_schulz(G)
    theirs = torch.stack([_zeropower_via_newtonschulz(g, QUINTIC, 5, 1e-7) for g in G])
    torch.testing.assert_close(ours.float(), theirs.float(), rtol=0, atol=2e-3)


def test_ns_out_buffer_and_zero_input():
    G = torch.randn(3, 8, 12)
    out = torch.empty(3, 8, 12, dtype=torch.bfloat16)
    assert newton_schulz(G, out=out) is out
    torch.testing.assert_close(out, newton_schulz(G), rtol=0, atol=0)
    z = newton_schulz(torch.zeros(2, 8, 8))
    assert torch.isfinite(z).all() and (z == 0).all()
    with pytest.raises(ValueError, match="contiguous"):
        newton_schulz(G, out=torch.empty(3, 8, 12))  # wrong dtype


def test_resolve_coefficients():
    assert resolve_coefficients("quintic", 3) == ((QUINTIC,) * 3, 1.0)
    assert resolve_coefficients("polar_express", 5)[0] == POLAR_EXPRESS
    assert len(resolve_coefficients("polar_express", 7)[0]) == 7
    assert resolve_coefficients((1.5, -0.5, 0.0), 2) == (((1.5, -0.5, 0.0),) * 2, 1.0)
    with pytest.raises(ValueError, match="one \\(a, b, c\\) per step"):
        resolve_coefficients([(1.0, 0.0, 0.0)] * 2, 3)
    with pytest.raises(ValueError, match="ns_coefficients"):
        resolve_coefficients("cubic", 5)
    with pytest.raises(ValueError, match="ns_steps"):
        resolve_coefficients("quintic", 0)


def test_adjust_lr_ratio():
    assert adjust_lr_ratio("original", (64, 16)) == 2.0
    assert adjust_lr_ratio(None, (16, 64)) == 1.0
    assert adjust_lr_ratio("match_rms_adamw", (16, 64)) == pytest.approx(0.2 * 8)
    assert adjust_lr_ratio("none", (64, 16)) == 1.0
    with pytest.raises(ValueError, match="adjust_lr_fn"):
        adjust_lr_ratio("moonlight", (2, 2))


# ----- elementwise ops ----------------------------------------------------------------------------
@needs_triton
@pytest.mark.parametrize("nesterov", [True, False])
@pytest.mark.parametrize("pdtype", [torch.float32, torch.bfloat16])
def test_triton_ops_match_torch_bitwise(nesterov, pdtype):
    _, mom_t = get_op("muon_momentum", "triton", torch.device("cpu"))
    _, app_t = get_op("muon_apply", "triton", torch.device("cpu"))
    torch.manual_seed(3)
    shapes = [(16, 16), (40, 16), (16, 40), (100, 70), (5000, 3)]  # 5000*3 spans several chunks
    grads = [torch.randn(s).to(pdtype) for s in shapes]
    b1 = [torch.randn(s) for s in shapes]
    b2 = [b.clone() for b in b1]
    u1 = [torch.empty(s, dtype=torch.bfloat16) for s in shapes]
    u2 = [u.clone() for u in u1]
    muon_momentum_torch(grads, b1, u1, momentum=0.95, nesterov=nesterov)
    mom_t(grads, b2, u2, momentum=0.95, nesterov=nesterov)
    for x, y in zip(b1 + u1, b2 + u2):
        torch.testing.assert_close(x, y, rtol=0, atol=0)
    p1 = [torch.randn(s).to(pdtype) for s in shapes]
    p2 = [p.clone() for p in p1]
    dec = torch.tensor([1 - 0.01 * 0.1 * k for k in range(len(shapes))], dtype=torch.float64)
    st = torch.tensor([0.01 * (k + 1) for k in range(len(shapes))], dtype=torch.float64)
    muon_apply_torch(p1, u1, dec, st)
    app_t(p2, u2, dec.float(), st.float())
    for x, y in zip(p1, p2):
        torch.testing.assert_close(x, y, rtol=0, atol=0)


# ----- LLRMuon vs torch.optim.Muon + AdamW ----------------------------------------------------------
def _ns_float64_like_torch(grad, ns_coefficients, ns_steps, eps):
    """torch.optim.Muon's Newton-Schulz (same normalisation, layout, coefficients) in float64."""
    a, b, c = ns_coefficients
    return ns_reference(grad, [(a, b, c)] * ns_steps, 1.0, eps)


@pytest.mark.skipif(not HAS_TORCH_MUON, reason="torch.optim.Muon not in this torch")
@pytest.mark.parametrize("muon_backend", MUON_BACKENDS)
@pytest.mark.parametrize("adjust,nesterov", [("original", True), ("match_rms_adamw", False)])
def test_s1_matches_torch_muon_and_adamw_50_steps(muon_backend, adjust, nesterov, monkeypatch):
    """Newton-Schulz in float64 on both sides (torch's bf16 NS flips rare bf16 roundings between mm and bmm,
    which 50 steps amplify; the bf16 path is compared step by step below). Everything else is torch's own code.
    The Triton path runs 12 steps: the interpreter is slow, and its ops are checked bitwise above."""
    import torch.optim._muon as torch_muon

    monkeypatch.setattr(torch_muon, "_zeropower_via_newtonschulz", _ns_float64_like_torch)
    steps = 50 if muon_backend == "torch" else 12
    torch.manual_seed(0)
    m1 = TinyLM()
    m2 = copy.deepcopy(m1)
    opt = LLRMuon(m1, lr=0.02, adamw_lr=2e-3, weight_decay=0.1, nesterov=nesterov, adjust_lr_fn=adjust, s=1.0,
                  ns_dtype=torch.float64, backend="torch", muon_backend=muon_backend, interval=10, min_eigs=4)
    ref = [
        torch.optim.Muon(m2.muon_params(), lr=0.02, weight_decay=0.1, nesterov=nesterov, adjust_lr_fn=adjust),
        torch.optim.AdamW(m2.other_params(), lr=2e-3, weight_decay=0.1, foreach=False),
    ]
    train(m1, [opt], steps)
    train(m2, ref, steps)
    assert opt.llr.num_updates == (steps + 9) // 10  # alphas were measured; s = 1 keeps every multiplier at 1
    assert_same(m1, m2, atol=1e-6)


@pytest.mark.skipif(not HAS_TORCH_MUON, reason="torch.optim.Muon not in this torch")
@pytest.mark.parametrize("muon_backend", MUON_BACKENDS)
def test_bf16_step_matches_torch_muon_from_same_state(muon_backend):
    """Default bf16 Newton-Schulz: each step, started from identical params and momentum, agrees with
    torch.optim.Muon to a bf16 rounding of the update (almost always bit for bit)."""
    torch.manual_seed(0)
    m1 = TinyLM()
    m2 = copy.deepcopy(m1)
    lr = 0.02
    opt = LLRMuon(m1, lr=lr, adamw_lr=2e-3, s=1.0, backend="torch", muon_backend=muon_backend)
    ref = torch.optim.Muon(m2.muon_params(), lr=lr, weight_decay=0.1)
    for t in range(4):
        train(m1, [opt], 1, seed=t)
        train(m2, [ref], 1, seed=t)
        for a, b in zip(m1.muon_params(), m2.muon_params()):
            torch.testing.assert_close(a, b, rtol=0, atol=2 * lr * 2.0 ** -8)
            torch.testing.assert_close(opt.state[a]["momentum_buffer"], ref.state[b]["momentum_buffer"], rtol=0, atol=0)
        with torch.no_grad():  # resynchronise, so every step is compared from the same state
            for a, b in zip(m1.parameters(), m2.parameters()):
                b.copy_(a)


@pytest.mark.parametrize("coeffs,adjust,nesterov", [("quintic", "original", True), ("polar_express", "match_rms_adamw", False)])
def test_s1_matches_single_tensor_reference_50_steps(coeffs, adjust, nesterov):
    """float64 end to end (the Triton kernels take fp32/bf16/fp16 only, and are checked bitwise above)."""
    torch.manual_seed(0)
    m1 = TinyLM().double()
    m2 = copy.deepcopy(m1)
    opt = LLRMuon(m1, lr=0.02, adamw_lr=2e-3, weight_decay=0.1, nesterov=nesterov, ns_coefficients=coeffs,
                  adjust_lr_fn=adjust, s=1.0, ns_dtype=torch.float64, backend="torch")
    ref_muon = ReferenceMuon(m2.muon_params(), [0.02] * 4, 0.1, nesterov=nesterov, coeffs=coeffs, adjust=adjust)
    ref_adamw = torch.optim.AdamW(m2.other_params(), lr=2e-3, weight_decay=0.1, foreach=False)
    train(m1, [opt], 50)
    train(m2, [ref_muon, ref_adamw], 50)
    assert_same(m1, m2, atol=1e-9)


def test_llr_multipliers_scale_each_matrix_lr():
    """With s = 2 every Muon matrix moves by its own group lr x multiplier (x shape factor)."""
    torch.manual_seed(0)
    m1 = TinyLM().double()
    m2 = copy.deepcopy(m1)
    # adamw_lr = 0 freezes the non-Muon params, so the reference (Muon only) sees the same model
    opt = LLRMuon(m1, lr=0.02, adamw_lr=0.0, weight_decay=0.1, s=2.0, ns_dtype=torch.float64, backend="torch")
    names = [l.name for l in opt.layers]
    alphas = torch.linspace(2.0, 6.0, len(names), dtype=torch.float64)
    opt.llr.update(0, alphas, "weight")
    opt.llr.is_update_step = lambda t: False  # keep these multipliers (step 0 would re-measure)
    mult = opt.multipliers()
    lrs = [0.02 * float(mult[names.index(n)]) for n in ("q_proj.weight", "k_proj.weight", "up_proj.weight", "down_proj.weight")]
    assert len(set(lrs)) == 4 and max(lrs) <= 0.04 + 1e-12 and min(lrs) >= 0.02 - 1e-12
    ref = ReferenceMuon(m2.muon_params(), lrs, 0.1)
    train(m1, [opt], 3)
    train(m2, [ref], 3)
    for a, b in zip(m1.muon_params(), m2.muon_params()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-9)
    stats = {s["name"]: s for s in opt.layer_stats()}
    assert stats["up_proj.weight"]["optimizer"] == "muon"
    assert stats["up_proj.weight"]["update_lr"] == pytest.approx(stats["up_proj.weight"]["lr"] * 2 ** 0.5)
    assert stats["embed_tokens.weight"]["optimizer"] == "adamw"
    assert stats["embed_tokens.weight"]["multiplier"] == 2.0  # pinned at s


# ----- checkpointing ----------------------------------------------------------------------------
@pytest.mark.parametrize("muon_backend", MUON_BACKENDS)
def test_state_dict_round_trip_continues_bit_for_bit(muon_backend):
    torch.manual_seed(0)
    kw = dict(lr=0.02, adamw_lr=1e-3, s=2.0, interval=3, total_steps=20, grad_phase=0.2, min_eigs=4,
              backend="torch", muon_backend=muon_backend)
    m1 = TinyLM()
    o1 = LLRMuon(m1, **kw)
    sched1 = torch.optim.lr_scheduler.LambdaLR(o1, lambda t: 1.0 / (1 + t))
    train(m1, [o1], 7, seed=5)
    for _ in range(7):
        sched1.step()
    buf = io.BytesIO()
    torch.save({"model": m1.state_dict(), "opt": o1.state_dict(), "sched": sched1.state_dict()}, buf)
    train(m1, [o1], 6, seed=6)

    buf.seek(0)
    ck = torch.load(buf, weights_only=False)
    m2 = TinyLM()
    m2.load_state_dict(ck["model"])
    o2 = LLRMuon(m2, **kw)
    sched2 = torch.optim.lr_scheduler.LambdaLR(o2, lambda t: 1.0 / (1 + t))
    o2.load_state_dict(ck["opt"])
    sched2.load_state_dict(ck["sched"])
    assert o2.llr.num_updates == o1.llr.num_updates - 2  # updates at 0, 3, 6 before; 9, 12 after
    train(m2, [o2], 6, seed=6)
    assert_same(m1, m2)
    assert o1.llr.num_updates == o2.llr.num_updates
    torch.testing.assert_close(o1.multipliers(), o2.multipliers(), rtol=0, atol=0)
    p = m2.q_proj.weight
    torch.testing.assert_close(o2.state[p]["momentum_buffer"], o1.state[m1.q_proj.weight]["momentum_buffer"], rtol=0, atol=0)


# ----- groups, schedulers, options ------------------------------------------------------------------
def test_groups_from_model_and_user_groups():
    m = TinyLM()
    opt = LLRMuon(m, lr=0.01, adamw_lr=1e-3, weight_decay=0.1, adamw_weight_decay=0.0)
    assert [g["use_muon"] for g in opt.param_groups] == [True, False]
    assert {id(p) for p in opt.param_groups[0]["params"]} == {id(p) for p in m.muon_params()}
    assert (opt.param_groups[0]["lr"], opt.param_groups[1]["lr"]) == (0.01, 1e-3)
    assert (opt.param_groups[0]["weight_decay"], opt.param_groups[1]["weight_decay"]) == (0.1, 0.0)

    # a group without use_muon is split by layer kind; adamw_lr applies to its AdamW part
    groups = [{"params": list(m.parameters()), "lr": 0.03, "adamw_lr": 3e-4}]
    opt = LLRMuon(groups, model=m)
    assert [(g["use_muon"], g["lr"]) for g in opt.param_groups] == [(True, 0.03), (False, 3e-4)]
    assert "adamw_lr" not in opt.param_groups[1]

    # explicit flags; AdamW groups without lr get adamw_lr
    groups = [{"params": m.muon_params(), "use_muon": True}, {"params": m.other_params(), "use_muon": False}]
    opt = LLRMuon(groups, lr=0.05, adamw_lr=5e-4, model=m)
    assert [g["lr"] for g in opt.param_groups] == [0.05, 5e-4]
    with pytest.raises(ValueError, match="use_muon=False"):
        LLRMuon([{"params": [m.norm.weight], "use_muon": True}], model=m)
    with pytest.raises(ValueError, match="use_muon must be"):
        LLRMuon([{"params": [m.norm.weight], "use_muon": "yes"}], model=m)


def test_scheduler_scales_both_base_lrs():
    m = TinyLM()
    opt = LLRMuon(m, lr=0.02, adamw_lr=1e-3, s=1.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 0.5)
    assert [g["lr"] for g in opt.param_groups] == [0.01, 5e-4]
    stats = {s["name"]: s for s in opt.layer_stats()}
    assert stats["q_proj.weight"]["lr"] == pytest.approx(0.01)
    assert stats["lm_head.weight"]["lr"] == pytest.approx(5e-4)
    sched.step()


def test_grad_alpha_source_and_validation():
    m = TinyLM()
    opt = LLRMuon(m, grad_alpha_source="momentum", s=2.0)
    layer = opt.layers[opt.layer_of(m.q_proj.weight)]
    m(torch.randint(0, 40, (2, 3))).sum().backward()
    assert opt._spectral_matrix(layer, "grad") is m.q_proj.weight.grad  # no momentum yet
    opt.step()
    assert opt._spectral_matrix(layer, "grad") is opt.state[m.q_proj.weight]["momentum_buffer"]
    with pytest.raises(ValueError, match="grad_alpha_source"):
        LLRMuon(m, grad_alpha_source="update")
    with pytest.raises(ValueError, match="momentum"):
        LLRMuon(m, momentum=1.0)
    with pytest.raises(ValueError, match="adjust_lr_fn"):
        LLRMuon(m, adjust_lr_fn="sqrt")


@pytest.mark.skipif(not HAS_TORCH_MUON, reason="torch.optim.Muon not in this torch")
def test_max_grad_norm_clips_all_gradients_together():
    torch.manual_seed(0)
    m1 = TinyLM()
    m2 = copy.deepcopy(m1)
    opt = LLRMuon(m1, lr=0.02, adamw_lr=1e-3, s=1.0, max_grad_norm=0.05, backend="torch")
    ref = [torch.optim.Muon(m2.muon_params(), lr=0.02, weight_decay=0.1),
           torch.optim.AdamW(m2.other_params(), lr=1e-3, weight_decay=0.1, foreach=False)]

    class Clip:
        def zero_grad(self):
            pass

        def step(self):
            torch.nn.utils.clip_grad_norm_(m2.parameters(), 0.05, foreach=False)

    train(m1, [opt], 5)
    train(m2, [Clip()] + ref, 5)
    assert_same(m1, m2, atol=1e-6)
    assert opt.last_grad_norm is not None and float(opt.last_grad_norm) > 0.05
