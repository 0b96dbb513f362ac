"""The compile check's bookkeeping (scripts/compile_check.py), without compiling anything.

* every @triton.jit function of the package is a launched kernel with variants or a declared helper, and
  the check reports (so fails on) an uncovered kernel, an uncalled helper and a variant whose arguments
  do not match its kernel;
* the wrappers launch only variants their modules list: every launch of small calls (through the
  interpreter on CPU, compiled on GPU) is recorded and looked up in ``launch_variants``;
* the nvcc command is torch's, and the ptxas log parser reads real ptxas output.
The full compile (about 170 Triton compiles and two nvcc runs) is `python scripts/compile_check.py`.
"""
from __future__ import annotations

import importlib.util
import os
import sys

import pytest
import torch

from conftest import needs, requires, triton_missing
from llr_kernels.ops.dispatch import triton_interpreted

pytestmark = requires(triton_missing(), "triton")
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEV = torch.device("cuda" if torch.cuda.is_available() else "cpu")
can_launch = needs(None if torch.cuda.is_available() or triton_interpreted() else "no CUDA and TRITON_INTERPRET is not 1",
                   "a Triton launch")


@pytest.fixture(scope="module")
def cc():
    spec = importlib.util.spec_from_file_location("compile_check", os.path.join(ROOT, "scripts", "compile_check.py"))
    mod = importlib.util.module_from_spec(spec)
    sys.modules["compile_check"] = mod  # its dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def inv(cc):
    return cc.inventory(interpreted=triton_interpreted())


def test_every_jit_function_is_a_kernel_with_variants_or_a_called_helper(cc, inv):
    assert cc.coverage_problems(inv) == []
    kernels = {cc._qualname(v.kernel) for _, v in inv.variants}
    assert kernels | set(inv.helpers) == set(inv.jit)
    assert not kernels & set(inv.helpers)
    for _, v in inv.variants:
        assert v.num_warps in (1, 2, 4, 8, 16, 32) and v.signature


def test_coverage_problems_catch_each_kind_of_gap(cc, inv):
    import dataclasses

    import triton
    import triton.language as tl

    @triton.jit
    def _orphan_kernel(x_ptr, N: tl.constexpr):
        tl.store(x_ptr + tl.arange(0, N), 1.0)

    @triton.jit
    def _unused_helper(x):
        return x + 1

    jit = dict(inv.jit)
    jit[cc._qualname(_orphan_kernel)] = _orphan_kernel
    jit[cc._qualname(_unused_helper)] = _unused_helper
    helpers = dict(inv.helpers)
    helpers[cc._qualname(_unused_helper)] = _unused_helper
    mod, v0 = inv.variants[0]
    bad_args = dataclasses.replace(v0, constexprs={k: x for k, x in list(v0.constexprs.items())[1:]})
    renamed = dataclasses.replace(v0, signature={**v0.signature, "not_an_argument": "i32"})
    problems = cc.coverage_problems(cc.Inventory(jit, inv.variants + [(mod, bad_args), (mod, renamed)], helpers))
    text = "\n".join(problems)
    assert len(problems) == 4, text
    assert "_orphan_kernel: @triton.jit function with no launch variant" in text
    assert "_unused_helper: listed in JIT_HELPERS but no launched kernel calls it" in text
    assert text.count(f"{v0.name} ({mod}): variant arguments") == 2


def _triton_type(x) -> str:
    if isinstance(x, torch.Tensor):
        names = {torch.float32: "fp32", torch.float64: "fp64", torch.float16: "fp16", torch.bfloat16: "bf16",
                 torch.int64: "i64", torch.int32: "i32"}
        return "*" + names[x.dtype]
    if isinstance(x, bool):
        return "u1"
    if isinstance(x, int):
        return "i32" if -(2**31) <= x < 2**31 else "i64"
    assert isinstance(x, float), type(x)
    return "fp32"


@can_launch
def test_wrappers_launch_only_listed_variants(inv, monkeypatch):
    from llr_kernels.ops.adamw.triton import adamw_step_triton
    from llr_kernels.ops.muon.triton import muon_apply_triton, muon_momentum_triton
    from llr_kernels.ops.gram.triton import gram_batch_triton
    from llr_kernels.ops.hill.triton import hill_eigs_triton, hill_nodes_triton

    launches = []
    for kernel in {id(v.kernel): v.kernel for _, v in inv.variants}.values():
        def record(*args, grid, warmup, _k=kernel, _run=kernel.run, **kwargs):
            bound = dict(zip(_k.arg_names, args))
            bound.update({k: x for k, x in kwargs.items() if k in _k.arg_names})
            launches.append((_k, bound, kwargs.get("num_warps", 4)))
            return _run(*args, grid=grid, warmup=warmup, **kwargs)

        monkeypatch.setattr(kernel, "run", record)

    g = torch.Generator().manual_seed(0)
    # AdamW: fp32 / bf16 / fp16 params, fp32 and bf16 state, every optional input, an unaligned view
    for amsgrad, clip in ((False, None), (True, 1.0)):
        base = torch.randn(40, generator=g)
        params = [base.to(DEV)[1:38],  # not 16-byte aligned
                  torch.randn(33, generator=g).bfloat16().to(DEV),
                  torch.randn(5, generator=g).half().to(DEV)]
        grads = [p.clone() * 0.1 for p in params]
        states = [torch.float32, torch.bfloat16, torch.float32]
        m = [torch.zeros(p.numel(), dtype=s, device=DEV) for p, s in zip(params, states)]
        v = [torch.rand(p.numel(), generator=g).to(s).to(DEV) for p, s in zip(params, states)]
        vmax = [x.clone() for x in v] if amsgrad else None
        n = len(params)
        adamw_step_triton(params, grads, m, v, vmax, torch.full((n,), 1e-3, device=DEV), torch.full((n,), 0.1, device=DEV),
                          torch.zeros(n, device=DEV), beta1=0.9, beta2=0.999, eps=1e-8, amsgrad=amsgrad, maximize=True,
                          inv_scale=torch.ones(1, device=DEV), found_inf=torch.zeros(1, device=DEV),
                          max_grad_norm=clip)
    # Muon: fp32 / bf16 grads and params, fp32 buffers, bf16 updates
    gs = [torch.randn(6, 5, generator=g).to(DEV), torch.randn(4, 4, generator=g).bfloat16().to(DEV)]
    bufs = [torch.zeros(x.shape, device=DEV) for x in gs]
    ups = [torch.empty(x.shape, dtype=torch.bfloat16, device=DEV) for x in gs]
    for nesterov in (True, False):
        muon_momentum_triton(gs, bufs, ups, momentum=0.95, nesterov=nesterov)
    muon_apply_triton([x.clone() for x in gs], ups, torch.ones(2), torch.full((2,), 1e-2))
    # Gram: every dtype, default tiles and the small ones, both precisions
    mats = [torch.randn(20, 30, generator=g).to(dt).to(DEV) for dt in (torch.float32, torch.bfloat16, torch.float16)]
    gram_batch_triton(mats)
    gram_batch_triton(mats[:1], block=32, block_k=16, precision="tf32")
    # Hill reductions: fp32 and fp64 eigenvalues; Gauss nodes
    e = torch.sort(torch.rand(2, 60, generator=g) + 0.1, dim=1).values
    hill_eigs_triton(e.to(DEV), 29, 30)
    hill_eigs_triton(e.double().to(DEV), 29, 30)
    nodes = torch.sort(torch.rand(2, 4, 6, generator=g, dtype=torch.float64) + 0.1, dim=-1).values.to(DEV)
    weights = torch.full((2, 4, 6), 1 / 6, dtype=torch.float64, device=DEV)
    hill_nodes_triton(nodes, weights, torch.full((2,), 60.0, dtype=torch.float64, device=DEV),
                      torch.full((2,), 0.5, dtype=torch.float64, device=DEV),
                      torch.full((2,), 1e-9, dtype=torch.float64, device=DEV), groups=2, iters=8)

    kernels_seen = {id(k) for k, _, _ in launches}
    assert kernels_seen == {id(v.kernel) for _, v in inv.variants}  # every kernel was launched
    for kernel, bound, warps in launches:
        candidates = [v for _, v in inv.variants if v.kernel is kernel]
        consts = {k: bound[k] for k in candidates[0].constexprs}
        types = {k: _triton_type(bound[k]) for k in candidates[0].signature}
        match = [v for v in candidates if v.constexprs == consts and v.num_warps == warps and v.signature == types]
        assert match, f"{candidates[0].name} launched with {consts}, {types}, num_warps={warps}: not in launch_variants"


def test_parse_ptxas_log(cc):
    log = """ptxas info    : Compiling entry function '_hill_nodes_kernel' for 'sm_90a'
ptxas info    : Function properties for _hill_nodes_kernel
    1024 bytes stack frame, 932 bytes spill stores, 1012 bytes spill loads
ptxas info    : Used 255 registers, used 1 barriers
"""
    assert cc.parse_ptxas_log(log) == {"regs": 255, "spill_store": 932, "spill_load": 1012, "stack": 1024}
    assert cc.parse_ptxas_log("ptxas fatal   : Unresolved extern function") is None


def test_nvcc_command_is_torchs(cc, tmp_path):
    import torch.utils.cpp_extension as ce

    pre, post = cc.nvcc_command_template("/opt/cuda-test", 90, str(tmp_path))
    assert "-gencode=arch=compute_90,code=sm_90" in pre
    for flag in ce.COMMON_NVCC_FLAGS + ["-DLLR_WITH_CUDA", "-O3", "-DTORCH_API_INCLUDE_EXTENSION_H"]:
        assert flag in pre, flag
    assert any(f.startswith("-std=c++") for f in pre + post)
    assert "/opt/cuda-test/include" in pre  # -isystem <CUDA_HOME>/include, as torch passes it
    assert ce.CUDA_HOME != "/opt/cuda-test"  # torch's module state is restored
    inc = cc.cmake_macros_dir(str(tmp_path))
    if inc:  # CPU wheels lack the generated header: the check provides it
        header = os.path.join(inc[0][2:], "c10", "cuda", "impl", "cuda_cmake_macros.h")
        assert open(header).read().splitlines() == ["#pragma once", "#define C10_CUDA_BUILD_SHARED_LIBS"]


def test_no_nvcc_skips_and_never_fails(cc, monkeypatch, tmp_path, capsys):
    import argparse

    monkeypatch.setattr(cc, "find_cuda_home", lambda: None)
    jobs = cc._start_nvcc(argparse.Namespace(skip_nvcc=False, no_cache=False), str(tmp_path), str(tmp_path))
    assert jobs == [] and cc._finish_nvcc(jobs, str(tmp_path)) == []
    assert "nvcc: not found" in capsys.readouterr().out
