"""Every vector variant of the C++ CPU AdamW step (baseline x86-64, AVX2, AVX-512: the ones this CPU allows)
against the float64 reference, on one and two threads (two threads split a tensor between them), and the same
bits on one and two threads.

csrc/adamw_cpu.cpp compiles its element loop once per instruction set and picks the best at run time; the
other tests only exercise that best one, so each variant is forced here in turn.
"""
from __future__ import annotations

import pytest
import torch

from adamw_cases import assert_matches
from conftest import backend_missing, require
from reference import adamw_step_f64

CPU = torch.device("cpu")
VARIANTS = ("baseline", "avx2", "avx512")
# (param, state) dtypes mixed in one call; sizes around vector widths (4/8/16) and the per-thread split
COMBOS = [(torch.float32, torch.float32), (torch.bfloat16, torch.float32), (torch.float16, torch.float32),
          (torch.float32, torch.bfloat16), (torch.bfloat16, torch.bfloat16), (torch.float64, torch.float64)]
SIZES = [0, 1, 3, 7, 8, 15, 16, 17, 31, 33, 63, 65, 100, 1023, 4097, 40001, 70001, 5, 99999]


def _extension():
    require(backend_missing("cpp", CPU), "backend 'cpp'")
    from llr_kernels.ops import extension as _ext

    return _ext.load_extension()


def _allowed(mod) -> list[str]:
    best = mod.adamw_cpu_isa()
    return list(VARIANTS[: VARIANTS.index(best) + 1])


@pytest.mark.parametrize("amsgrad,maximize,inv_scale,clip", [(False, False, None, None), (True, True, 0.5, 0.3)],
                         ids=["plain", "amsgrad-maximize-scaled-clip"])
def test_every_variant_matches_float64_on_one_and_two_threads(seed, amsgrad, maximize, inv_scale, clip):
    mod = _extension()
    gen = torch.Generator().manual_seed(seed)
    n = len(SIZES)
    base = {"p": [], "g": [], "m": [], "v": [], "x": []}
    for i, size in enumerate(SIZES):
        pdt, sdt = COMBOS[i % len(COMBOS)]
        base["p"].append(torch.randn(size, generator=gen).to(pdt))
        base["g"].append((torch.randn(size, generator=gen) * 0.1).to(pdt))
        base["m"].append((torch.randn(size, generator=gen) * 0.05).to(sdt))
        v = torch.rand(size, generator=gen) * 1e-2
        base["v"].append(v.to(sdt))
        base["x"].append((v * (1 + torch.rand(size, generator=gen))).to(sdt))
    lrs = torch.rand(n, generator=gen) * 1e-2 + 1e-4
    wds = torch.rand(n, generator=gen) * 0.2
    steps0 = torch.randint(0, 20, (n,), generator=gen).float()
    want = adamw_step_f64(base["p"], base["g"], base["m"], base["v"], base["x"] if amsgrad else None, lrs.tolist(),
                          wds.tolist(), steps0.tolist(), betas=(0.9, 0.999), eps=1e-8, amsgrad=amsgrad,
                          maximize=maximize, inv_scale=inv_scale, max_grad_norm=clip)
    keys = ("p", "m", "v", "x") if amsgrad else ("p", "m", "v")
    old_threads = torch.get_num_threads()
    try:
        for variant in _allowed(mod):
            results = {}
            for threads in (1, 2):
                torch.set_num_threads(threads)
                t = {k: [x.clone() for x in xs] for k, xs in base.items()}
                steps = steps0.clone()
                prev = mod.set_adamw_cpu_isa(variant)
                try:
                    norm = mod.adamw_step_cpu(t["p"], t["g"], t["m"], t["v"], t["x"] if amsgrad else [], lrs, wds,
                                              steps, 0.9, 0.999, 1e-8, amsgrad, maximize,
                                              None if inv_scale is None else torch.tensor([inv_scale]), None, clip)
                finally:
                    mod.set_adamw_cpu_isa("")
                assert prev == _allowed(mod)[-1]
                assert torch.equal(steps, steps0 + 1), variant
                for key, ref in zip(keys, want[:4]):
                    assert_matches(t[key], ref, base[key], f"{variant}, {threads} threads, {key}")
                if clip is None:
                    assert norm is None
                else:
                    assert float(norm) == pytest.approx(want[5], rel=1e-5), variant
                results[threads] = t
            # every element is computed the same way wherever the thread ranges split the tensors
            for key in keys:
                for a, b in zip(results[1][key], results[2][key]):
                    assert torch.equal(a, b), f"{variant}: {key} differs between 1 and 2 threads"
    finally:
        torch.set_num_threads(old_threads)


def test_forcing_an_unknown_or_unsupported_variant_raises():
    mod = _extension()
    with pytest.raises(RuntimeError, match="unknown CPU variant 'sse9'"):
        mod.set_adamw_cpu_isa("sse9")
    allowed = _allowed(mod)
    if len(allowed) < len(VARIANTS):
        with pytest.raises(RuntimeError, match="does not allow"):
            mod.set_adamw_cpu_isa(VARIANTS[len(allowed)])
    assert mod.adamw_cpu_isa() == allowed[-1]
