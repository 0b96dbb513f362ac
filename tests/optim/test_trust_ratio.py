"""LAMB and LARS (llr_kernels.optim.trust_ratio) against independent float64 references written from the papers.

The references below are single-tensor float64 loops written from You et al. 2019 (arXiv 1904.00962, Algorithm
2, LAMB, phi = clip to [lo, hi]) and You et al. 2017 (arXiv 1708.03888, Algorithm 1, LARS), with the rules the
optimizers document (r = 1 when a norm is zero or the tensor is excluded); nothing from the code under test
computes an expected value. Each run: 20 steps, fresh random float32 gradients every step, four param groups
with different lr / weight decay (one with ``trust=False``), matrices, a 3-D tensor, 1-D biases (excluded from
the trust ratio by default), zero-initialised tensors and zero first gradients (the r = 1 rules), a tensor
that never gets a gradient, and a matrix whose norm exceeds LAMB's clip.

Bound: float32 against float64, per element |ours - ref| <= 1e-6 |ref| + 1e-5 x (largest movement of that tensor
over the run); the gradients do not depend on the weights, so errors only accumulate (20 steps x a few ulp).
``test_bound_catches_a_wrong_lr`` shows an LR off by 0.1% exceeds it.

Seeds come from ``np.random.SeedSequence().entropy`` and are printed in every assert message; replay one with
LLR_TEST_SEED=N.
"""
from __future__ import annotations

import copy
import math
import os
from typing import Any, Callable

import numpy as np
import pytest
import torch

from llr_kernels.optim.trust_ratio import LAMB, LARS

pytestmark = pytest.mark.usefixtures("nan_fill")

STEPS = 20
# name, shape, group, init ("randn" x0.5, "big" x1.0: norm ~16 > LAMB's clip 10, "zeros"), first grad zero?
SPECS: list[tuple[str, tuple[int, ...], int, str, bool]] = [
    ("w0", (7, 5), 0, "randn", False),
    ("w3d", (3, 4, 2), 0, "randn", False),
    ("zero", (4, 6), 0, "zeros", True),  # ||w|| = 0 and ||u|| = ||g|| = 0 at step 1, ||w|| = 0 at step 2
    ("big", (16, 16), 1, "big", False),
    ("b1", (5,), 1, "randn", False),
    ("nograd", (2, 2), 1, "randn", False),  # never gets a gradient: untouched, ratio NaN
    ("w2", (3, 3), 2, "randn", False),  # group 2 has trust=False
    ("b2", (7,), 2, "randn", False),
    ("w3", (6, 4), 3, "randn", True),  # weight decay 0 and a zero first gradient: LAMB ||u|| = 0 with ||w|| > 0
    ("b3", (4,), 3, "zeros", False),
]
GROUP_WD = [0.1, 0.01, 0.05, 0.0]
GROUP_LR = {"lamb": [1e-2, 3e-3, 2e-3, 5e-3], "lars": [0.5, 0.2, 0.01, 0.1]}


@pytest.fixture
def entropy() -> int:
    """A fresh seed from the OS entropy pool (LLR_TEST_SEED=N replays one)."""
    return int(os.environ.get("LLR_TEST_SEED") or np.random.SeedSequence().entropy)


# ----- independent float64 references ---------------------------------------------------------------------
class LambRef:
    """One tensor, float64: m, v, bias correction, u = m_hat / (sqrt(v_hat) + eps) + wd w, r = phi(||w||) / ||u||."""

    def __init__(self, w: np.ndarray, betas=(0.9, 0.999), eps=1e-6, wd=0.0, bias_correction=True,
                 clamp=(0.0, 10.0), trusted=True, maximize=False) -> None:
        self.w = w.astype(np.float64).copy()
        self.m = np.zeros_like(self.w)
        self.v = np.zeros_like(self.w)
        self.t = 0
        self.betas, self.eps, self.wd, self.bc, self.clamp = betas, eps, wd, bias_correction, clamp
        self.trusted, self.maximize = trusted, maximize

    def step(self, g: np.ndarray, lr: float) -> float:
        g = -g.astype(np.float64) if self.maximize else g.astype(np.float64)
        b1, b2 = self.betas
        self.t += 1
        self.m = b1 * self.m + (1 - b1) * g
        self.v = b2 * self.v + (1 - b2) * g * g
        m_hat = self.m / (1 - b1**self.t) if self.bc else self.m
        v_hat = self.v / (1 - b2**self.t) if self.bc else self.v
        u = m_hat / (np.sqrt(v_hat) + self.eps) + self.wd * self.w
        wn, un = float(np.sqrt((self.w**2).sum())), float(np.sqrt((u**2).sum()))
        r = 1.0
        if self.trusted and wn > 0 and un > 0:
            phi = wn if self.clamp is None else min(max(wn, self.clamp[0]), self.clamp[1])
            r = phi / un
        self.w = self.w - lr * r * u
        return r


class LarsRef:
    """One tensor, float64: local = eta ||w|| / (||g|| + wd ||w|| + eps), v = mu v + lr local (g + wd w), w -= v."""

    def __init__(self, w: np.ndarray, momentum=0.9, wd=0.0, eta=0.001, eps=1e-8, nesterov=False, trusted=True,
                 maximize=False) -> None:
        self.w = w.astype(np.float64).copy()
        self.v = np.zeros_like(self.w)
        self.mu, self.wd, self.eta, self.eps, self.nesterov = momentum, wd, eta, eps, nesterov
        self.trusted, self.maximize = trusted, maximize

    def step(self, g: np.ndarray, lr: float) -> float:
        g = -g.astype(np.float64) if self.maximize else g.astype(np.float64)
        wn, gn = float(np.sqrt((self.w**2).sum())), float(np.sqrt((g**2).sum()))
        local = self.eta * wn / (gn + self.wd * wn + self.eps) if (self.trusted and wn > 0 and gn > 0) else 1.0
        d = lr * local * (g + self.wd * self.w)
        self.v = self.mu * self.v + d
        self.w = self.w - (self.mu * self.v + d if self.nesterov else self.v)
        return local


# ----- the harness ------------------------------------------------------------------------------------------
def make_data(seed: int, steps: int = STEPS) -> tuple[dict[str, np.ndarray], list[dict[str, np.ndarray | None]]]:
    """Initial float32 weights and ``steps`` rounds of float32 gradients (None: no gradient)."""
    rng = np.random.default_rng(seed)
    init = {}
    for name, shape, _, kind, _ in SPECS:
        scale = {"randn": 0.5, "big": 1.0, "zeros": 0.0}[kind]
        init[name] = (rng.standard_normal(shape) * scale).astype(np.float32)
    grads = []
    for t in range(steps):
        gs: dict[str, np.ndarray | None] = {}
        for name, shape, _, _, zero_first in SPECS:
            g = (rng.standard_normal(shape) * 0.1).astype(np.float32)
            gs[name] = None if name == "nograd" else (np.zeros(shape, np.float32) if zero_first and t == 0 else g)
        grads.append(gs)
    return init, grads


def build(cls: type, init: dict[str, np.ndarray], kwargs: dict[str, Any]) -> tuple[Any, dict[str, torch.Tensor]]:
    """The optimizer over fresh float32 copies of ``init``, in four groups (group 2: trust=False)."""
    params = {n: torch.tensor(a, requires_grad=True) for n, a in init.items()}
    lrs = GROUP_LR["lamb" if cls is LAMB else "lars"]
    groups = [{"params": [params[n] for n, _, gi, _, _ in SPECS if gi == i], "lr": lrs[i], "weight_decay": GROUP_WD[i]}
              for i in range(4)]
    groups[2]["trust"] = False
    return cls(groups, **kwargs), params


def set_grads(params: dict[str, torch.Tensor], gs: dict[str, np.ndarray | None]) -> None:
    for n, p in params.items():
        p.grad = None if gs[n] is None else torch.tensor(gs[n])


def run(cls: type, init, grads, kwargs, *, steps: int = STEPS, scheduler: Callable | None = None):
    """Ours for ``steps`` steps: (params, optimizer, last_trust_ratios per step, lrs per step and group)."""
    opt, params = build(cls, init, kwargs)
    sched = scheduler(opt) if scheduler else None
    ratios, lrs = [], []
    for t in range(steps):
        set_grads(params, grads[t])
        lrs.append([float(g["lr"]) for g in opt.param_groups])
        opt.step()
        ratios.append(opt.last_trust_ratios.clone())
        if sched:
            sched.step()
    return params, opt, ratios, lrs


def reference(cls: type, init, grads, kwargs, lrs_per_step: list[list[float]], lr_scale: float = 1.0):
    """The float64 reference trajectory: final weights and trust ratios (NaN for 'nograd') per step."""
    pred = kwargs.get("exclude_from_trust", "default")
    refs = {}
    for name, shape, gi, _, _ in SPECS:
        trusted = gi != 2 and (pred is None or (len(shape) >= 2 if pred == "default" else not pred(torch.zeros(shape))))
        if cls is LAMB:
            refs[name] = LambRef(init[name], kwargs.get("betas", (0.9, 0.999)), kwargs.get("eps", 1e-6), GROUP_WD[gi],
                                 kwargs.get("bias_correction", True), kwargs.get("clamp", (0.0, 10.0)), trusted,
                                 kwargs.get("maximize", False))
        else:
            refs[name] = LarsRef(init[name], kwargs.get("momentum", 0.9), GROUP_WD[gi], kwargs.get("trust_coefficient", 1e-3),
                                 kwargs.get("eps", 1e-8), kwargs.get("nesterov", False), trusted, kwargs.get("maximize", False))
    ratios = []
    for t, gs in enumerate(grads[: len(lrs_per_step)]):
        rs = []
        for name, _, gi, _, _ in SPECS:
            rs.append(math.nan if gs[name] is None else refs[name].step(gs[name], lrs_per_step[t][gi] * lr_scale))
        ratios.append(rs)
    return {n: r.w for n, r in refs.items()}, ratios


def param_errors(params: dict[str, torch.Tensor], ref_w: dict[str, np.ndarray], init) -> dict[str, float]:
    """Per tensor: max over elements of |ours - ref| / (1e-6 |ref| + 1e-5 x largest movement); <= 1 passes."""
    out = {}
    for n, p in params.items():
        ours, ref = p.detach().double().numpy(), ref_w[n]
        move = float(np.abs(ref - init[n].astype(np.float64)).max())
        bound = 1e-6 * np.abs(ref) + 1e-5 * move + 1e-30  # every tested tensor moves: move > 0
        out[n] = float((np.abs(ours - ref) / bound).max())
    return out


def check_against_reference(cls, kwargs, seed, *, scheduler=None) -> None:
    init, grads = make_data(seed)
    params, _, ratios, lrs = run(cls, init, grads, kwargs, scheduler=scheduler)
    ref_w, ref_ratios = reference(cls, init, grads, kwargs, lrs)
    errs = param_errors({n: p for n, p in params.items() if n != "nograd"}, ref_w, init)
    assert max(errs.values()) <= 1.0, f"seed={seed} {cls.__name__} {kwargs}: error / bound per tensor {errs}"
    assert torch.equal(params["nograd"].detach(), torch.tensor(init["nograd"])), f"seed={seed}: a tensor without grad moved"
    for t in range(STEPS):
        ours, ref = ratios[t].numpy(), np.array(ref_ratios[t])
        assert np.array_equal(np.isnan(ours), np.isnan(ref)), f"seed={seed} step {t}: NaN pattern {ours} vs {ref}"
        ok = ~np.isnan(ref)
        np.testing.assert_allclose(ours[ok], ref[ok], rtol=1e-5, err_msg=f"seed={seed} {cls.__name__} {kwargs} step {t}: trust ratios")
    # the r = 1 rules were exercised: zero weights at steps 1-2 and zero update at step 1
    names = [s[0] for s in SPECS]
    assert ratios[0][names.index("zero")] == 1.0 and ratios[1][names.index("zero")] == 1.0, f"seed={seed}"
    assert ratios[0][names.index("w3")] == 1.0 and ratios[1][names.index("w3")] != 1.0, f"seed={seed}"
    assert ratios[3][names.index("b1")] == 1.0 or kwargs.get("exclude_from_trust", "x") is None, f"seed={seed}"


LAMB_CONFIGS = [
    dict(),
    dict(bias_correction=False, clamp=None, maximize=True, betas=(0.8, 0.99), eps=1e-5),
    dict(clamp=(1.0, 5.0), exclude_from_trust=None),
]
LARS_CONFIGS = [
    dict(),
    dict(nesterov=True, trust_coefficient=0.02, eps=1e-6),
    dict(momentum=0.0, maximize=True, exclude_from_trust=None),
]


@pytest.mark.parametrize("foreach", [True, False], ids=["foreach", "loop"])
@pytest.mark.parametrize("config", range(len(LAMB_CONFIGS)))
def test_lamb_matches_reference(config: int, foreach: bool, entropy: int) -> None:
    check_against_reference(LAMB, {**LAMB_CONFIGS[config], "foreach": foreach}, entropy)


@pytest.mark.parametrize("foreach", [True, False], ids=["foreach", "loop"])
@pytest.mark.parametrize("config", range(len(LARS_CONFIGS)))
def test_lars_matches_reference(config: int, foreach: bool, entropy: int) -> None:
    check_against_reference(LARS, {**LARS_CONFIGS[config], "foreach": foreach}, entropy)


def sharded_worker(rank: int, world: int, port: int, cls_name: str, foreach: bool, seed: int, out: str) -> None:
    """One rank: the SPECS tensors and their gradients as DTensors sharded by rows over a ``world``-rank mesh (as
    FSDP2 holds them; uneven shards), STEPS steps, then the whole tensors and the trust ratios per step."""
    import torch.distributed as dist
    from torch.distributed.tensor import Shard, distribute_tensor, init_device_mesh

    from llr_kernels.dist_exit import exit_rank

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    mesh = init_device_mesh("cpu", (world,))
    cls = LAMB if cls_name == "LAMB" else LARS
    init, grads = make_data(seed)
    params = {n: torch.nn.Parameter(distribute_tensor(torch.tensor(a), mesh, [Shard(0)])) for n, a in init.items()}
    lrs = GROUP_LR["lamb" if cls is LAMB else "lars"]
    groups = [{"params": [params[n] for n, _, gi, _, _ in SPECS if gi == i], "lr": lrs[i], "weight_decay": GROUP_WD[i]}
              for i in range(4)]
    groups[2]["trust"] = False
    opt = cls(groups, foreach=foreach)
    ratios = []
    for t in range(STEPS):
        for n, p in params.items():
            g = grads[t][n]
            p.grad = None if g is None else distribute_tensor(torch.tensor(g), mesh, [Shard(0)])
        opt.step()
        ratios.append(opt.last_trust_ratios.clone())
    whole = {n: p.detach().full_tensor() for n, p in params.items()}
    local_rows = {n: p.detach().to_local().shape[0] for n, p in params.items()}
    torch.save({"params": whole, "ratios": ratios, "local_rows": local_rows, "lrs": [lrs] * STEPS}, f"{out}.{rank}")
    exit_rank()


@pytest.mark.parametrize("foreach", [True, False], ids=["foreach", "loop"])
@pytest.mark.parametrize("cls", [LAMB, LARS])
def test_sharded_parameters_match_reference(cls: type, foreach: bool, entropy: int, tmp_path) -> None:
    """FSDP2-style DTensor parameters (2 ranks, rows sharded unevenly): every norm is the whole tensor's, so the
    weights and trust ratios match the float64 single-tensor reference within the same bound as one process
    (a shard's own norm gave trust ratios off by up to 0.1 and weights by 4e-3 on a tiny LLaMA)."""
    import torch.distributed as dist
    import torch.multiprocessing as mp
    from conftest import free_port, require

    require(None if dist.is_available() else "this torch build has no torch.distributed", "torch.distributed")
    out = str(tmp_path / "res")
    mp.spawn(sharded_worker, args=(2, free_port(), cls.__name__, foreach, entropy, out), nprocs=2, join=True)
    res = [torch.load(f"{out}.{r}", weights_only=True) for r in range(2)]
    init, grads = make_data(entropy)
    assert [r["local_rows"]["w0"] for r in res] == [4, 3], "the test needs uneven shards"
    ref_w, ref_ratios = reference(cls, init, grads, {}, res[0]["lrs"])
    for r in res:
        errs = param_errors({n: p for n, p in r["params"].items() if n != "nograd"}, ref_w, init)
        assert max(errs.values()) <= 1.0, f"seed={entropy} {cls.__name__}: error / bound per tensor {errs}"
        for t in range(STEPS):
            ours, ref = r["ratios"][t].numpy(), np.array(ref_ratios[t])
            ok = ~np.isnan(ref)
            assert np.array_equal(np.isnan(ours), ~ok), f"seed={entropy} step {t}"
            np.testing.assert_allclose(ours[ok], ref[ok], rtol=1e-5, err_msg=f"seed={entropy} step {t}: trust ratios")
    for n in res[0]["params"]:  # the ranks agree exactly
        assert torch.equal(res[0]["params"][n], res[1]["params"][n]), (entropy, n)


@pytest.mark.parametrize("cls", [LAMB, LARS])
def test_bound_catches_a_wrong_lr(cls: type, entropy: int) -> None:
    """The bound is tight enough to matter: a reference with every LR 0.1% larger fails it."""
    init, grads = make_data(entropy)
    params, _, _, lrs = run(cls, init, grads, {})
    ref_w, _ = reference(cls, init, grads, {}, lrs, lr_scale=1.001)
    errs = param_errors({n: p for n, p in params.items() if n != "nograd"}, ref_w, init)
    assert max(errs.values()) > 3.0, f"seed={entropy}: an LR off by 0.1% passes the bound: {errs}"


@pytest.mark.parametrize("cls", [LAMB, LARS])
def test_foreach_and_loop_are_bitwise_equal_on_cpu(cls: type, entropy: int) -> None:
    init, grads = make_data(entropy)
    kwargs = {"maximize": True} if cls is LAMB else {"nesterov": True}
    pa, oa, ra, _ = run(cls, init, grads, {**kwargs, "foreach": True})
    pb, ob, rb, _ = run(cls, init, grads, {**kwargs, "foreach": False})
    for n in pa:
        assert torch.equal(pa[n], pb[n]), f"seed={entropy}: {n} differs between foreach and loop"
        for k, v in oa.state[pa[n]].items():
            assert torch.equal(v, ob.state[pb[n]][k]), f"seed={entropy}: state {k} of {n} differs"
    for t in range(STEPS):
        assert torch.equal(ra[t].nan_to_num(-1.0), rb[t].nan_to_num(-1.0)), f"seed={entropy}: trust ratios of step {t}"


@pytest.mark.parametrize("foreach", [True, False], ids=["foreach", "loop"])
@pytest.mark.parametrize("cls", [LAMB, LARS])
def test_state_dict_round_trip_is_bitwise(cls: type, foreach: bool, entropy: int) -> None:
    init, grads = make_data(entropy)
    full, _, _, _ = run(cls, init, grads, {"foreach": foreach})
    half, opt, _, _ = run(cls, init, grads, {"foreach": foreach}, steps=STEPS // 2)
    saved = copy.deepcopy(opt.state_dict())
    weights = {n: p.detach().clone() for n, p in half.items()}
    del opt, half
    opt2, params2 = build(cls, {n: w.numpy() for n, w in weights.items()}, {"foreach": foreach})
    opt2.load_state_dict(saved)
    for t in range(STEPS // 2, STEPS):
        set_grads(params2, grads[t])
        opt2.step()
    for n in full:
        assert torch.equal(full[n], params2[n]), f"seed={entropy}: {n} differs after a state_dict round trip"


@pytest.mark.parametrize("tensor_lr", [False, True], ids=["float_lr", "tensor_lr"])
@pytest.mark.parametrize("cls", [LAMB, LARS])
def test_lr_scheduler_drives_the_step(cls: type, tensor_lr: bool, entropy: int) -> None:
    """LambdaLR changes every group's lr each step; the steps follow (checked against the reference)."""
    def scheduler(opt):
        if tensor_lr:
            for g in opt.param_groups:
                g["lr"] = torch.tensor(g["lr"], dtype=torch.float64)
        return torch.optim.lr_scheduler.LambdaLR(opt, lambda k: 0.85**k)

    check_against_reference(cls, {}, entropy, scheduler=scheduler)
    init, grads = make_data(entropy)
    _, opt, _, lrs = run(cls, init, grads, {}, scheduler=scheduler)
    base = GROUP_LR["lamb" if cls is LAMB else "lars"]
    assert lrs[5] == pytest.approx([b * 0.85**5 for b in base], rel=1e-12), f"seed={entropy}: {lrs[5]}"
    assert isinstance(opt.param_groups[0]["lr"], torch.Tensor) == tensor_lr


@pytest.mark.parametrize("cls", [LAMB, LARS])
def test_closure_and_predicates(cls: type, entropy: int) -> None:
    torch.manual_seed(entropy % 2**63)
    model = torch.nn.Linear(4, 3)
    x, y = torch.randn(8, 4), torch.randn(8, 3)
    seen = []
    opt = cls(model.parameters(), exclude_from_trust=lambda p: seen.append(tuple(p.shape)) or p.shape == (3, 4))

    def closure():
        opt.zero_grad()
        assert torch.is_grad_enabled()
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        return loss

    loss = opt.step(closure)
    assert isinstance(loss, torch.Tensor) and loss.ndim == 0
    assert sorted(seen) == [(3,), (3, 4)], f"seed={entropy}: predicate saw {seen}"
    r = opt.last_trust_ratios
    assert r.dtype == torch.float64 and r.device.type == "cpu" and r.shape == (2,)
    assert r[0] == 1.0 and r[1] != 1.0, f"seed={entropy}: the weight was excluded, the bias was not: {r}"


def test_sparse_gradients_are_refused() -> None:
    emb = torch.nn.Embedding(10, 3, sparse=True)
    emb(torch.tensor([1, 2])).sum().backward()
    for cls in (LAMB, LARS):
        with pytest.raises(RuntimeError, match="sparse gradients"):
            cls(emb.parameters()).step()


def _p() -> list[torch.Tensor]:
    return [torch.zeros(2, 2, requires_grad=True)]


ERRORS: list[tuple[str, Callable[[], Any], type, str]] = [
    ("lamb lr negative", lambda: LAMB(_p(), lr=-1e-3), ValueError, r"^lr must be >= 0"),
    ("lamb lr string", lambda: LAMB(_p(), lr="1e-3"), TypeError, r"^lr must be a real number"),
    ("lamb lr 2-elem tensor", lambda: LAMB(_p(), lr=torch.ones(2)), TypeError, r"^lr must be a number or a 1-element"),
    ("lamb lr nan", lambda: LAMB(_p(), lr=math.nan), ValueError, r"^lr must be >= 0"),
    ("lamb betas short", lambda: LAMB(_p(), betas=(0.9,)), TypeError, r"^betas must be a pair"),
    ("lamb beta1 = 1", lambda: LAMB(_p(), betas=(1.0, 0.999)), ValueError, r"^betas\[0\] must be in \[0, 1\)"),
    ("lamb eps negative", lambda: LAMB(_p(), eps=-1e-6), ValueError, r"^eps must be >= 0"),
    ("lamb weight_decay negative", lambda: LAMB(_p(), weight_decay=-0.1), ValueError, r"^weight_decay must be >= 0"),
    ("lamb bias_correction int", lambda: LAMB(_p(), bias_correction=1), TypeError, r"^bias_correction must be True or False"),
    ("lamb clamp scalar", lambda: LAMB(_p(), clamp=10.0), TypeError, r"^clamp must be a pair \(lo, hi\)"),
    ("lamb clamp reversed", lambda: LAMB(_p(), clamp=(5.0, 1.0)), ValueError, r"^clamp must have lo <= hi"),
    ("lamb clamp negative", lambda: LAMB(_p(), clamp=(-1.0, 10.0)), ValueError, r"^clamp\[0\] must be >= 0"),
    ("lamb clamp hi zero", lambda: LAMB(_p(), clamp=(0.0, 0.0)), ValueError, r"^clamp\[1\] must be > 0"),
    ("lamb predicate string", lambda: LAMB(_p(), exclude_from_trust="bias"), TypeError, r"^exclude_from_trust must be a callable"),
    ("lamb foreach string", lambda: LAMB(_p(), foreach="yes"), TypeError, r"^foreach must be None, True or False"),
    ("lamb maximize None", lambda: LAMB(_p(), maximize=None), TypeError, r"^maximize must be True or False"),
    ("lamb group lr", lambda: LAMB([{"params": _p()}, {"params": _p(), "lr": -1.0}]), ValueError, r"^param group 1: lr must be >= 0"),
    ("lamb group trust", lambda: LAMB([{"params": _p(), "trust": "no"}]), TypeError, r"^param group 0: trust must be None, True or False"),
    ("lamb group clamp", lambda: LAMB([{"params": _p(), "clamp": (1, 0.5)}]), ValueError, r"^param group 0: clamp must have lo <= hi"),
    ("lamb empty", lambda: LAMB([]), ValueError, r"empty parameter list"),
    ("lars lr negative", lambda: LARS(_p(), lr=-0.1), ValueError, r"^lr must be >= 0"),
    ("lars momentum 1", lambda: LARS(_p(), momentum=1.0), ValueError, r"^momentum must be in \[0, 1\)"),
    ("lars momentum string", lambda: LARS(_p(), momentum="0.9"), TypeError, r"^momentum must be a real number"),
    ("lars coefficient 0", lambda: LARS(_p(), trust_coefficient=0.0), ValueError, r"^trust_coefficient must be > 0"),
    ("lars eps negative", lambda: LARS(_p(), eps=-1.0), ValueError, r"^eps must be >= 0"),
    ("lars weight_decay inf", lambda: LARS(_p(), weight_decay=math.inf), ValueError, r"^weight_decay must be >= 0"),
    ("lars nesterov no momentum", lambda: LARS(_p(), momentum=0.0, nesterov=True), ValueError, r"^nesterov requires momentum > 0"),
    ("lars nesterov int", lambda: LARS(_p(), nesterov=1), TypeError, r"^nesterov must be True or False"),
    ("lars predicate int", lambda: LARS(_p(), exclude_from_trust=3), TypeError, r"^exclude_from_trust must be a callable"),
    ("lars group momentum", lambda: LARS([{"params": _p(), "momentum": -0.5}]), ValueError, r"^param group 0: momentum"),
    ("lars group nesterov", lambda: LARS([{"params": _p(), "momentum": 0.0, "nesterov": True}]), ValueError,
     r"^param group 0: nesterov requires momentum > 0"),
]


@pytest.mark.parametrize("make, exc, match", [e[1:] for e in ERRORS], ids=[e[0] for e in ERRORS])
def test_bad_arguments_raise_at_construction(make: Callable[[], Any], exc: type, match: str) -> None:
    with pytest.raises(exc, match=match):
        make()


@pytest.mark.parametrize("cls", [LAMB, LARS])
def test_bad_add_param_group_leaves_the_optimizer_unchanged(cls: type) -> None:
    opt = cls(_p())
    with pytest.raises(ValueError, match=r"^param group 1: weight_decay must be >= 0"):
        opt.add_param_group({"params": _p(), "weight_decay": -1.0})
    assert len(opt.param_groups) == 1
    bias = torch.randn(3, requires_grad=True)
    opt.add_param_group({"params": [bias], "weight_decay": 0.5, "trust": True})
    assert len(opt.param_groups) == 2 and opt.param_groups[1]["trust"] is True
    bias.grad = torch.randn(3)
    opt.step()
    r = opt.last_trust_ratios
    assert math.isnan(r[0]) and r[1] != 1.0, f"trust=True must put a 1-D tensor under the trust ratio: {r}"
