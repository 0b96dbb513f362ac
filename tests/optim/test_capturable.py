"""capturable=True: a step makes no host sync and moves no host data to the device, so it can be captured in a
CUDA graph and replayed while a scheduler changes the LRs (benchmarks/cuda_graph_check.py does that on a GPU).

On CPU the host is the device, so the property is checked by construction. Every torch call made during step()
is recorded (a TorchFunctionMode; the llr_kernels ops' Python implementations run inside the mode, so their
calls are seen too), and none may
  (a) read a tensor's value on the host (item, tolist, float(), bool(), ...: a sync on a GPU),
  (b) make a tensor from host data (torch.tensor, as_tensor, ...: a host-to-device copy on a GPU),
  (c) carry a learning rate as a Python number (baked into a captured graph: a replay would ignore the new LR;
      the LRs are chosen distinct from every other constant of the step), or
  (d) read the LLR policy's host tensors (multipliers reach the device only on steps with host work).
The results equal the default mode's, with a scheduler changing the LRs between steps (tensor LRs: fill_).
The C++ CPU kernel reads its buffers directly (on CPU there is nothing to copy); Triton's interpreter reads
tensors on the host by design, so the Triton path is checked on GPU only.
"""
from __future__ import annotations

import numbers

import pytest
import torch
from torch.overrides import TorchFunctionMode

from conftest import backend_missing, requires
from llr_kernels import LLRAdamW, LLRMuon
from llr_kernels.ops import custom_ops
from llr_kernels.ops.adamw.naive import adamw_step_torch
from adamw_cases import Case, assert_matches, reference
from tiny_models import SpectralNet

CPU = torch.device("cpu")
CPP = requires(backend_missing("cpp", CPU), "backend 'cpp'")
HOST_READS = {"item", "tolist", "__float__", "__int__", "__bool__", "__index__", "__complex__", "numpy", "cpu"}
HOST_DATA = {"tensor", "as_tensor", "asarray", "from_numpy", "frombuffer", "scalar_tensor"}
LR, ADAMW_LR = 1.234567e-3, 2.345678e-3  # distinct from every constant of the step


class CallLog(TorchFunctionMode):
    """Records (name, args, kwargs) of every torch call; runs the llr_kernels ops' Python bodies inside itself."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[str, tuple, dict]] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        self.calls.append((getattr(func, "__name__", str(func)), args, kwargs))
        impl = custom_ops.IMPLS.get(func)
        if impl is not None:
            with self:
                return impl(*args, **kwargs)
        return func(*args, **kwargs)


def _leaves(x):
    if isinstance(x, (list, tuple)):
        for y in x:
            yield from _leaves(y)
    elif isinstance(x, dict):
        for y in x.values():
            yield from _leaves(y)
    else:
        yield x


def make(kind: str, backend: str, capturable: bool):
    torch.manual_seed(0)
    model = SpectralNet()
    if kind == "adamw":
        opt = LLRAdamW(model, lr=LR, weight_decay=0.1, s=3.0, interval=100, min_eigs=16, backend=backend,
                       max_grad_norm=1.0, capturable=capturable)
    else:
        opt = LLRMuon(model, lr=LR, adamw_lr=ADAMW_LR, weight_decay=0.1, s=2.0, interval=100, min_eigs=16,
                      backend=backend, muon_backend="torch", max_grad_norm=1.0, capturable=capturable,
                      ns_dtype=torch.float64)  # bf16 Newton-Schulz would amplify ulp differences to bf16 roundings
    return model, opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 1.0 / (1 + t))


def backward(model, i, seed):
    idx = torch.randint(0, SpectralNet.VOCAB, (2, 9), generator=torch.Generator().manual_seed(seed + i))
    model(idx).logsumexp(-1).mean().backward()


@pytest.mark.parametrize("kind,backend", [
    pytest.param("adamw", "torch", id="adamw-torch"),
    pytest.param("adamw", "cpp", marks=CPP, id="adamw-cpp"),
    pytest.param("muon", "torch", id="muon-torch"),
    pytest.param("muon", "cpp", marks=CPP, id="muon-cpp"),
])
def test_step_reads_nothing_from_the_host(kind, backend, seed):
    model, opt, sched = make(kind, backend, capturable=True)
    ref_model, ref, ref_sched = make(kind, backend, capturable=False)
    assert all(isinstance(g["lr"], torch.Tensor) and g["lr"].dtype == torch.float64 for g in opt.param_groups)
    for i in range(4):
        for m, o in ((model, opt), (ref_model, ref)):
            o.zero_grad()
            backward(m, i, seed)
        if i < 2:  # step 0 measures alphas and builds the plans: host work, not captured
            opt.step()
        else:
            lrs = {float(g["lr"]) for g in opt.param_groups}
            lrs |= {lr * float(m) for lr in lrs for m in opt.multipliers()}
            policy = [v for v in vars(opt.llr).values() if isinstance(v, torch.Tensor)]  # alive: ids stay unique
            with CallLog() as log:
                opt.step()
            names = [name for name, _, _ in log.calls]
            assert "adamw_step" in " ".join(names), "the log did not see the step op"  # the check can fail
            assert not HOST_READS & set(names), [n for n in names if n in HOST_READS]
            assert not HOST_DATA & set(names), [n for n in names if n in HOST_DATA]
            for name, args, kwargs in log.calls:
                for leaf in _leaves((args, kwargs)):
                    if isinstance(leaf, numbers.Real) and not isinstance(leaf, bool) and leaf != 0:
                        assert not any(abs(leaf - lr) <= 1e-9 * lr for lr in lrs), f"{name} got an LR as a number: {leaf}"
                    assert not any(leaf is t for t in policy), f"{name} read a host tensor of the LLR policy"
        ref.step()
        sched.step()
        ref_sched.step()
    assert opt.llr.num_updates == 1 and not torch.equal(opt.multipliers(), torch.ones_like(opt.multipliers()))
    assert float(opt.param_groups[0]["lr"]) == pytest.approx(LR / 5, rel=1e-12)  # the scheduler reached it
    # The torch backend's capturable math (scalars as fp32/fp64 tensors, as torch.optim.AdamW(capturable=True))
    # rounds differently from the host-scalar math by an ulp of p, which 3 steps of training amplify to ~1e-3
    # of the LR; a step with the wrong LR is off by ~LR / 6 (the schedule moves the LR by that much per step) in
    # every element. Single elements can differ more: where a gradient is near zero Adam's m / sqrt(v) magnifies
    # the ulp (seen: 0.06 LR in 1 of 3072 embedding entries, LLR_TEST_SEED=118785), so the bound is on the share of
    # elements beyond LR / 100 and on the mean difference, both of which a wrong LR exceeds by far.
    for (name, a), b in zip(model.named_parameters(), ref_model.parameters()):
        diff = (a - b).abs()
        assert (diff > LR * 1e-2).double().mean() <= 1e-3, (name, seed, float(diff.max()))
        assert float(diff.mean()) <= LR * 1e-3, (name, seed, float(diff.mean()))


def test_capture_of_a_step_with_host_work_raises(monkeypatch):
    """The first step (alpha measurement, plans) cannot be captured: a clear error instead of a failed capture."""
    _, opt, _ = make("adamw", "torch", capturable=True)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: True)
    with pytest.raises(RuntimeError, match=r"has host work .* cannot be captured in a CUDA graph: run it eagerly"):
        opt.step()


def test_after_replay_keeps_the_llr_schedule(seed):
    """Replays run no Python: after_replay() advances llr_step and says when the next step must run eagerly
    (the first, the LLR updates every `interval` steps, and the other steps of each multiplier ramp)."""
    torch.manual_seed(seed)
    model = SpectralNet()
    opt = LLRAdamW(model, lr=1e-3, interval=5, ramp_steps=2, min_eigs=16, capturable=True)
    eager = []
    for t in range(12):
        if opt.host_work_due:
            eager.append(t)
            opt.zero_grad()
            backward(model, t, seed)
            opt.step()
        else:
            opt.after_replay()  # a replay of the captured step would run here
    assert eager == [0, 1, 5, 6, 10, 11]
    assert opt.llr_step == 12 and opt.llr.num_updates == 3


@pytest.mark.parametrize(
    "amsgrad,maximize,inv_scale,max_grad_norm",
    [(False, False, None, None), (True, True, 0.5, 0.3), (False, False, 2.0, 1.0)],
    ids=["plain", "amsgrad-max-scaled-clip", "scaled-clip"],
)
def test_torch_capturable_math_matches_float64_reference(amsgrad, maximize, inv_scale, max_grad_norm):
    """The torch backend's capturable path (every scalar a tensor, as torch.optim.AdamW(capturable=True)) on
    the ragged mixed-dtype tensor sets of test_adamw_kernels.py, against the float64 reference. Seed 1 as
    there: with other seeds assert_matches' fp16 tolerance can fall below half an ulp of an fp16 subnormal (for
    every backend; e.g. seed 5)."""
    case = Case(1, amsgrad).clone(CPU)
    before = case.clone(CPU)
    want = reference(case, maximize=maximize, inv_scale=inv_scale, max_grad_norm=max_grad_norm)
    scale = None if inv_scale is None else torch.tensor([inv_scale])
    norm = case.run(adamw_step_torch, maximize=maximize, inv_scale=scale, max_grad_norm=max_grad_norm, capturable=True)
    for got, ref, was, what in zip((case.params, case.m, case.v) + ((case.vmax,) if amsgrad else ()), want,
                                   (before.params, before.m, before.v, before.vmax), ("param", "exp_avg", "exp_avg_sq", "vmax")):
        assert_matches(got, ref, was, what)
    assert torch.equal(case.steps.double(), want[4])
    if max_grad_norm is not None:
        assert float(norm) == pytest.approx(want[5], rel=1e-5)


def test_torch_capturable_found_inf_changes_nothing(seed):
    case = Case(seed % 1000, amsgrad=True).clone(CPU)  # exact equalities only: any seed
    before = [t.clone() for t in case.tensors()]
    case.run(adamw_step_torch, inv_scale=torch.tensor([0.5]), found_inf=torch.tensor([1.0]), max_grad_norm=1.0,
             capturable=True)
    for x, y in zip(case.tensors(), before):
        assert torch.equal(x, y)
    case.run(adamw_step_torch, found_inf=torch.tensor([0.0]), capturable=True)
    assert torch.equal(case.steps, before[-1] + 1) and not torch.equal(case.params[5], before[5])
