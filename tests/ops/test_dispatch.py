"""backend="auto" picks what the dispatch table promises, and an explicit backend that cannot run says why.

The promise (llr_kernels/ops/dispatch.py): on CPU the C++ op where one exists (measured faster than the pure-torch
path, benchmarks/), else torch, and never the Triton interpreter; on CUDA Triton, then the CUDA extension, then
torch. Resolution only inspects what is installed and built, so the CUDA rules are checked without a GPU.
"""
from __future__ import annotations

import pytest
import torch

from conftest import backend_missing, require, triton_missing
from llr_kernels.ops import dispatch
from llr_kernels.ops import extension as _ext

CPU = torch.device("cpu")
CUDA = torch.device("cuda")


def test_auto_on_cpu_is_cpp_where_implemented_else_torch(monkeypatch):
    require(backend_missing("cpp", CPU), "backend 'cpp'")
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # Triton could run (interpreted) and must still not be chosen
    for op in dispatch.ops():
        want = "cpp" if dispatch.has_impl(op, "cpp") else "torch"
        chosen, fn = dispatch.get_op(op, "auto", CPU)
        assert chosen == want, op
        assert fn is dispatch.get_op(op, want, CPU)[1], op
    assert dispatch.resolve_backend("adamw_step", "auto", CPU) == "cpp"  # the default CPU optimizer step


def test_auto_on_cuda_prefers_triton_then_cpp_then_torch():
    require(triton_missing(), "triton")
    cpp_on_cuda = dispatch.unavailable_reason("cpp", CUDA) is None
    for op in dispatch.ops():
        if dispatch.has_impl(op, "triton"):
            want = "triton"
        elif dispatch.has_impl(op, "cpp") and cpp_on_cuda:
            want = "cpp"
        else:
            want = "torch"
        assert dispatch.resolve_backend(op, "auto", CUDA) == want, op


@pytest.fixture
def no_extension(monkeypatch):
    """The C++ extension as if it had failed to build (no real build is attempted)."""
    monkeypatch.setattr(_ext, "_tried", True)
    monkeypatch.setattr(_ext, "_module", None)
    monkeypatch.setattr(_ext, "_warned", True)
    monkeypatch.setattr(_ext, "_error", "building it failed (simulated by the test)")


def test_auto_falls_back_to_torch_without_the_extension(no_extension):
    assert dispatch.resolve_backend("adamw_step", "auto", CPU) == "torch"
    assert dispatch.resolve_backend("tridiag_eig", "auto", CPU) == "torch"


def test_explicit_unavailable_backend_raises_with_the_reason(no_extension, monkeypatch):
    with pytest.raises(ValueError, match=r"backend='cpp' cannot run 'adamw_step'.*simulated by the test.*'auto' or 'torch'"):
        dispatch.get_op("adamw_step", "cpp", CPU)
    if dispatch.triton_importable():
        monkeypatch.setenv("TRITON_INTERPRET", "0")
        with pytest.raises(ValueError, match=r"backend='triton' cannot run 'adamw_step'.*need a CUDA device.*TRITON_INTERPRET=1"):
            dispatch.get_op("adamw_step", "triton", CPU)


def test_unknown_backend_op_or_missing_implementation_raise():
    with pytest.raises(ValueError, match=r"backend must be one of .*got 'cuda'"):
        dispatch.get_op("adamw_step", "cuda", CPU)
    with pytest.raises(KeyError, match=r"unknown op 'adam_step'"):
        dispatch.get_op("adam_step", "auto", CPU)
    with pytest.raises(ValueError, match=r"op 'gram' has no 'cpp' implementation; available: \['torch', 'triton'\]"):
        dispatch.get_op("gram", "cpp", CPU)
