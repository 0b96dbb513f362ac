"""Parameters that are not contiguous step on every backend as torch.optim steps them.

The fused kernels stream memory linearly: a parameter whose grad and state share its dense layout (a
channels_last conv weight, a transposed view) goes through them as flat views of the same memory; any other (a
strided slice of a larger tensor) through the torch reference, with the same clip factor. References:
torch.optim.AdamW(foreach=False) for LLRAdamW with s = 1; torch.optim.Muon + AdamW for LLRMuon with s = 1
(Newton-Schulz in float64 on both sides, as in test_muon.py). Layouts must survive the steps (no parameter or
state is replaced by a contiguous copy).
"""
from __future__ import annotations

import pytest
import torch
from torch import nn

from conftest import CPU, backend_missing, device_for, needs, requires, torch_muon_missing
from llr_kernels import LLRAdamW, LLRMuon
from llr_kernels.ops import custom_ops
from llr_kernels.ops.adamw.naive import adamw_step_torch
from reference import torch_muon_ns_f64

FAST = [pytest.param(b, marks=requires(backend_missing(b, device_for(b)), f"backend {b!r}"), id=b) for b in ("cpp", "triton")]
BACKENDS = ["torch", "auto"] + FAST  # each runs on device_for(backend)


class Net(nn.Module):
    """A channels_last conv, a Linear whose weight is a transposed view, and a strided-slice bias."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3).to(memory_format=torch.channels_last)
        self.proj = nn.Linear(8, 12, bias=False)
        self.proj.weight = nn.Parameter(torch.randn(8, 12).t() / 3)  # (12, 8), strides (1, 12)
        self.shift = nn.Parameter(torch.randn(24)[::2].detach())  # (12,), stride 2: not dense
        self.head = nn.Linear(12, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv(x).mean(dim=(2, 3))
        return self.head(torch.tanh(self.proj(h) + self.shift))

    def layouts(self) -> list[tuple]:
        return [p.stride() for p in self.parameters()]


def twins(seed: int, device: torch.device = CPU) -> tuple[Net, Net]:
    """Two equal Nets built on ``device`` (moving one there would make its strided slice contiguous)."""
    torch.manual_seed(seed)
    with device:
        a, b = Net(), Net()
    with torch.no_grad():
        for p, q in zip(a.parameters(), b.parameters()):
            q.copy_(p)
    return a, b


def run(model, opts, steps, seed, clip=None):
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x = torch.randn(4, 3, 6, 6, generator=g).to(next(model.parameters()).device, memory_format=torch.channels_last)
        for o in opts:
            o.zero_grad()
        model(x).square().mean().backward()
        if clip is not None and not isinstance(opts[0], (LLRAdamW, LLRMuon)):
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        for o in opts:
            o.step()


def test_the_layouts_are_what_the_test_means(seed):
    m, _ = twins(seed)
    assert m.conv.weight.is_contiguous(memory_format=torch.channels_last) and not m.conv.weight.is_contiguous()
    assert not m.proj.weight.is_contiguous() and m.proj.weight.t().is_contiguous()
    assert m.shift.stride() == (2,)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("clip", [None, 0.05], ids=["noclip", "clip"])
def test_llr_adamw_matches_torch_adamw(backend, clip, seed):
    model, ref_model = twins(seed, device_for(backend))
    layouts = model.layouts()
    opt = LLRAdamW(model, lr=1e-2, betas=(0.9, 0.95), weight_decay=0.1, s=1.0, max_grad_norm=clip, backend=backend)
    ref = torch.optim.AdamW(ref_model.parameters(), lr=1e-2, betas=(0.9, 0.95), weight_decay=0.1, foreach=False)
    run(model, [opt], 5, seed)
    run(ref_model, [ref], 5, seed, clip=clip)
    for (name, p), q in zip(model.named_parameters(), ref_model.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6, msg=lambda s, n=name: f"{n}: {s}")
    assert model.layouts() == layouts
    assert opt.state[model.conv.weight]["exp_avg"].is_contiguous(memory_format=torch.channels_last)


@needs(torch_muon_missing(), "torch.optim.Muon")
@pytest.mark.parametrize("backend", BACKENDS)
def test_llr_muon_matches_torch_muon(backend, seed, monkeypatch):
    """The transposed-view weight goes to Muon (its update buffer is contiguous, so muon_apply steps it through
    the torch path), the conv weight and the slice to the AdamW part."""
    import torch.optim._muon as torch_muon

    monkeypatch.setattr(torch_muon, "_zeropower_via_newtonschulz", torch_muon_ns_f64)
    model, ref_model = twins(seed, device_for(backend))
    layouts = model.layouts()
    muon_backend = "torch" if backend == "cpp" else None
    opt = LLRMuon(model, lr=0.02, adamw_lr=2e-3, weight_decay=0.1, s=1.0, ns_dtype=torch.float64, backend=backend,
                  muon_backend=muon_backend)
    muon_ids = {id(p) for g in opt.param_groups if g["use_muon"] for p in g["params"]}
    names = [n for n, p in model.named_parameters() if id(p) in muon_ids]
    assert "proj.weight" in names and "conv.weight" not in names, names
    ref_params = dict(ref_model.named_parameters())
    ref = [torch.optim.Muon([ref_params[n] for n in names], lr=0.02, weight_decay=0.1),
           torch.optim.AdamW([p for n, p in ref_params.items() if n not in names], lr=2e-3, weight_decay=0.1,
                             foreach=False)]
    run(model, [opt], 5, seed)
    run(ref_model, ref, 5, seed)
    for (name, p), q in zip(model.named_parameters(), ref_model.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6, msg=lambda s, n=name: f"{n}: {s}")
    assert model.layouts() == layouts


def test_kernel_views_flatten_shared_dense_layouts_only(seed):
    g = torch.Generator().manual_seed(seed)
    cl = torch.randn(2, 3, 4, 5, generator=g).to(memory_format=torch.channels_last)
    cl2 = torch.randn(2, 3, 4, 5, generator=g).to(memory_format=torch.channels_last)
    plain = torch.randn(6, 7, generator=g)
    strided = torch.randn(6, 14, generator=g)[:, ::2]
    assert custom_ops.kernel_views([[plain], [plain.clone()]])[1] is None  # all contiguous: nothing to do
    cols, ok = custom_ops.kernel_views([[plain, cl, cl, strided], [plain, cl2, cl2.contiguous(), strided.contiguous()]])
    assert ok == [True, True, False, False]
    strided2 = torch.randn(6, 14, generator=g)[:, ::2]
    assert custom_ops.kernel_views([[plain, strided], [plain, strided2]])[1] == [True, False]  # one layout, with gaps
    assert cols[0][0] is plain and cols[1][0] is plain
    flat = cols[0][1]
    assert flat.shape == (cl.numel(),) and flat.is_contiguous() and flat.data_ptr() == cl.data_ptr()
    flat.add_(1.0)  # writes land in the original tensor
    assert torch.equal(cl.permute(0, 2, 3, 1).reshape(-1), flat)


@pytest.mark.parametrize("backend", FAST)
def test_op_with_mixed_layouts_and_clipping_matches_the_torch_reference(backend, seed):
    """One call with a contiguous, a channels_last and a strided tensor and a global clip: the strided one
    takes the torch path, all three get one clip factor and their own LR and step counter."""
    g = torch.Generator().manual_seed(seed)
    dev = device_for(backend)

    def tensors():
        return [torch.randn(5, 4, generator=g).to(dev),
                torch.randn(2, 3, 4, 4, generator=g).to(dev, memory_format=torch.channels_last),
                torch.randn(5, 8, generator=g).to(dev)[:, ::2]]

    params, grads = tensors(), tensors()
    grads[2] = grads[2].contiguous()  # autograd gives a non-dense parameter a contiguous grad
    lrs, wds = torch.tensor([1e-2, 2e-2, 3e-2], device=dev), torch.tensor([0.1, 0.0, 0.2], device=dev)
    results = {}
    for name in ("op", "reference"):
        ps = [p.clone(memory_format=torch.preserve_format) for p in params]
        ps[2] = torch.zeros(5, 8, device=dev)[:, ::2].copy_(params[2])  # clone() would make the slice contiguous
        ms, vs = [torch.zeros_like(p) for p in ps], [torch.zeros_like(p) for p in ps]
        steps = torch.tensor([0.0, 3.0, 7.0], device=dev)
        for _ in range(2):
            if name == "op":
                norm = custom_ops.adamw_step(ps, grads, ms, vs, [], lrs, wds, steps, 0.9, 0.99, 1e-8, False, False,
                                             None, None, 0.3, False, backend)
            else:
                norm = adamw_step_torch(ps, grads, ms, vs, None, lrs.double(), wds.double(), steps, beta1=0.9,
                                        beta2=0.99, eps=1e-8, max_grad_norm=0.3)
        results[name] = (ps, norm, steps)
    (ps, norm, steps), (ref_ps, ref_norm, ref_steps) = results["op"], results["reference"]
    assert ps[1].is_contiguous(memory_format=torch.channels_last) and ps[2].stride() == (8, 2)
    for a, b in zip(ps, ref_ps):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(norm, ref_norm.float())
    assert torch.equal(steps.cpu(), torch.tensor([2.0, 5.0, 9.0])) and torch.equal(ref_steps, steps)


@pytest.mark.parametrize("backend", FAST[1:])
def test_muon_apply_op_steps_each_torch_path_matrix_with_its_own_decay_and_step(backend, seed):
    """muon_apply with a contiguous matrix and two transposed views (their contiguous updates send them through the
    torch path one by one): each matrix gets its own decay and step size. Reference: p * d - s * u in float64."""
    g = torch.Generator().manual_seed(seed)
    dev = device_for(backend)
    params = [torch.randn(6, 4, generator=g).to(dev), torch.randn(4, 6, generator=g).to(dev).t(),
              torch.randn(5, 3, generator=g).to(dev).t()]
    updates = [torch.randn(tuple(p.shape), generator=g).to(dev) for p in params]
    decays = torch.tensor([0.99, 0.95, 0.9], device=dev)
    step_sizes = torch.tensor([0.01, 0.02, 0.03], device=dev)
    want = [p.double() * d - s * u.double() for p, u, d, s in
            zip(params, updates, decays.double().tolist(), step_sizes.double().tolist())]
    strides = [p.stride() for p in params]
    custom_ops.muon_apply(params, updates, decays, step_sizes, False, backend)
    for i, (p, w) in enumerate(zip(params, want)):
        torch.testing.assert_close(p.double(), w, rtol=1e-6, atol=1e-6, msg=lambda m, i=i: f"matrix {i}: {m}")
    assert [p.stride() for p in params] == strides
