"""Every adamw_step backend (torch, triton, cpp) against an independent float64 reference.

Ragged tensor sets: dozens of tensors of 0 to ~70k elements (several chunks), mixed param dtypes
(fp32 / bf16 / fp16) and state dtypes (fp32 / bf16) in one call, per-tensor LRs, weight decays and step
counters; AMSGrad, maximize, grad-scaler inv_scale / found_inf, fused global-norm clipping. On CPU, Triton
runs through the interpreter (tests/conftest.py sets TRITON_INTERPRET=1).
"""
from __future__ import annotations

import math

import pytest
import torch

from conftest import backend_missing, backend_param, needs
from llr_kernels.ops import dispatch
from llr_kernels.ops.adamw import work_table as _work_table
from adamw_cases import COMBOS, DEV, SIZES, Case, _rel, assert_matches, reference

pytestmark = pytest.mark.usefixtures("nan_fill")

# (param dtype, state dtype) mixes present in one call

BACKENDS = [backend_param(b, DEV) for b in ("torch", "triton", "cpp")]


def op_for(backend: str):
    chosen, fn = dispatch.get_op("adamw_step", backend, DEV)
    assert chosen == backend
    return fn


def check_step(backend: str, seed: int, amsgrad: bool, maximize: bool, inv_scale, max_grad_norm,
               combos=COMBOS, sizes=SIZES) -> None:
    case = Case(seed, amsgrad, combos, sizes).clone()
    before = case.clone(torch.device("cpu"))
    want = reference(case, maximize=maximize, inv_scale=inv_scale, max_grad_norm=max_grad_norm)
    scale_t = None if inv_scale is None else torch.tensor([inv_scale], device=DEV)
    norm = case.run(op_for(backend), maximize=maximize, inv_scale=scale_t, max_grad_norm=max_grad_norm)
    assert_matches(case.params, want[0], before.params, "param")
    assert_matches(case.m, want[1], before.m, "exp_avg")
    assert_matches(case.v, want[2], before.v, "exp_avg_sq")
    if amsgrad:
        assert_matches(case.vmax, want[3], before.vmax, "max_exp_avg_sq")
    assert torch.equal(case.steps.cpu().double(), want[4])
    if max_grad_norm is None:
        assert norm is None
    else:
        assert norm is not None and norm.device.type == DEV.type
        assert float(norm) == pytest.approx(want[5], rel=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "amsgrad,maximize,inv_scale,max_grad_norm",
    [(False, False, None, None), (True, False, None, None), (False, True, 0.25, None), (False, False, None, 1.0),
     (True, True, 0.5, 0.3), (False, False, 2.0, 1e6)],
    ids=["plain", "amsgrad", "maximize-scaled", "clip", "amsgrad-max-scaled-clip", "scaled-noclip"],
)
def test_step_matches_float64_reference(backend, amsgrad, maximize, inv_scale, max_grad_norm, seed):
    check_step(backend, seed, amsgrad, maximize, inv_scale, max_grad_norm)


@pytest.mark.parametrize("backend", BACKENDS)
def test_float64_params(backend):
    """fp64 params with fp64 state (Triton and the CUDA kernel of the extension hand them to the torch path; its CPU
    kernel has a double variant)."""
    check_step(backend, 2, True, False, 0.5, 1.0, combos=[(torch.float64, torch.float64), (torch.float32, torch.float32)],
               sizes=[1, 100, 5000, 40000])


@pytest.mark.parametrize("backend", BACKENDS)
def test_found_inf_changes_nothing(backend):
    fn = op_for(backend)
    case = Case(3, amsgrad=True).clone()
    before = [t.clone() for t in case.tensors()]
    norm = case.run(fn, inv_scale=torch.tensor([0.5], device=DEV), found_inf=torch.tensor([1.0], device=DEV),
                    max_grad_norm=1.0)
    for x, y in zip(case.tensors(), before):
        assert torch.equal(x, y)
    assert norm is not None and math.isfinite(float(norm))  # the norm is still reported
    # found_inf == 0 is an ordinary step
    case.run(fn, found_inf=torch.tensor([0.0], device=DEV))
    assert torch.equal(case.steps, before[-1] + 1)


@pytest.mark.parametrize("backend", BACKENDS)
def test_multi_step_counters_and_lr_changes(backend):
    """Several steps with the LR buffer edited in place in between: matches the torch reference step by step."""
    fn, ref = op_for(backend), op_for("torch")
    case = Case(4, amsgrad=False, sizes=SIZES[::3]).clone()
    other = case.clone()
    start = case.steps.clone()
    for k in range(3):
        case.run(fn)
        other.run(ref)
        case.lrs.mul_(0.5).add_(1e-3 * k)
        other.lrs.mul_(0.5).add_(1e-3 * k)
        case.lrs[0] = 0.0
        other.lrs[0] = 0.0
    assert torch.equal(case.steps, start + 3)
    for x, y in zip(case.params, other.params):
        torch.testing.assert_close(x.float(), y.float(), rtol=_rel(x.dtype) * 4, atol=1e-6)


@needs(backend_missing("triton", DEV), "backend 'triton'")
def test_triton_lr_change_reuses_work_table():
    """Changing LRs / weight decays in place rebuilds nothing; new grad tensors only re-upload addresses."""
    from llr_kernels.ops.adamw import work_table as adamw_triton  # the Triton and CUDA steps share its tables

    fn = op_for("triton")
    case = Case(5, amsgrad=False, sizes=[1, 3000, 40000, 7]).clone()
    case.run(fn)
    builds, uploads = adamw_triton.build_count(), adamw_triton.meta_upload_count()
    p_before = [p.clone() for p in case.params]
    case.lrs.zero_()
    case.wds.zero_()
    case.run(fn)
    assert adamw_triton.build_count() == builds and adamw_triton.meta_upload_count() == uploads
    for p, q in zip(case.params, p_before):  # lr = 0: nothing moves, so the new buffer values were used
        assert torch.equal(p, q)
    case.lrs.fill_(1e-2)
    case.run(fn)
    assert adamw_triton.build_count() == builds
    assert any(not torch.equal(p, q) for p, q in zip(case.params, p_before))
    case.grads = [g.clone() for g in case.grads]  # fresh grad storage, same sizes
    case.run(fn)
    assert adamw_triton.build_count() == builds
    assert adamw_triton.meta_upload_count() == uploads + 1
    # a different parameter set does build a new table
    Case(6, amsgrad=False, sizes=[5, 6]).clone().run(fn)
    assert adamw_triton.build_count() == builds + 1


@pytest.mark.parametrize("backend", BACKENDS)
def test_bad_arguments(backend):
    fn = op_for(backend)
    case = Case(7, amsgrad=False, sizes=[4, 5]).clone()
    with pytest.raises(ValueError, match="must have one entry per tensor"):
        fn(case.params, case.grads[:1], case.m, case.v, None, case.lrs, case.wds, case.steps, beta1=0.9,
           beta2=0.999, eps=1e-8)
    with pytest.raises(ValueError, match="amsgrad=True needs max_exp_avg_sqs"):
        fn(case.params, case.grads, case.m, case.v, None, case.lrs, case.wds, case.steps, beta1=0.9, beta2=0.999,
           eps=1e-8, amsgrad=True)


def test_work_table_layout():
    """One row per (tensor, chunk); empty tensors keep one row so their step counter still moves."""
    ps = [torch.zeros(n) for n in (0, 1, 10, 25)]
    plan = _work_table.get_plan(ps, ps, ps, ps, None, False, chunk=10)
    (b,) = plan.buckets
    assert b.work.tolist() == [[0, 0], [1, 0], [2, 0], [3, 0], [3, 10], [3, 20]]
    assert b.meta[:, 5].tolist() == [0, 1, 10, 25] and b.meta[:, 7].tolist() == [1, 1, 1, 3]
