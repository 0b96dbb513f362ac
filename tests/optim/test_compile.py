"""LLRAdamW / LLRMuon under torch.compile: the step kernels are torch.library ops, a step traces into one graph,
and LR schedules and LLR updates do not recompile.

Counted with a compile backend that records every graph it compiles and every call of a compiled graph, and
with torch._dynamo.utils.counters (graph-break reasons). The reference is the same optimizer stepping eagerly
on a twin model: compiled steps must match it exactly (the compiled graph calls the same ops). Backends "eager"
(dynamo only) and "aot_eager" (functionalization: checks the ops' mutation annotations end to end); one small
test uses inductor. LLR updates (alpha measurement) run every 4 steps so that a few steps cover them.
"""
from __future__ import annotations

import warnings

import pytest
import torch
from torch._dynamo.backends.debugging import aot_eager
from torch._dynamo.utils import counters

from conftest import backend_missing, backend_param, device_for, needs, requires
from llr_kernels import LLRAdamW, LLRMuon
from llr_kernels.ops import custom_ops
from tiny_models import SpectralNet

CPU = torch.device("cpu")
BACKENDS = [backend_param("torch", CPU), backend_param("cpp", CPU)]
CPP = requires(backend_missing("cpp", CPU), "backend 'cpp'")
TRITON = requires(backend_missing("triton", device_for("triton")), "backend 'triton'")
needs_trace_autograd = needs(None if hasattr(torch._dynamo.config, "trace_autograd_ops")
                             else f"torch {torch.__version__} cannot trace backward() into a graph",
                             "torch._dynamo.config.trace_autograd_ops")


class GraphCounter:
    """A torch.compile backend: counts compiled graphs and calls of compiled graphs, runs them eagerly or
    through aot_eager."""

    def __init__(self, inner: str = "eager") -> None:
        self.inner, self.compiled, self.calls = inner, 0, 0

    def __call__(self, gm: torch.fx.GraphModule, example_inputs: list) -> object:
        self.compiled += 1
        fn = aot_eager(gm, example_inputs) if self.inner == "aot_eager" else gm.forward

        def run(*args):
            self.calls += 1
            return fn(*args)

        return run


def make(kind: str, backend: str, model: torch.nn.Module, lr=None, **kw):
    common = dict(interval=4, min_eigs=16, backend=backend, weight_decay=0.1, **kw)
    if kind == "adamw":
        return LLRAdamW(model, lr=2e-3 if lr is None else lr, s=3.0, **common)
    return LLRMuon(model, lr=2e-2 if lr is None else lr, adamw_lr=2e-3, s=2.0,
                   muon_backend="torch" if backend == "cpp" else None, **common)


def twins(kind: str, backend: str, seed: int, **kw):
    torch.manual_seed(seed)
    a, b = SpectralNet(seed=seed % 1000).to(device_for(backend)), SpectralNet(seed=seed % 1000).to(device_for(backend))
    b.load_state_dict(a.state_dict())
    return a, make(kind, backend, a, **kw), b, make(kind, backend, b, **kw)


def batch(i: int, seed: int) -> torch.Tensor:
    return torch.randint(0, SpectralNet.VOCAB, (2, 9), generator=torch.Generator().manual_seed(seed + i))


def backward(model, idx):
    model(idx.to(next(model.parameters()).device)).logsumexp(-1).mean().backward()


def assert_equal_models(a, b, step):
    for (name, x), y in zip(a.named_parameters(), b.parameters()):
        assert torch.equal(x, y), f"step {step}: {name} differs from the eager run by {float((x - y).abs().max()):.3e}"


def only_host_step_breaks():
    """Every graph break dynamo recorded happened at LLROptimizer._host_step (the documented point)."""
    reasons = list(counters["graph_break"])
    assert all("_host_step" in r for r in reasons), reasons


# ----- the ops --------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", BACKENDS)
def test_opcheck_adamw_step(backend, seed):
    """torch.library.opcheck: the schema's mutation annotations match what the op writes, the fake
    implementation matches the real one, and the op works under AOT dispatch (with and without clipping)."""
    g = torch.Generator().manual_seed(seed)
    shapes = [(4, 3), (5,), (2, 2, 3)]
    tensors = [[torch.randn(s, generator=g) for s in shapes] for _ in range(5)]
    params, grads, exp_avgs, exp_avg_sqs, maxs = tensors
    exp_avg_sqs, maxs = [v.abs() for v in exp_avg_sqs], [v.abs() + 1 for v in maxs]
    dtype = torch.float64 if backend == "torch" else torch.float32
    lrs = torch.rand(3, generator=g, dtype=dtype) * 1e-2
    wds = torch.rand(3, generator=g, dtype=dtype) * 0.1
    for amsgrad, clip in ((False, None), (True, 0.5)):
        args = (params, grads, exp_avgs, exp_avg_sqs, maxs if amsgrad else [], lrs, wds, torch.zeros(3), 0.9, 0.99,
                1e-8, amsgrad, False, None, None, clip, False, backend)
        torch.library.opcheck(custom_ops.adamw_step, args)


def test_opcheck_muon_ops_and_tick(seed):
    g = torch.Generator().manual_seed(seed)
    shapes = [(4, 3), (2, 6)]

    def new():
        return [torch.randn(s, generator=g) for s in shapes]

    torch.library.opcheck(custom_ops.muon_momentum, (new(), new(), new(), 0.95, True, "torch"))
    decays = torch.rand(2, generator=g, dtype=torch.float64)
    torch.library.opcheck(custom_ops.muon_apply, (new(), new(), decays, decays * 0.1, False, "torch"))
    torch.library.opcheck(custom_ops.llr_tick, (torch.zeros((), dtype=torch.int64), 0))


# ----- torch.compile(opt.step) ------------------------------------------------------------------------
@pytest.mark.parametrize("kind,backend,inner", [
    pytest.param("adamw", "torch", "eager", id="adamw-torch-eager"),
    pytest.param("adamw", "cpp", "aot_eager", marks=CPP, id="adamw-cpp-aot_eager"),
    pytest.param("muon", "torch", "aot_eager", id="muon-torch-aot_eager"),
    pytest.param("adamw", "triton", "eager", marks=TRITON, id="adamw-triton-eager"),
])
def test_compiled_step_breaks_only_at_llr_updates(kind, backend, inner, seed):
    """torch.compile(opt.step) with float LRs that a scheduler changes at every step and an LLR update every 4
    steps: equal to eager at every step; after the first update and the first change of LR (which makes dynamo
    treat the float LR as symbolic) nothing recompiles; every step runs one graph, and update steps leave it once
    before, at _host_step (where alphas are measured); no other break reason."""
    torch._dynamo.reset()
    counters.clear()
    model, opt, ref_model, ref = twins(kind, backend, seed)
    scheds = [torch.optim.lr_scheduler.LambdaLR(o, lambda t: 1.0 / (1 + t)) for o in (opt, ref)]
    cb = GraphCounter(inner)
    step = torch.compile(opt.step, backend=cb)
    calls, compiled = [], []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for i in range(10):
            idx = batch(i, seed)
            backward(model, idx)
            backward(ref_model, idx)
            before = cb.calls
            step()
            ref.step()
            calls.append(cb.calls - before)
            compiled.append(cb.compiled)
            for s in scheds:
                s.step()
            for o in (opt, ref):
                o.zero_grad()
            assert_equal_models(model, ref_model, i)
    # the compiled step records its calls (the scheduler's order check stays quiet, as with torch.optim.AdamW)
    assert not [w for w in caught if "before `optimizer.step()`" in str(w.message)]
    assert opt.llr.num_updates == ref.llr.num_updates == 3  # steps 0, 4, 8
    assert not torch.equal(opt.multipliers(), torch.ones_like(opt.multipliers()))  # the updates moved multipliers
    assert opt._mult_version == 3  # _host_step ran at the update steps only
    assert compiled[5] == compiled[-1], f"recompiled after warm-up: graphs compiled after each step {compiled}"
    assert calls == [1] * 10, f"graphs run per step {calls}"  # update steps: nothing before the break, one graph after
    only_host_step_breaks()


@needs_trace_autograd
@pytest.mark.parametrize("kind", ["adamw", "muon"])
def test_fullgraph_training_step_with_tensor_lrs(kind, seed):
    """One fullgraph graph for forward, backward and opt.step() (capturable=True: LRs are device tensors that the
    scheduler fills); steps with host work (host_work_due: LLR updates) run eagerly. Compiled once for 10 steps
    with a new LR at every step and new multipliers at steps 4 and 8."""
    torch._dynamo.reset()
    counters.clear()
    model, opt, ref_model, ref = twins(kind, "torch", seed, capturable=True)
    scheds = [torch.optim.lr_scheduler.LambdaLR(o, lambda t: 0.5 ** t) for o in (opt, ref)]
    cb = GraphCounter("aot_eager")

    def train(m, o, idx):
        m(idx).logsumexp(-1).mean().backward()
        o.step()
        for p in m.parameters():
            p.grad = None

    compiled_train = torch.compile(train, backend=cb, fullgraph=True)
    eager_steps, compiled = [], []
    with torch._dynamo.config.patch(trace_autograd_ops=True):
        for i in range(10):
            idx = batch(i, seed)
            if opt.host_work_due:
                eager_steps.append(i)
                train(model, opt, idx)
            else:
                compiled_train(model, opt, idx)
            train(ref_model, ref, idx)
            compiled.append(cb.compiled)
            for s in scheds:
                s.step()
            assert_equal_models(model, ref_model, i)
    assert eager_steps == [0, 4, 8]
    # one dynamo graph (the backend also receives the traced backward as a subgraph of it), compiled at step 1
    assert counters["stats"]["unique_graphs"] == 1 and compiled[1] == compiled[-1], compiled
    assert cb.calls == 7
    assert not counters["graph_break"]


def test_inductor_compiled_step_matches_eager(seed):
    """The one inductor test (it compiles C++): torch.compile(opt.step, fullgraph=True) after a scheduler was
    attached; the step ops stay in place under inductor's functionalization and reinplacing, and the LR
    arithmetic it fuses gives the eager result bit for bit while the scheduler changes the (tensor) LR."""
    torch._dynamo.reset()
    model, opt, ref_model, ref = twins("adamw", "torch", seed, capturable=True)
    scheds = [torch.optim.lr_scheduler.LambdaLR(o, lambda t: 0.5 ** t) for o in (opt, ref)]
    step = torch.compile(opt.step, backend="inductor", fullgraph=True)
    for i in range(3):
        idx = batch(i, seed)
        backward(model, idx)
        backward(ref_model, idx)
        (opt.step if opt.host_work_due else step)()
        ref.step()
        for s in scheds:
            s.step()
        for o in (opt, ref):
            o.zero_grad()
        assert_equal_models(model, ref_model, i)


@pytest.mark.parametrize("call_step_first", [True, False], ids=["step-then-scheduler", "scheduler-first"])
def test_schedulers_do_not_wrap_step_and_still_check_the_order(call_step_first, seed):
    """An LR scheduler wraps optimizer.step in a function of torch/optim/lr_scheduler.py, which dynamo never
    traces (a compiled step would always break there), unless step carries _wrapped_by_lr_sched; LLR
    optimizers' step does and records its calls itself, so torch's order warning keeps working."""
    import warnings

    model = SpectralNet(seed=seed % 1000)
    opt = make("adamw", "torch", model)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 0.9 ** t)
    assert "step" not in vars(opt) and opt.step.__func__ is type(opt).step  # not replaced by a wrapper
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if call_step_first:
            backward(model, batch(0, seed))
            opt.step()
        sched.step()
    order = [w for w in caught if "before `optimizer.step()`" in str(w.message)]
    assert len(order) == (0 if call_step_first else 1)
