"""LLRMuon, batched Newton-Schulz and the Muon elementwise kernels, against independent float64 references.

References (tests/reference.py): ``ns_f64`` (single-matrix float64 Newton-Schulz), ``MuonF64`` (single-tensor
Muon with one LR per matrix), ``LLRScheduleF64`` (numpy Eq. 2 / Eq. 3). The Triton kernels run through the
interpreter on CPU (TRITON_INTERPRET=1, set by conftest.py without CUDA); shapes are small on purpose.
"""
from __future__ import annotations

import copy
import io

import pytest
import torch
from torch import nn

from conftest import CPU, DEV, backend_param, device_for, needs, torch_muon_missing, triton_missing
from llr_kernels.ops.dispatch import get_op, triton_interpreted
from llr_kernels.ops.muon.naive import muon_apply_torch, muon_momentum_torch
from llr_kernels.ops.muon.newton_schulz import POLAR_EXPRESS, QUINTIC, newton_schulz, resolve_coefficients
from llr_kernels.optim.muon import LLRMuon, adjust_lr_ratio
from reference import LLRScheduleF64, MuonF64, muon_lr_ratio, ns_f64, torch_muon_ns_f64
from tiny_models import SpectralNet

pytestmark = pytest.mark.usefixtures("nan_fill")

needs_triton = needs(triton_missing(), "triton")
needs_torch_muon = needs(torch_muon_missing(), "torch.optim.Muon")
MUON_BACKENDS = [backend_param("torch", CPU), backend_param("triton", DEV)]  # each runs on device_for(backend)


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
    dev = next(model.parameters()).device
    for _ in range(steps):
        x = torch.randint(0, vocab, (4, 6), generator=g).to(dev)
        for o in opts:
            o.zero_grad()
        model(x).logsumexp(-1).mean().backward()
        for o in opts:
            o.step()


def assert_same(m1, m2, atol=0.0):
    for (n, a), b in zip(m1.named_parameters(), m2.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=atol, msg=lambda s, n=n: f"{n}: {s}")


# ----- Newton-Schulz ------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(24, 24), (16, 40), (40, 16)], ids=["square", "wide", "tall"])
@pytest.mark.parametrize("coeffs", ["quintic", "polar_express"])
def test_ns_batch_matches_float64_single_reference(shape, coeffs):
    torch.manual_seed(0)
    G = torch.randn(5, *shape, dtype=torch.float64)
    out = newton_schulz(G, coeffs, 5, dtype=torch.float64)
    steps, safety = resolve_coefficients(coeffs, 5)
    ref = torch.stack([ns_f64(g, steps, safety) for g in G])
    assert out.shape == G.shape and out.dtype == torch.float64
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-12)
    # bf16 batch (the default) stays close to the float64 reference
    out_bf16 = newton_schulz(G.float(), coeffs, 5)
    assert out_bf16.dtype == torch.bfloat16
    assert (out_bf16.double() - ref).abs().max() < 0.05


@pytest.mark.parametrize("coeffs,band", [("quintic", (0.6, 1.25)), ("polar_express", (0.8, 1.2))], ids=["quintic", "polar_express"])
@pytest.mark.parametrize("shape", [(32, 64), (64, 32)], ids=["wide", "tall"])
def test_ns_singular_values_in_band(coeffs, band, shape):
    torch.manual_seed(1)
    G = torch.randn(6, *shape)
    sv = torch.linalg.svdvals(newton_schulz(G, coeffs, 5).double())
    assert sv.min() > band[0] and sv.max() < band[1], (sv.min(), sv.max())
    # a matrix that is already orthogonal stays near the band's centre
    Q = torch.linalg.qr(torch.randn(48, 48, dtype=torch.float64))[0]
    sq = torch.linalg.svdvals(newton_schulz(Q, coeffs, 5, dtype=torch.float64))
    assert sq.min() > band[0] and sq.max() < band[1]


@needs_torch_muon
@pytest.mark.parametrize("shape", [(32, 32), (24, 48), (48, 24)], ids=["square", "wide", "tall"])
def test_ns_bf16_matches_torch_muon_kernel(shape):
    from torch.optim._muon import _zeropower_via_newtonschulz

    torch.manual_seed(2)
    G = torch.randn(3, *shape)
    ours = newton_schulz(G)
    theirs = torch.stack([_zeropower_via_newtonschulz(g, QUINTIC, 5, 1e-7) for g in G])
    torch.testing.assert_close(ours.float(), theirs.float(), rtol=0, atol=2e-3)


def test_ns_out_buffer_and_zero_input():
    torch.manual_seed(3)
    G = torch.randn(3, 8, 12)
    out = torch.empty(3, 8, 12, dtype=torch.bfloat16)  # NaN under nan_fill: every entry must be written
    assert newton_schulz(G, out=out) is out
    torch.testing.assert_close(out, newton_schulz(G), rtol=0, atol=0)
    assert torch.isfinite(out).all()
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


@pytest.mark.parametrize("fn", ["original", None, "match_rms_adamw", "none"])
@pytest.mark.parametrize("shape", [(64, 16), (16, 64), (24, 24)], ids=["tall", "wide", "square"])
def test_adjust_lr_ratio(fn, shape):
    assert adjust_lr_ratio(fn, shape) == pytest.approx(muon_lr_ratio(fn, shape), rel=1e-15)
    with pytest.raises(ValueError, match="adjust_lr_fn"):
        adjust_lr_ratio("moonlight", (2, 2))


# ----- elementwise ops ----------------------------------------------------------------------------
SHAPES = [(16, 16), (40, 16), (16, 40), (100, 70), (5000, 3)]  # 5000 x 3 spans several Triton chunks
GRAD_DTYPES = [torch.float32, torch.bfloat16, torch.float16]
BUF_DTYPES = [torch.float32, torch.bfloat16]
UPD_DTYPES = [torch.bfloat16, torch.float32, torch.float16]
_EPS = {torch.float32: 2.0**-24, torch.bfloat16: 2.0**-8, torch.float16: 2.0**-11, torch.float64: 2.0**-53}


def _close_to(got: torch.Tensor, want: torch.Tensor, what: str, extra: torch.Tensor | float = 0.0) -> None:
    """``got`` equals the float64 ``want`` up to one rounding into got's dtype (plus float32 math, plus ``extra``)."""
    tol = (2 * _EPS[got.dtype] + 4 * _EPS[torch.float32]) * want.abs() + extra + 1e-30
    err = (got.double() - want).abs()
    assert bool((err <= tol).all()), f"{what} ({got.dtype}): max err {float(err.max()):.3e}"


@pytest.mark.parametrize("backend", MUON_BACKENDS)
@pytest.mark.parametrize("nesterov", [True, False], ids=["nesterov", "plain"])
def test_muon_momentum_mixed_dtypes_match_float64(backend, nesterov):
    """One call over every (grad, buffer, update) dtype mix: each matrix against the float64 formula."""
    dev = device_for(backend)
    _, op = get_op("muon_momentum", backend, dev)
    gen = torch.Generator().manual_seed(11)
    mu = 0.9
    grads, bufs, outs = [], [], []
    for i, shape in enumerate(SHAPES * 2):
        grads.append(torch.randn(shape, generator=gen).to(dev, GRAD_DTYPES[i % 3]))
        bufs.append((torch.randn(shape, generator=gen) * 0.5).to(dev, BUF_DTYPES[(i // 3) % 2]))
        outs.append(torch.full(shape, float("nan"), dtype=UPD_DTYPES[(i + 1) % 3], device=dev))
    b0 = [b.double() for b in bufs]
    op(grads, bufs, outs, momentum=mu, nesterov=nesterov)
    for i, (g, b, out) in enumerate(zip(grads, bufs, outs)):
        g64 = g.double()
        fp32_math = 4 * _EPS[torch.float32] * (b0[i].abs() + g64.abs())  # lerp in float32 on float32-exact inputs
        want_b = b0[i] + (1 - mu) * (g64 - b0[i])
        _close_to(b, want_b, f"buffer {i}", extra=fp32_math)
        bb = b.double()  # the update uses the stored (rounded) buffer
        want_u = g64 + mu * (bb - g64) if nesterov else bb
        _close_to(out, want_u, f"update {i}", extra=4 * _EPS[torch.float32] * (bb.abs() + g64.abs()))


@pytest.mark.parametrize("backend", MUON_BACKENDS)
def test_muon_apply_mixed_dtypes_reads_each_matrix_lr(backend):
    """fp32, bf16 and fp16 params (and update dtypes) in one call, each with its own decay and step size."""
    dev = device_for(backend)
    _, op = get_op("muon_apply", backend, dev)
    gen = torch.Generator().manual_seed(12)
    params, upds = [], []
    for i, shape in enumerate(SHAPES * 2):
        params.append(torch.randn(shape, generator=gen).to(dev, [torch.float32, torch.bfloat16, torch.float16][i % 3]))
        upds.append((torch.randn(shape, generator=gen) * 0.3).to(dev, UPD_DTYPES[(i // 2) % 3]))
    n = len(params)
    decays = (1 - torch.rand(n, generator=gen, dtype=torch.float64) * 0.2).to(dev)
    steps = (torch.rand(n, generator=gen, dtype=torch.float64) * 0.5 + 0.1).to(dev)  # distinct, far apart: a swap shows
    p0 = [p.double() for p in params]
    op(params, upds, decays if backend == "torch" else decays.float(), steps if backend == "torch" else steps.float())
    for i, p in enumerate(params):
        want = p0[i] * float(decays[i]) - float(steps[i]) * upds[i].double()
        _close_to(p, want, f"param {i}", extra=(p0[i].abs() + upds[i].double().abs()) * 2 * _EPS[torch.float32])


@needs_triton
@pytest.mark.parametrize("nesterov", [True, False], ids=["nesterov", "plain"])
@pytest.mark.parametrize("pdtype,sdtype", [(torch.float32, torch.float32), (torch.bfloat16, torch.float32),
                                           (torch.float32, torch.bfloat16)], ids=["fp32", "bf16", "bf16-state"])
def test_triton_ops_match_torch_to_one_rounding(nesterov, pdtype, sdtype):
    """The Triton momentum and apply ops against the torch ops on the same inputs (both on DEV): equal up to one
    rounding of the output dtype. (Under the interpreter they agree bit for bit; compiled, the kernel may fuse a
    multiply-add that torch rounds twice, which can move a result by one ulp.)"""
    ulps = 0 if triton_interpreted() else 2
    _, mom_t = get_op("muon_momentum", "triton", DEV)
    _, app_t = get_op("muon_apply", "triton", DEV)
    torch.manual_seed(3)
    grads = [torch.randn(s).to(DEV, pdtype) for s in SHAPES]
    b1 = [torch.randn(s).to(DEV, sdtype) for s in SHAPES]
    b2 = [b.clone() for b in b1]
    u1 = [torch.empty(s, dtype=torch.bfloat16, device=DEV) for s in SHAPES]
    u2 = [u.clone() for u in u1]
    muon_momentum_torch(grads, b1, u1, momentum=0.95, nesterov=nesterov)
    mom_t(grads, b2, u2, momentum=0.95, nesterov=nesterov)
    for x, y in zip(b1 + u1, b2 + u2):
        torch.testing.assert_close(x, y, rtol=ulps * _EPS[x.dtype], atol=0)
    p1 = [torch.randn(s).to(DEV, pdtype) for s in SHAPES]
    p2 = [p.clone() for p in p1]
    dec = torch.tensor([1 - 0.01 * 0.1 * k for k in range(len(SHAPES))], dtype=torch.float64, device=DEV)
    st = torch.tensor([0.01 * (k + 1) for k in range(len(SHAPES))], dtype=torch.float64, device=DEV)
    muon_apply_torch(p1, u1, dec, st)
    app_t(p2, u2, dec.float(), st.float())
    for x, y in zip(p1, p2):
        torch.testing.assert_close(x, y, rtol=ulps * _EPS[x.dtype], atol=0)


# ----- LLRMuon vs torch.optim.Muon and the float64 reference ---------------------------------------
@needs_torch_muon
@pytest.mark.parametrize("muon_backend", MUON_BACKENDS)
@pytest.mark.parametrize("adjust,nesterov", [("original", True), ("match_rms_adamw", False)], ids=["original-nesterov", "rms-plain"])
def test_s1_matches_torch_muon_and_adamw_many_steps(muon_backend, adjust, nesterov, monkeypatch):
    """Newton-Schulz in float64 on both sides (torch's bf16 NS flips rare bf16 roundings between mm and bmm,
    which many steps amplify; the bf16 path is compared step by step below). Everything else is torch's own
    code. The Triton path runs 12 steps: the interpreter is slow; its ops are checked above."""
    import torch.optim._muon as torch_muon

    monkeypatch.setattr(torch_muon, "_zeropower_via_newtonschulz", torch_muon_ns_f64)
    steps = 50 if muon_backend == "torch" else 12
    torch.manual_seed(0)
    m1 = TinyLM().to(device_for(muon_backend))
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


@needs_torch_muon
@pytest.mark.parametrize("muon_backend", MUON_BACKENDS)
def test_bf16_step_matches_torch_muon_from_same_state(muon_backend):
    """Default bf16 Newton-Schulz: each step, started from identical params and momentum, agrees with
    torch.optim.Muon to a bf16 rounding of the update (almost always bit for bit)."""
    torch.manual_seed(0)
    m1 = TinyLM().to(device_for(muon_backend))
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


@pytest.mark.parametrize("coeffs,adjust,nesterov", [("quintic", "original", True), ("polar_express", "match_rms_adamw", False)],
                         ids=["quintic", "polar_express"])
def test_s1_matches_single_tensor_reference_50_steps(coeffs, adjust, nesterov):
    """float64 end to end (the Triton kernels take fp32/bf16/fp16 only, and are checked bitwise above)."""
    torch.manual_seed(0)
    m1 = TinyLM().double()
    m2 = copy.deepcopy(m1)
    opt = LLRMuon(m1, lr=0.02, adamw_lr=2e-3, weight_decay=0.1, nesterov=nesterov, ns_coefficients=coeffs,
                  adjust_lr_fn=adjust, s=1.0, ns_dtype=torch.float64, backend="torch")
    steps, safety = resolve_coefficients(coeffs, 5)
    ref_muon = MuonF64(m2.muon_params(), 0.02, 0.1, nesterov=nesterov, coefficients=steps, safety=safety, adjust_lr_fn=adjust)
    ref_adamw = torch.optim.AdamW(m2.other_params(), lr=2e-3, weight_decay=0.1, foreach=False)
    train(m1, [opt], 50)
    train(m2, [ref_muon, ref_adamw], 50)
    assert_same(m1, m2, atol=1e-9)


def _synthetic_grads(model: nn.Module, gen: torch.Generator) -> None:
    for p in model.parameters():
        p.grad = (torch.randn(p.shape, generator=gen, dtype=torch.float64) * 0.1).to(p.device, p.dtype)


@pytest.mark.parametrize("maximize", [False, True], ids=["minimize", "maximize"])
def test_each_matrix_gets_its_float64_llr_lr(maximize, seed):
    """s = 2 with finite, distinct alphas: every Muon matrix and every AdamW tensor moves by base LR x the
    multiplier numpy's eigenvalues, Eq. 2 and Eq. 3 give it (float64 model, float64 Newton-Schulz)."""
    s, lr, adamw_lr, wd = 2.0, 0.02, 1e-3, 0.1
    model = SpectralNet().double()
    ref_model = copy.deepcopy(model)
    opt = LLRMuon(model, lr=lr, adamw_lr=adamw_lr, weight_decay=wd, s=s, interval=2, min_eigs=8, maximize=maximize,
                  ns_dtype=torch.float64, backend="torch")
    names = [n for n, _ in model.named_parameters()]
    ref_llr = LLRScheduleF64(names, [p.dim() == 2 for p in model.parameters()], s=s, pinned=["embed_tokens.weight"],
                             interval=2, min_eigs=8)
    muon_names = [n for n, p in ref_model.named_parameters() if any(p is q for q in ref_model.matrices())]
    ref_muon = MuonF64(ref_model.matrices(), [lr] * len(muon_names), wd, maximize=maximize)
    ref_adamw = torch.optim.AdamW([{"params": [p]} for p in ref_model.others()], lr=adamw_lr, weight_decay=wd,
                                  maximize=maximize, foreach=False)
    adamw_names = [n for n, p in ref_model.named_parameters() if any(p is q for q in ref_model.others())]
    gen = torch.Generator().manual_seed(seed)
    for t in range(3):
        _synthetic_grads(model, gen)
        for p, q in zip(model.parameters(), ref_model.parameters()):
            q.grad = p.grad.clone()
        ref_llr.before_step(t, dict(ref_model.named_parameters()), {n: p.grad for n, p in ref_model.named_parameters()})
        mult = dict(zip(names, ref_llr.multipliers(t)))
        ref_muon.lrs = [lr * mult[n] for n in muon_names]
        for g, n in zip(ref_adamw.param_groups, adamw_names):
            g["lr"] = adamw_lr * mult[n]
        opt.step()
        ref_muon.step()
        ref_adamw.step()
        assert_same(model, ref_model, atol=1e-12)
    stats = {r["name"]: r for r in opt.layer_stats()}
    alive = {n: mult[n] for n in muon_names}
    assert len(set(alive.values())) == len(alive)  # distinct LRs: a matrix reading another's LR would show
    assert stats["q_proj.weight"]["multiplier"] == pytest.approx(1.0)  # lowest alpha
    assert stats["lm_head.weight"]["multiplier"] == pytest.approx(s)  # highest alpha (AdamW part)
    assert stats["embed_tokens.weight"]["multiplier"] == s  # pinned
    up = stats["up_proj.weight"]
    assert up["optimizer"] == "muon" and up["update_lr"] == pytest.approx(up["lr"] * 2 ** 0.5)  # 96 x 48: sqrt(2)


@pytest.mark.parametrize("muon_backend", MUON_BACKENDS)
def test_mixed_dtype_matrices_each_read_their_own_lr(muon_backend):
    """fp32 and bf16 Muon matrices stepped together (muon_apply sees both dtypes in one call), each with its
    own LLR multiplier, against the float64 single-tensor reference (one bf16 rounding per step)."""
    s, lr, wd = 3.0, 0.05, 0.1
    model = SpectralNet().to(device_for(muon_backend))
    model.q_proj.to(torch.bfloat16)
    model.narrow_in.to(torch.bfloat16)
    ref_model = copy.deepcopy(model)
    opt = LLRMuon(model, lr=lr, adamw_lr=0.0, weight_decay=wd, s=s, interval=100, min_eigs=8, ns_dtype=torch.float32,
                  backend="torch", muon_backend=muon_backend)
    names = [n for n, _ in model.named_parameters()]
    ref_llr = LLRScheduleF64(names, [p.dim() == 2 for p in model.parameters()], s=s, pinned=["embed_tokens.weight"],
                             interval=100, min_eigs=8)
    muon_names = ["q_proj.weight", "up_proj.weight", "down_proj.weight", "narrow_in.weight", "narrow_out.weight"]
    ref_muon = MuonF64(ref_model.matrices(), [lr] * 5, wd)
    gen = torch.Generator().manual_seed(5)
    for t in range(2):
        _synthetic_grads(model, gen)
        for p, q in zip(model.parameters(), ref_model.parameters()):
            q.grad = p.grad.clone()
        ref_llr.before_step(t, dict(ref_model.named_parameters()), {})
        mult = dict(zip(names, ref_llr.multipliers(t)))
        ref_muon.lrs = [lr * mult[n] for n in muon_names]
        before = [p.detach().clone() for p in model.matrices()]
        opt.step()
        ref_muon.step()
        for n, p, q, b in zip(muon_names, model.matrices(), ref_model.matrices(), before):
            moved = float((q.detach().double() - b.double()).abs().max())
            # one rounding into the param dtype, plus fp32 Newton-Schulz (~1e-3 of the update)
            tol = 2 * _EPS[p.dtype] * q.double().abs() + 1e-3 * moved
            assert bool(((p.double() - q.double()).abs() <= tol).all()), f"step {t}, {n} ({p.dtype})"
            with torch.no_grad():
                q.copy_(p)  # compare every step from the same state
    assert {p.dtype for p in model.matrices()} == {torch.float32, torch.bfloat16}
    assert len({round(m, 6) for n, m in mult.items() if n in muon_names}) == 5


@pytest.mark.parametrize("muon_backend", MUON_BACKENDS)
def test_state_dtype_bf16_stores_the_momentum_in_bf16(muon_backend):
    """state_dtype=bf16: the momentum lives in bf16 (one rounding per step, fp32 math) and Nesterov reads the
    stored value; against the float64 reference that rounds its buffer the same way, step by step."""
    torch.manual_seed(6)
    model = TinyLM().to(device_for(muon_backend))
    ref_model = copy.deepcopy(model)
    opt = LLRMuon(model, lr=0.02, adamw_lr=0.0, s=1.0, state_dtype=torch.bfloat16, ns_dtype=torch.float32,
                  backend="torch", muon_backend=muon_backend)
    ref = MuonF64(ref_model.muon_params(), 0.02, 0.1, state_round=torch.bfloat16)
    gen = torch.Generator().manual_seed(7)
    for t in range(3):
        _synthetic_grads(model, gen)
        for p, q in zip(model.parameters(), ref_model.parameters()):
            q.grad = p.grad.clone()
        opt.step()
        ref.step()
        for p, q, rb in zip(model.muon_params(), ref_model.muon_params(), ref.bufs):
            buf = opt.state[p]["momentum_buffer"]
            assert buf.dtype == torch.bfloat16
            assert bool(((buf.double() - rb).abs() <= 2.0**-8 * rb.abs()).all()), f"step {t}: momentum"
            torch.testing.assert_close(p, q, rtol=4 * 2.0**-24, atol=1e-3 * 0.02, msg=lambda m: f"step {t}: {m}")
            with torch.no_grad():
                q.copy_(p)
                rb.copy_(buf.double())
    assert opt.state[model.lm_head.weight]["exp_avg"].dtype == torch.bfloat16  # the AdamW part's state too


# ----- checkpointing ----------------------------------------------------------------------------
@pytest.mark.parametrize("muon_backend", MUON_BACKENDS)
def test_state_dict_round_trip_continues_bit_for_bit(muon_backend):
    torch.manual_seed(0)
    kw = dict(lr=0.02, adamw_lr=1e-3, s=2.0, interval=3, total_steps=20, grad_phase=0.2, min_eigs=4,
              backend="torch", muon_backend=muon_backend)
    m1 = TinyLM().to(device_for(muon_backend))
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
    m2 = TinyLM().to(device_for(muon_backend))
    m2.load_state_dict(ck["model"])
    o2 = LLRMuon(m2, **kw)
    sched2 = torch.optim.lr_scheduler.LambdaLR(o2, lambda t: 1.0 / (1 + t))
    o2.load_state_dict(ck["opt"])
    sched2.load_state_dict(ck["sched"])
    assert o2.llr.num_updates == o1.llr.num_updates - 2  # updates at 0, 3, 6 before; 9, 12 after
    assert o2.hill_status == ck["opt"]["llr"]["hill_status"] and "ok" in o2.hill_status
    train(m2, [o2], 6, seed=6)
    assert_same(m1, m2)
    assert o1.llr.num_updates == o2.llr.num_updates
    torch.testing.assert_close(o1.multipliers(), o2.multipliers(), rtol=0, atol=0)
    p = m2.q_proj.weight
    torch.testing.assert_close(o2.state[p]["momentum_buffer"], o1.state[m1.q_proj.weight]["momentum_buffer"], rtol=0, atol=0)


@pytest.mark.parametrize("muon_backend", MUON_BACKENDS)
def test_loading_into_a_used_optimizer_rewinds_it(muon_backend):
    """Load an earlier checkpoint into an LLRMuon that has stepped since: momentum buffers (views of the batch
    buffers) and step counters come from the checkpoint, and it continues as an uninterrupted run."""
    torch.manual_seed(0)
    kw = dict(lr=0.02, adamw_lr=1e-3, s=2.0, interval=2, min_eigs=4, backend="torch", muon_backend=muon_backend)
    m1 = TinyLM().to(device_for(muon_backend))
    m2 = copy.deepcopy(m1)
    o1 = LLRMuon(m1, **kw)
    train(m1, [o1], 2, seed=8)
    ck = copy.deepcopy({"model": m1.state_dict(), "opt": o1.state_dict()})
    train(m1, [o1], 2, seed=9)
    m1.load_state_dict(ck["model"])
    o1.load_state_dict(ck["opt"])
    train(m1, [o1], 2, seed=10)
    o2 = LLRMuon(m2, **kw)
    train(m2, [o2], 2, seed=8)
    train(m2, [o2], 2, seed=10)
    assert_same(m1, m2)


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
    del sched


def test_grad_alpha_source_momentum():
    torch.manual_seed(4)
    m = TinyLM()
    opt = LLRMuon(m, grad_alpha_source="momentum", s=2.0)
    layer = opt.layers[opt.layer_of(m.q_proj.weight)]
    m(torch.randint(0, 40, (2, 3))).sum().backward()
    assert opt._spectral_matrix(layer, "grad") is m.q_proj.weight.grad  # no momentum yet
    opt.step()
    assert opt._spectral_matrix(layer, "grad") is opt.state[m.q_proj.weight]["momentum_buffer"]
