"""The optimizer table: LLRAdamW and LLRMuon at s = 1 against torch.optim, argument by argument, on every backend.

In the spirit of torch's OptimizerInfo (test/test_optim.py): each row is a set of constructor arguments (and
param groups) with the matching torch.optim reference; each row runs a few steps of a small model on each
backend, and the parameters must match the reference

* bitwise on the torch backend (the torch path follows torch.optim's single-tensor code op for op);
* within ``BOUNDS[backend]`` elsewhere: per element |ours - torch| <= 8 ulp(|torch|) + 1e-4 x (the largest
  movement of that tensor over the run). Why not a few ulps: the fast kernels evaluate the same formulas in
  float32 in another order (the C++ kernel: m / denom times step_size instead of addcdiv, lerp written out,
  per-tensor scalars rounded to float32 once; Triton also computes 1 - beta^t in float32), so each step
  differs by ~1 ulp; those differences then change the next gradients, and Newton-Schulz amplifies
  perturbations along small singular directions (by up to ~a^steps = 3.4^5), so after a few steps an
  element near zero can differ by thousands of its own ulps while staying ~1e-6 of the movement.
  Measured on this table (CPU, 4 steps cpp / 3 steps Triton interpreter): the largest error is 0.35 of the
  bound for cpp and 0.11 for Triton. A wrong argument (LR off by 0.1%, say) exceeds it:
  ``test_bounds_are_tight_enough_to_matter``.

LLRMuon runs with ``ns_dtype=torch.float64`` and torch.optim.Muon's Newton-Schulz is replaced by the float64
reference (tests/reference.py): torch's own bf16 Newton-Schulz (mm) and ours (batched bmm) may round a few
bf16 entries differently, which would make every comparison approximate; the float64 pair agrees to ~1e-16,
far below float32 rounding. On the Triton backend ours runs in float32 (the Triton muon_apply kernel takes
fp32/bf16 updates). The bf16 path is compared step by step in tests/optim/test_muon.py.

The error table: every invalid argument raises at construction, with the exception type and a message
naming the argument.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Any, Callable

import pytest
import torch
from torch import nn

import llr_kernels.ops.extension as ext_module
from conftest import backend_missing, backend_param, needs, requires, torch_muon_missing, triton_missing
from llr_kernels import LLRAdamW, LLRMuon
from reference import ns_f64, torch_muon_ns_f64

pytestmark = pytest.mark.usefixtures("nan_fill")

DEV = torch.device("cuda" if torch.cuda.is_available() else "cpu")
VOCAB, D, FF = 24, 16, 32
STEPS = {"torch": 4, "cpp": 4, "triton": 3}
# (ulps of the reference value, multiple of lr) per step, see the module docstring
BOUNDS = {"cpp": (8, 1e-4), "triton": (8, 1e-4)}
# A bf16 moment is rounded to 8 bits after every step: a float32 difference of one ulp before that rounding (an FMA
# on a GPU, say) can flip it by one bf16 ulp (2^-8 relative), which moves that step's update by up to 2^-8 of
# itself. Seen on an H200: 1.7e-4 to 7.4e-4 of the movement with bf16 state, < 1e-4 with float32 state.
BF16_STATE_REL = 2.0**-8


class TableModel(nn.Module):
    """Embedding, square / tall / wide matrices, a bias, a norm and a head: every kind of tensor once."""

    def __init__(self) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(VOCAB, D)
        self.q_proj = nn.Linear(D, D, bias=False)
        self.k_proj = nn.Linear(D, D, bias=False)
        self.up_proj = nn.Linear(D, FF, bias=True)  # tall weight (FF x D) and a bias
        self.down_proj = nn.Linear(FF, D, bias=False)  # wide
        self.norm = nn.LayerNorm(D)
        self.lm_head = nn.Linear(D, VOCAB, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed_tokens(x)
        h = h + torch.tanh(self.q_proj(h)) * self.k_proj(h)
        h = h + self.down_proj(torch.relu(self.up_proj(h)))
        return self.lm_head(self.norm(h))

    def matrices(self) -> list[nn.Parameter]:
        """What LLRMuon gives to Muon: the 2-D hidden weights."""
        return [self.q_proj.weight, self.k_proj.weight, self.up_proj.weight, self.down_proj.weight]

    def others(self) -> list[nn.Parameter]:
        ids = {id(p) for p in self.matrices()}
        return [p for p in self.parameters() if id(p) not in ids]


def make_models() -> tuple[TableModel, TableModel, list[torch.Tensor]]:
    """The model for the LLR optimizer, an identical one for the reference, and the initial values."""
    torch.manual_seed(1234)  # fixed: the table is deterministic
    model = TableModel().to(DEV)
    return model, copy.deepcopy(model), [p.detach().clone() for p in model.parameters()]


def run(model: nn.Module, step: Callable[[], None], zero: Callable[[], None], steps: int) -> None:
    gen = torch.Generator().manual_seed(99)
    for _ in range(steps):
        x = torch.randint(0, VOCAB, (4, 6), generator=gen).to(DEV)
        zero()
        model(x).logsumexp(-1).mean().backward()
        step()


def assert_params(got: nn.Module, want: nn.Module, init: list[torch.Tensor], backend: str,
                  state_dtype: torch.dtype | None = None) -> None:
    """Bitwise on the torch backend; elsewhere within BOUNDS[backend] (see the module docstring), widened for a
    bf16 optimizer state to BF16_STATE_REL of the movement."""
    for (name, a), b, b0 in zip(got.named_parameters(), want.parameters(), init):
        if backend == "torch":
            assert torch.equal(a, b), f"{name}: max |diff| {float((a - b).abs().max()):.3e} (torch backend must be bitwise)"
            continue
        ulps, rel = BOUNDS[backend]
        if state_dtype == torch.bfloat16:
            rel = max(rel, BF16_STATE_REL)
        a, b = a.detach(), b.detach()
        ulp = torch.nextafter(b.abs(), torch.tensor(math.inf, device=b.device)) - b.abs()
        moved = float((b - b0).abs().max())
        assert moved > 0, f"{name} did not move: the row does not test it"
        tol = ulps * ulp + rel * moved
        err = (a - b).abs()
        print(f"{backend} {name}: max {float((err / ulp).max()):.1f} ulp, {float(err.max()):.2e} abs, "
              f"{float((err / tol).max()):.3f} of the bound")
        assert bool((err <= tol).all()), (
            f"{name}: max |diff| {float(err.max()):.3e} = {float((err / ulp).max()):.1f} ulp, "
            f"{float(err.max()) / moved:.2e} of the movement {moved:.2e}: exceeds the {backend} bound"
        )


# ----- the rows ---------------------------------------------------------------------------------
@dataclass
class Row:
    """One argument combination: ``kwargs`` for the LLR optimizer; ``groups(model)`` builds param groups
    (None: pass the model); the reference optimizers are built from the same numbers."""

    desc: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    groups: Callable[[TableModel], list[dict]] | None = None
    known_failures: dict[str, str] = field(default_factory=dict)  # backend -> why (strict xfail: fix, then remove)

    def __repr__(self) -> str:
        return self.desc


ADAMW_ROWS = [
    Row("default"),
    Row("lr-wd-betas-eps", dict(lr=3e-3, weight_decay=0.2, betas=(0.8, 0.95), eps=1e-6)),
    Row("no-weight-decay", dict(weight_decay=0.0)),
    Row("amsgrad", dict(amsgrad=True, betas=(0.9, 0.9))),
    Row("maximize", dict(maximize=True)),
    Row("amsgrad-maximize", dict(amsgrad=True, maximize=True, weight_decay=0.05)),
    Row("beta1-zero", dict(betas=(0.0, 0.99))),
    Row("clip", dict(max_grad_norm=0.05)),
    Row("clip-large", dict(max_grad_norm=1e3)),
    Row("state-bf16", dict(state_dtype=torch.bfloat16)),
    Row("state-bf16-amsgrad", dict(state_dtype=torch.bfloat16, amsgrad=True, betas=(0.9, 0.9))),
    Row("groups-lr-wd-betas", dict(lr=1e-3, weight_decay=0.01),
        groups=lambda m: [{"params": m.matrices(), "lr": 4e-3, "weight_decay": 0.3, "betas": (0.7, 0.9)},
                          {"params": m.others(), "eps": 1e-4}]),
    Row("groups-amsgrad-maximize", dict(lr=2e-3),
        groups=lambda m: [{"params": m.matrices(), "amsgrad": True}, {"params": m.others(), "maximize": True}]),
]

ADAMW_TORCH_KEYS = ("lr", "betas", "eps", "weight_decay", "amsgrad", "maximize")


def table(rows: list[Row], backends: list[tuple[str, ...]]) -> list:
    """pytest params (row, *backends) with id "<row>-<backend>", marked with what the backends need."""
    out = []
    for row in rows:
        for bs in backends:
            why = next((w for w in (backend_missing(b, DEV) for b in bs) if w is not None), None)
            marks = requires(why, f"backend {bs[0]!r}")
            if bs[0] in row.known_failures:
                marks.append(pytest.mark.xfail(strict=True, raises=ValueError, reason=row.known_failures[bs[0]]))
            out.append(pytest.param(row, *bs, marks=marks, id=f"{row.desc}-{bs[0]}"))
    return out


@pytest.mark.parametrize("row,backend", table(ADAMW_ROWS, [("torch",), ("cpp",), ("triton",)]))
def test_llr_adamw_matches_torch_adamw(row: Row, backend: str):
    model, ref_model, init = make_models()
    kw = dict(row.kwargs)
    opt = LLRAdamW(row.groups(model) if row.groups else model, model=model, s=1.0, backend=backend, **kw)
    ref_kw = {k: v for k, v in kw.items() if k in ADAMW_TORCH_KEYS}
    ref = torch.optim.AdamW(row.groups(ref_model) if row.groups else ref_model.parameters(), foreach=False, **ref_kw)
    clip, state_dtype = kw.get("max_grad_norm"), kw.get("state_dtype")
    norms = []

    def ref_step():
        if clip is not None:
            norms.append(float(torch.nn.utils.clip_grad_norm_(ref_model.parameters(), clip, foreach=False)))
        ref.step()
        if state_dtype is not None:  # bf16 optimizer state: the moments are rounded after every step
            for st in ref.state.values():
                for key in ("exp_avg", "exp_avg_sq", "max_exp_avg_sq"):
                    if key in st:
                        st[key].copy_(st[key].to(state_dtype))

    assert opt.backend == backend
    steps = STEPS[backend]
    run(model, opt.step, opt.zero_grad, steps)
    run(ref_model, ref_step, ref.zero_grad, steps)
    assert_params(model, ref_model, init, backend, state_dtype)
    for p in model.parameters():
        st = opt.state[p]
        assert float(st["step"]) == steps
        assert st["exp_avg"].dtype == (state_dtype or torch.float32)
        assert ("max_exp_avg_sq" in st) == any(g["amsgrad"] for g in opt.param_groups if any(q is p for q in g["params"]))
    if clip is not None:  # the pre-clip global norm of the last step, as clip_grad_norm_ returns it
        assert float(opt.last_grad_norm) == pytest.approx(norms[-1], rel=1e-5)


@pytest.mark.parametrize("backend", [backend_param(b, DEV) for b in ("cpp", "triton")])
def test_bounds_are_tight_enough_to_matter(backend: str):
    """An LR off by 0.1% breaks the non-torch bound: the tolerance cannot hide a wrong argument."""
    model, ref_model, init = make_models()
    opt = LLRAdamW(model, lr=1.001e-3, s=1.0, backend=backend)
    ref = torch.optim.AdamW(ref_model.parameters(), lr=1e-3, foreach=False)
    run(model, opt.step, opt.zero_grad, STEPS[backend])
    run(ref_model, ref.step, ref.zero_grad, STEPS[backend])
    with pytest.raises(AssertionError, match="exceeds the"):
        assert_params(model, ref_model, init, backend)


MUON_ROWS = [
    Row("default"),
    Row("lr-wd-momentum", dict(lr=0.05, weight_decay=0.02, momentum=0.8)),
    Row("no-nesterov", dict(nesterov=False)),
    Row("adjust-match-rms", dict(adjust_lr_fn="match_rms_adamw", lr=2e-3)),
    Row("adjust-none", dict(adjust_lr_fn="none")),
    Row("ns-coefficients-steps-eps", dict(ns_coefficients=(3.0, -3.2, 1.2), ns_steps=3, ns_eps=5.0)),  # eps > ||u||: binds
    Row("ns-per-step-coefficients", dict(ns_coefficients=[(3.4445, -4.7750, 2.0315), (3.0, -3.2, 1.2)], ns_steps=2)),
    Row("adamw-part", dict(adamw_lr=4e-3, adamw_betas=(0.8, 0.9), adamw_eps=1e-5, adamw_weight_decay=0.3, amsgrad=True)),
    Row("maximize", dict(maximize=True)),
    Row("clip", dict(max_grad_norm=0.05)),
    Row("groups", dict(lr=0.02),
        groups=lambda m: [{"params": m.matrices()[:2], "use_muon": True, "lr": 0.04, "weight_decay": 0.3, "momentum": 0.9},
                          {"params": m.matrices()[2:], "use_muon": True, "nesterov": False},
                          {"params": m.others(), "use_muon": False, "lr": 3e-3, "betas": (0.8, 0.9), "weight_decay": 0.0}]),
]

MUON_TORCH_KEYS = ("lr", "weight_decay", "momentum", "nesterov", "ns_coefficients", "ns_steps", "adjust_lr_fn")
MUON_DEFAULTS = dict(lr=1e-2, adamw_lr=1e-3, weight_decay=0.1, adamw_betas=(0.9, 0.999), adamw_eps=1e-8, amsgrad=False,
                     maximize=False, ns_eps=1e-7, adjust_lr_fn="original")


def muon_references(row: Row, model: TableModel) -> tuple[list[torch.optim.Optimizer], list[torch.optim.Optimizer]]:
    """(torch.optim.Muon optimizers, torch.optim.AdamW optimizers) equivalent to the row's LLRMuon."""
    kw = {**MUON_DEFAULTS, **row.kwargs}
    muon_kw = {k: v for k, v in kw.items() if k in MUON_TORCH_KEYS}
    muon_kw["eps"] = kw["ns_eps"]
    adjust = muon_kw.pop("adjust_lr_fn")
    adamw_kw = dict(lr=kw["adamw_lr"], betas=kw["adamw_betas"], eps=kw["adamw_eps"],
                    weight_decay=kw.get("adamw_weight_decay", kw["weight_decay"]), amsgrad=kw["amsgrad"],
                    maximize=kw["maximize"], foreach=False)
    if row.groups is None:
        muon_groups, adamw_groups = [{"params": model.matrices()}], [{"params": model.others()}]
    else:
        groups = row.groups(model)
        strip = lambda g: {k: v for k, v in g.items() if k != "use_muon"}  # noqa: E731
        muon_groups = [strip(g) for g in groups if g["use_muon"]]
        adamw_groups = [strip(g) for g in groups if not g["use_muon"]]
    muon = torch.optim.Muon(muon_groups, **muon_kw, adjust_lr_fn="original" if adjust == "none" else adjust)
    if adjust == "none":  # torch.optim.Muon's constructor rejects "none"; its step treats any other name as ratio 1
        for g in muon.param_groups:
            g["adjust_lr_fn"] = "none"
    return [muon], [torch.optim.AdamW(adamw_groups, **adamw_kw)]


@pytest.mark.parametrize("row,backend,muon_backend", table(MUON_ROWS, [("torch", "torch"), ("cpp", "torch"), ("triton", "triton")]))
@needs(torch_muon_missing(), "torch.optim.Muon")
def test_llr_muon_matches_torch_muon(row: Row, backend: str, muon_backend: str, monkeypatch):
    import torch.optim._muon as torch_muon

    monkeypatch.setattr(torch_muon, "_zeropower_via_newtonschulz", _torch_side_ns)
    model, ref_model, init = make_models()
    # float64 Newton-Schulz on both sides; float32 on ours for Triton, whose muon_apply kernel takes fp32/bf16
    # updates (it hands fp64 ones to the torch reference)
    ns_dtype = torch.float32 if muon_backend == "triton" else torch.float64
    opt = LLRMuon(row.groups(model) if row.groups else model, model=model, s=1.0, ns_dtype=ns_dtype,
                  backend=backend, muon_backend=muon_backend, **row.kwargs)
    muons, adamws = muon_references(row, ref_model)
    maximize = row.kwargs.get("maximize", False)
    clip = row.kwargs.get("max_grad_norm")

    def ref_step():
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(ref_model.parameters(), clip)  # as LLRMuon clips (foreach where torch does)
        if maximize:  # torch.optim.Muon has no maximize: ascend by descending on -grad
            for p in ref_model.matrices():
                p.grad.neg_()
        for o in muons + adamws:
            o.step()

    def ref_zero():
        for o in muons + adamws:
            o.zero_grad()

    assert (opt.backend, opt.muon_backend) == (backend, muon_backend)
    steps = STEPS[backend]
    run(model, opt.step, opt.zero_grad, steps)
    run(ref_model, ref_step, ref_zero, steps)
    assert_params(model, ref_model, init, backend)
    assert [g["use_muon"] for g in opt.param_groups].count(True) >= 1


def _torch_side_ns(grad, ns_coefficients, ns_steps, eps):
    """torch.optim.Muon's Newton-Schulz in float64; a per-step coefficient list is applied step by step."""
    coeffs = list(ns_coefficients)
    if len(coeffs) == 3 and all(isinstance(c, (int, float)) for c in coeffs):
        return torch_muon_ns_f64(grad, coeffs, ns_steps, eps)
    assert len(coeffs) == ns_steps
    return ns_f64(grad, coeffs, 1.0, eps)


# ----- arguments that act through the LLR policy and the spectral update --------------------------
CONFIG = dict(s=2.5, interval=7, total_steps=100, grad_phase=0.2, active_until=0.5, ramp_steps=3, pin_embedding=False,
              pin_lm_head=True, outlier_z=3.0)


@pytest.mark.parametrize("cls", [LLRAdamW, LLRMuon], ids=["adamw", "muon"])
def test_llr_arguments_reach_the_policy(cls):
    """Non-default policy arguments arrive in the policy (whose behaviour tests/policies/test_llr_map.py checks) and
    the pins follow the layer kinds."""
    model = TableModel()
    opt = cls(model, **CONFIG)
    assert {k: getattr(opt.llr.config, k) for k in CONFIG} == CONFIG
    assert opt.llr.pinned.tolist() == [layer.kind == "lm_head" for layer in opt.layers]
    assert opt.multipliers().tolist() == [2.5 if layer.kind == "lm_head" else 1.0 for layer in opt.layers]


@pytest.mark.parametrize("method", ["exact", "lanczos", "auto"])
@pytest.mark.parametrize("cls", [LLRAdamW, LLRMuon], ids=["adamw", "muon"])
def test_spectral_arguments_reach_hill_alpha(cls, method, monkeypatch):
    """hill_method, hill_variant and min_eigs are what the spectral update is called with."""
    import llr_kernels.optim.spectral_update as base

    calls = []
    real = base.hill_alpha

    def spy(mats, **kw):
        calls.append(kw)
        return real(mats, **kw)

    monkeypatch.setattr(base, "hill_alpha", spy)
    model = TableModel().to(DEV)
    opt = cls(model, hill_method=method, hill_variant="reference", min_eigs=7, interval=1)
    run(model, opt.step, opt.zero_grad, 1)
    assert [(c["method"], c["variant"], c["min_eigs"]) for c in calls] == [(method, "reference", 7)]
    assert "ok" in opt.hill_status  # min_eigs = 7 <= 16: the matrices were measured


@pytest.mark.parametrize("cls", [LLRAdamW, LLRMuon], ids=["adamw", "muon"])
def test_classify_overrides_the_layer_kinds(cls):
    """A classify callable reaches the optimizer: here it makes q_proj an embedding, pinned at s."""
    model = TableModel()
    opt = cls(model, s=2.0, classify=lambda name, p, module: "embedding" if name == "q_proj.weight" else None)
    kinds = {layer.name: layer.kind for layer in opt.layers}
    assert kinds["q_proj.weight"] == "embedding" and kinds["k_proj.weight"] == "attn_k"
    assert opt.multipliers()[opt.layer_of(model.q_proj.weight)] == 2.0


# ----- the error table --------------------------------------------------------------------------
@dataclass
class ErrorRow:
    """Constructor arguments that must raise ``error`` matching ``match`` at construction."""

    desc: str
    kwargs: dict[str, Any]
    error: type[Exception]
    match: str
    params: Callable[[TableModel], Any] | None = None  # what to pass as params (default: the model)
    setup: Callable[[Any], None] | None = None  # gets pytest's monkeypatch
    marks: list = field(default_factory=list)


def _no_ext(mp) -> None:
    mp.setattr(ext_module, "unavailable_reason", lambda device: "the C++ extension is unavailable: disabled by LLR_DISABLE_EXT=1")


def _no_interpreter(mp) -> None:
    mp.setenv("TRITON_INTERPRET", "0")


def _bad_group(**over):
    return lambda m: [{"params": m.matrices()}, {"params": m.others(), **over}]


needs_triton = requires(triton_missing(), "triton")

SHARED_ERRORS = [  # both optimizers: the LLR policy, the spectral settings, step options, backends, params
    ErrorRow("s-below-1", dict(s=0.5), ValueError, r"^s must be >= 1"),
    ErrorRow("s-nan", dict(s=float("nan")), ValueError, r"^s must be >= 1"),
    ErrorRow("s-string", dict(s="3"), TypeError, r"^s must be a real number"),
    ErrorRow("interval-zero", dict(interval=0), ValueError, r"^interval must be >= 1"),
    ErrorRow("interval-float", dict(interval=2.5), TypeError, r"^interval must be an integer"),
    ErrorRow("interval-bool", dict(interval=True), TypeError, r"^interval must be an integer"),
    ErrorRow("total-steps-zero", dict(total_steps=0), ValueError, r"^total_steps must be >= 1"),
    ErrorRow("total-steps-float", dict(total_steps=100.0), TypeError, r"^total_steps must be an integer"),
    ErrorRow("grad-phase-above-1", dict(grad_phase=1.5), ValueError, r"^grad_phase must be in \[0, 1\]"),
    ErrorRow("active-until-zero", dict(active_until=0.0, total_steps=100), ValueError, r"^active_until must be in \(0, 1\]"),
    ErrorRow("active-until-without-total", dict(active_until=0.2), ValueError, r"^active_until=0.2 .* needs total_steps"),
    ErrorRow("ramp-negative", dict(ramp_steps=-1), ValueError, r"^ramp_steps must be >= 0"),
    ErrorRow("ramp-float", dict(ramp_steps=2.0), TypeError, r"^ramp_steps must be an integer"),
    ErrorRow("pin-embedding-string", dict(pin_embedding="yes"), TypeError, r"^pin_embedding must be True or False"),
    ErrorRow("pin-lm-head-none", dict(pin_lm_head=None), TypeError, r"^pin_lm_head must be True or False"),
    ErrorRow("hill-method", dict(hill_method="svd"), ValueError, r"^hill_method must be one of \('exact', 'lanczos', 'auto'\)"),
    ErrorRow("hill-variant", dict(hill_variant="Paper"), ValueError, r"^hill_variant must be one of \('paper', 'reference'\)"),
    ErrorRow("min-eigs-1", dict(min_eigs=1), ValueError, r"^min_eigs must be >= 2"),
    ErrorRow("min-eigs-float", dict(min_eigs=2.5), TypeError, r"^min_eigs must be an integer"),
    ErrorRow("max-grad-norm-zero", dict(max_grad_norm=0.0), ValueError, r"^max_grad_norm must be > 0"),
    ErrorRow("max-grad-norm-inf", dict(max_grad_norm=math.inf), ValueError, r"^max_grad_norm must be > 0"),
    ErrorRow("max-grad-norm-string", dict(max_grad_norm="1"), TypeError, r"^max_grad_norm must be a real number"),
    ErrorRow("state-dtype-fp16", dict(state_dtype=torch.float16), ValueError, r"^state_dtype must be None"),
    ErrorRow("state-dtype-fp64", dict(state_dtype=torch.float64), ValueError, r"^state_dtype must be None"),
    ErrorRow("state-dtype-with-fp64-params", dict(state_dtype=torch.bfloat16), ValueError, r"^state_dtype applies to fp32",
             params=lambda m: m.double()),
    ErrorRow("backend-unknown", dict(backend="magic"), ValueError, r"^backend must be one of \('auto', 'triton', 'cpp', 'torch'\)"),
    ErrorRow("backend-none", dict(backend=None), ValueError, r"^backend must be one of"),
    ErrorRow("backend-cpp-without-extension", dict(backend="cpp", muon_backend="torch"), ValueError,
             r"^backend='cpp' cannot run on cpu: .*disabled by LLR_DISABLE_EXT=1", setup=_no_ext),
    ErrorRow("backend-triton-without-cuda", dict(backend="triton"), ValueError,
             r"^backend='triton' cannot run on cpu: .*need a CUDA device.*TRITON_INTERPRET=1", setup=_no_interpreter,
             marks=needs_triton),
    ErrorRow("capturable-int", dict(capturable=1), TypeError, r"^capturable must be True or False"),
    ErrorRow("model-not-module", dict(model="net"), TypeError, r"^model must be an nn.Module"),
    ErrorRow("classify-not-callable", dict(classify=3), TypeError, r"^classify must be a callable"),
    ErrorRow("empty-params", {}, ValueError, r"empty parameter list", params=lambda m: []),
    ErrorRow("one-tensor", {}, TypeError, r"^params must be an nn.Module", params=lambda m: m.lm_head.weight),
    ErrorRow("complex-param", {}, ValueError, r"is complex", params=lambda m: [("w", torch.zeros(4, 4, dtype=torch.complex64, requires_grad=True))]),
]

ADAMW_ERRORS = [
    ErrorRow("lr-negative", dict(lr=-1e-3), ValueError, r"^lr must be >= 0"),
    ErrorRow("lr-string", dict(lr="1e-3"), TypeError, r"^lr must be a real number"),
    ErrorRow("betas-one", dict(betas=(0.9, 1.0)), ValueError, r"^betas\[1\] must be in \[0, 1\)"),
    ErrorRow("betas-negative", dict(betas=(-0.1, 0.99)), ValueError, r"^betas\[0\] must be in \[0, 1\)"),
    ErrorRow("betas-length", dict(betas=(0.9,)), TypeError, r"^betas must be a pair"),
    ErrorRow("eps-negative", dict(eps=-1e-8), ValueError, r"^eps must be >= 0"),
    ErrorRow("weight-decay-negative", dict(weight_decay=-0.1), ValueError, r"^weight_decay must be >= 0"),
    ErrorRow("amsgrad-int", dict(amsgrad=1), TypeError, r"^amsgrad must be True or False"),
    ErrorRow("maximize-string", dict(maximize="no"), TypeError, r"^maximize must be True or False"),
    ErrorRow("group-lr", {}, ValueError, r"^param group 1: lr must be >= 0", params=_bad_group(lr=-1.0)),
    ErrorRow("group-betas", {}, ValueError, r"^param group 1: betas\[1\] must be in", params=_bad_group(betas=(0.9, 1.5))),
    ErrorRow("group-weight-decay", {}, TypeError, r"^param group 1: weight_decay must be a real number",
             params=_bad_group(weight_decay="0.1")),
    ErrorRow("group-amsgrad", {}, TypeError, r"^param group 1: amsgrad must be True or False", params=_bad_group(amsgrad="yes")),
]

MUON_ERRORS = [
    ErrorRow("lr-negative", dict(lr=-0.02), ValueError, r"^lr must be >= 0"),
    ErrorRow("adamw-lr-negative", dict(adamw_lr=-1e-3), ValueError, r"^adamw_lr must be >= 0"),
    ErrorRow("weight-decay-negative", dict(weight_decay=-0.1), ValueError, r"^(adamw_)?weight_decay must be >= 0"),
    ErrorRow("adamw-weight-decay", dict(adamw_weight_decay=-0.1), ValueError, r"^adamw_weight_decay must be >= 0"),
    ErrorRow("adamw-betas", dict(adamw_betas=(1.0, 0.9)), ValueError, r"^adamw_betas\[0\] must be in \[0, 1\)"),
    ErrorRow("adamw-eps", dict(adamw_eps=-1.0), ValueError, r"^adamw_eps must be >= 0"),
    ErrorRow("momentum-one", dict(momentum=1.0), ValueError, r"^momentum must be in \[0, 1\)"),
    ErrorRow("momentum-string", dict(momentum="0.9"), TypeError, r"^momentum must be a real number"),
    ErrorRow("nesterov-int", dict(nesterov=1), TypeError, r"^nesterov must be True or False"),
    ErrorRow("ns-steps-zero", dict(ns_steps=0), ValueError, r"^ns_steps must be in \[1, 99\]"),
    ErrorRow("ns-steps-float", dict(ns_steps=5.0), TypeError, r"^ns_steps must be an integer"),
    ErrorRow("ns-steps-bool", dict(ns_steps=True), TypeError, r"^ns_steps must be an integer"),
    ErrorRow("ns-eps-zero", dict(ns_eps=0.0), ValueError, r"^ns_eps must be > 0"),
    ErrorRow("ns-coefficients-name", dict(ns_coefficients="cubic"), ValueError, r"^ns_coefficients must be 'quintic'"),
    ErrorRow("ns-coefficients-count", dict(ns_coefficients=[(1.0, 0.0, 0.0)] * 2, ns_steps=3), ValueError,
             r"got 2 coefficient triples for ns_steps=3"),
    ErrorRow("adjust-lr-fn", dict(adjust_lr_fn="sqrt"), ValueError, r"^adjust_lr_fn must be one of \('original', 'match_rms_adamw', 'none'\)"),
    ErrorRow("grad-alpha-source", dict(grad_alpha_source="update"), ValueError, r"^grad_alpha_source must be one of \('grad', 'momentum'\)"),
    ErrorRow("ns-dtype", dict(ns_dtype=torch.int32), ValueError, r"^ns_dtype must be a floating dtype"),
    ErrorRow("maximize-string", dict(maximize="no"), TypeError, r"^maximize must be True or False"),
    ErrorRow("muon-backend-unknown", dict(muon_backend="gpu"), ValueError, r"^muon_backend must be one of"),
    ErrorRow("backend-cpp-has-no-muon", dict(backend="cpp"), ValueError, r"^backend='cpp' has no Muon kernels .*muon_backend='torch'"),
    ErrorRow("muon-backend-triton-without-cuda", dict(muon_backend="triton"), ValueError,
             r"^muon_backend='triton' cannot run on cpu: .*need a CUDA device", setup=_no_interpreter, marks=needs_triton),
    ErrorRow("3d-param-in-muon-group", {}, ValueError, r"Muon needs 2-D matrices .* use_muon=False",
             params=lambda m: [{"params": [("conv.weight", torch.randn(4, 4, 3, requires_grad=True))], "use_muon": True}]),
    ErrorRow("use-muon-string", {}, ValueError, r"^a param group's use_muon must be True, False or absent",
             params=lambda m: [{"params": m.matrices(), "use_muon": "yes"}]),
    ErrorRow("group-momentum", {}, ValueError, r"^param group 0: momentum must be in \[0, 1\)",
             params=lambda m: [{"params": m.matrices(), "momentum": 1.5}, {"params": m.others(), "use_muon": False}]),
    ErrorRow("group-nesterov", {}, TypeError, r"^param group 0: nesterov must be True or False",
             params=lambda m: [{"params": m.matrices(), "use_muon": True, "nesterov": "yes"}]),
    ErrorRow("group-adamw-betas", {}, ValueError, r"^param group 1: betas\[1\] must be in",
             params=lambda m: [{"params": m.matrices(), "use_muon": True}, {"params": m.others(), "use_muon": False, "betas": (0.9, 2.0)}]),
]


def _error_params(rows: list[ErrorRow], prefix: str) -> list:
    return [pytest.param(r, id=f"{prefix}-{r.desc}", marks=r.marks) for r in rows]


@pytest.mark.parametrize("cls,row", [pytest.param(LLRAdamW, *p.values, id=p.id, marks=p.marks)
                                     for p in _error_params(SHARED_ERRORS + ADAMW_ERRORS, "adamw")]
                         + [pytest.param(LLRMuon, *p.values, id=p.id, marks=p.marks)
                            for p in _error_params(SHARED_ERRORS + MUON_ERRORS, "muon")])
def test_invalid_arguments_raise_at_construction(cls, row: ErrorRow, monkeypatch):
    model = TableModel()  # CPU on purpose: the backend rows are about a CPU device
    if row.setup is not None:
        row.setup(monkeypatch)
    params = row.params(model) if row.params is not None else model
    kwargs = dict(row.kwargs)
    if cls is LLRAdamW:
        kwargs.pop("muon_backend", None)
    with pytest.raises(row.error, match=row.match):
        cls(params, **kwargs)


def test_valid_edge_values_construct():
    """The boundaries the error table stops at are accepted (so the table does not reject valid input)."""
    m = TableModel()
    LLRAdamW(m, lr=0.0, betas=(0.0, 0.0), eps=0.0, weight_decay=0.0, s=1, interval=1, grad_phase=0.0, active_until=1.0,
             ramp_steps=0, min_eigs=2, max_grad_norm=1e-12, hill_method="exact", hill_variant="reference")
    LLRAdamW(m, lr=torch.tensor(1e-3), active_until=0.5, total_steps=10, s=2)
    LLRMuon(m, momentum=0.0, ns_steps=1, adjust_lr_fn=None, adamw_weight_decay=None, backend="torch", muon_backend="torch")
    LLRMuon(m, backend="torch")
