"""LAMB and LARS with bf16 / fp16 parameters against float64 references of the papers' updates.

The optimizers keep their state in the parameter's dtype (torch.optim's format) and take every norm in float32
(module docstring of llr_kernels.optim.trust_ratio). Each step here is checked from the state ours holds before
it (teacher forcing: the reference starts every step from ours' stored weights, moments and gradients, read
exactly in float64), so storage rounding never accumulates into the comparison:

* the trust ratio against float64 norms of those stored values: LARS's needs only ||w|| and ||g|| (exact up to
  float32 accumulation, 1e-6). LAMB's reference forms u in float64 from the moments as stored (rounded to the
  parameter's dtype: where (1 - beta2) g^2 underflows fp16, u is m / eps', in ours and in the reference alike);
  ours forms u in the parameter's dtype, whose roundings move ||u|| by up to 1.3e-3 (measured, bf16), so the
  general test bounds LAMB's ratio at 3e-3 and a sign update (u = +-1 exactly) checks its norms at 1e-6;
* the new weights within 1 ulp of the dtype plus 8 units of the dtype's eps x the step (the update's own
  roundings), the new moments / velocity within a few ulps of their largest term;
* fp16 tensors whose norm exceeds fp16's range (65504): the ratios stay finite and exact (norms in float32).
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from llr_kernels.optim.trust_ratio import LAMB, LARS

SHAPES = [(48, 64), (40, 40), (16, 16, 3), (64,)]  # the 1-D one is excluded from the trust ratio (r = 1)
STEPS = 6
LAMB_KW = dict(lr=1e-2, betas=(0.9, 0.99), eps=1e-4, weight_decay=0.01)
LARS_KW = dict(lr=0.5, momentum=0.9, weight_decay=0.01, trust_coefficient=0.02)
LAMB_RATIO_RTOL = 3e-3


def ulp(x: np.ndarray, dtype: torch.dtype) -> np.ndarray:
    """Spacing of ``dtype`` at |x| (its subnormal spacing below the smallest normal)."""
    fi = torch.finfo(dtype)
    mag = np.maximum(np.abs(x), fi.tiny)
    return fi.eps * np.exp2(np.floor(np.log2(mag)))


def stored(x: np.ndarray, dtype: torch.dtype | None) -> np.ndarray:
    """x as the optimizer stores it: rounded to ``dtype`` (None: kept in float64)."""
    return x if dtype is None else torch.from_numpy(x).to(dtype).to(torch.float64).numpy()


def lamb_ref(w, m, v, g, t, lr, betas, eps, wd, clamp, trusted, state_dtype=None):
    """LAMB (You et al. 2019, Algorithm 2) one step, float64, with the moments stored in ``state_dtype`` (the
    parameter's: torch.optim's format) before u is formed from them: (w', m', v', r), m' and v' unrounded."""
    b1, b2 = betas
    m = b1 * m + (1 - b1) * g
    v = b2 * v + (1 - b2) * g * g
    u = (stored(m, state_dtype) / (1 - b1**t)) / (np.sqrt(stored(v, state_dtype) / (1 - b2**t)) + eps) + wd * w
    wn, un = float(np.linalg.norm(w)), float(np.linalg.norm(u))
    r = 1.0
    if trusted and wn > 0 and un > 0:
        r = (wn if clamp is None else min(max(wn, clamp[0]), clamp[1])) / un
    return w - lr * r * u, m, v, r


def lars_ref(w, buf, g, lr, mu, wd, eta, eps, trusted):
    """LARS (You et al. 2017, Algorithm 1) one step, float64: (w', v', local LR)."""
    wn, gn = float(np.linalg.norm(w)), float(np.linalg.norm(g))
    r = eta * wn / (gn + wd * wn + eps) if trusted and wn > 0 and gn > 0 else 1.0
    buf = mu * buf + lr * r * (g + wd * w)
    return w - buf, buf, r


def f64(t: torch.Tensor) -> np.ndarray:
    return t.detach().to(torch.float64).numpy().copy()


def params_for(dtype: torch.dtype, seed: int, scale: float = 0.5) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(s, generator=g, dtype=torch.float64) * scale).to(dtype).requires_grad_() for s in SHAPES]


def check_close(name: str, got: np.ndarray, want: np.ndarray, bound: np.ndarray, where: str) -> None:
    err = np.abs(got - want)
    assert np.all(err <= bound), f"{where}: {name} off by {float((err / bound).max()):.2f} x its bound"


@pytest.mark.parametrize("foreach", [False, True], ids=["loop", "foreach"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_lamb_low_precision_steps_follow_the_float64_update(dtype, foreach, seed):
    ps = params_for(dtype, seed)
    opt = LAMB(ps, foreach=foreach, **LAMB_KW)
    gen = torch.Generator().manual_seed(seed + 1)
    eps_d = torch.finfo(dtype).eps
    for t in range(1, STEPS + 1):
        before = []
        for p in ps:
            p.grad = torch.randn(p.shape, generator=gen, dtype=torch.float64).to(dtype)
            st = opt.state.get(p, {})
            zeros = np.zeros(p.shape)
            before.append((f64(p), f64(st["exp_avg"]) if st else zeros, f64(st["exp_avg_sq"]) if st else zeros, f64(p.grad)))
        opt.step()
        for i, (p, (w, m, v, g)) in enumerate(zip(ps, before)):
            where = f"{dtype} foreach={foreach} step {t} tensor {i} (seed {seed})"
            w1, m1, v1, r = lamb_ref(w, m, v, g, t, LAMB_KW["lr"], LAMB_KW["betas"], LAMB_KW["eps"],
                                     LAMB_KW["weight_decay"], (0.0, 10.0), p.dim() >= 2, dtype)
            st = opt.state[p]
            assert st["exp_avg"].dtype == st["exp_avg_sq"].dtype == dtype and st["step"].dtype == torch.float32, where
            got_r = float(opt.last_trust_ratios[i])
            assert got_r == pytest.approx(r, rel=LAMB_RATIO_RTOL if p.dim() >= 2 else 0), where
            b1, b2 = LAMB_KW["betas"]
            check_close("exp_avg", f64(st["exp_avg"]), m1, 2 * ulp(np.maximum(abs(b1 * m), abs(g)), dtype), where)
            check_close("exp_avg_sq", f64(st["exp_avg_sq"]), v1, 2 * ulp(np.maximum(b2 * v, g * g), dtype), where)
            m1s, v1s = stored(m1, dtype), stored(v1, dtype)  # u is formed from the stored moments: |u|'s two terms
            adam = np.abs(m1s) / (1 - b1**t) / (np.sqrt(v1s / (1 - b2**t)) + LAMB_KW["eps"])
            terms = np.maximum(LAMB_KW["weight_decay"] * np.abs(w), adam)
            check_close("weight", f64(p), w1, 2 * ulp(np.maximum(np.abs(w), np.abs(w1)), dtype)
                        + 8 * eps_d * LAMB_KW["lr"] * r * terms, where)


@pytest.mark.parametrize("foreach", [False, True], ids=["loop", "foreach"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_lamb_trust_ratio_norms_are_exact(dtype, foreach, seed):
    """betas (0, 0), eps 0, no weight decay, no bias correction, no clamp, gradients +-2^j: u = g / |g| = +-1 exactly
    in any dtype, so r = ||w|| / sqrt(numel) with ||w|| of the stored weights, exact to float32 accumulation."""
    ps = params_for(dtype, seed)
    opt = LAMB(ps, lr=1e-3, betas=(0.0, 0.0), eps=0.0, bias_correction=False, clamp=None, foreach=foreach)
    gen = torch.Generator().manual_seed(seed + 1)
    for t in range(3):
        before = []
        for p in ps:
            # +-2^j: g^2, sqrt(g^2) and m + (g - m) are exact in bf16 / fp16, so u is exactly +-1
            sign = torch.randint(0, 2, p.shape, generator=gen).to(torch.float64) * 2 - 1
            p.grad = (sign * torch.exp2(torch.randint(-2, 3, p.shape, generator=gen).to(torch.float64))).to(dtype)
            before.append(f64(p))
        opt.step()
        for i, (p, w) in enumerate(zip(ps, before)):
            want = float(np.linalg.norm(w)) / math.sqrt(w.size) if p.dim() >= 2 else 1.0
            assert float(opt.last_trust_ratios[i]) == pytest.approx(want, rel=1e-6), (dtype, foreach, t, i, seed)


@pytest.mark.parametrize("nesterov", [False, True])
@pytest.mark.parametrize("foreach", [False, True], ids=["loop", "foreach"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_lars_low_precision_steps_follow_the_float64_update(dtype, foreach, nesterov, seed):
    ps = params_for(dtype, seed)
    opt = LARS(ps, foreach=foreach, nesterov=nesterov, **LARS_KW)
    gen = torch.Generator().manual_seed(seed + 1)
    mu = LARS_KW["momentum"]
    for t in range(1, STEPS + 1):
        before = []
        for p in ps:
            p.grad = (torch.randn(p.shape, generator=gen, dtype=torch.float64) * 0.1).to(dtype)
            st = opt.state.get(p, {})
            before.append((f64(p), f64(st["momentum_buffer"]) if st else np.zeros(p.shape), f64(p.grad)))
        opt.step()
        for i, (p, (w, buf, g)) in enumerate(zip(ps, before)):
            where = f"{dtype} foreach={foreach} nesterov={nesterov} step {t} tensor {i} (seed {seed})"
            w1, buf1, r = lars_ref(w, buf, g, LARS_KW["lr"], mu, LARS_KW["weight_decay"], LARS_KW["trust_coefficient"],
                                   0.0, p.dim() >= 2)
            st = opt.state[p]
            assert st["momentum_buffer"].dtype == dtype, where
            assert float(opt.last_trust_ratios[i]) == pytest.approx(r, rel=1e-6), where  # norms of stored values
            # lr r (g + wd w) and mu v: roundings relative to their largest term
            scale = np.maximum(np.abs(mu * buf), LARS_KW["lr"] * r * np.maximum(np.abs(g), LARS_KW["weight_decay"] * np.abs(w)))
            check_close("momentum_buffer", f64(st["momentum_buffer"]), buf1, 6 * ulp(scale, dtype), where)
            if nesterov:  # w -= mu v' + d
                w1 = w - (mu * buf1 + (buf1 - mu * buf))
            terms = np.maximum(mu * np.abs(buf1), scale)
            check_close("weight", f64(p), w1, 2 * ulp(np.maximum(np.abs(w), np.abs(w1)), dtype) + 8 * ulp(terms, dtype), where)


@pytest.mark.parametrize("cls", [LAMB, LARS], ids=lambda c: c.__name__)
def test_fp16_norms_beyond_the_fp16_range_stay_exact(cls, seed):
    """||w|| (and LARS's ||g||) above 65504, fp16's largest value: float32 norms keep the ratios finite and equal
    to float64 Eq.; a norm taken in fp16 would be inf (LAMB without clamp: inf ratio; LARS: NaN)."""
    g = torch.Generator().manual_seed(seed)
    w = (torch.randn(64, 64, generator=g, dtype=torch.float64) * 1500).to(torch.float16).requires_grad_()
    w.grad = (torch.randn(64, 64, generator=g, dtype=torch.float64) * (2000 if cls is LARS else 1)).to(torch.float16)
    w0, g0 = f64(w), f64(w.grad)
    assert np.linalg.norm(w0) > 65504 and (cls is LAMB or np.linalg.norm(g0) > 65504), "the test needs overflowing norms"
    if cls is LAMB:
        opt = LAMB([w], lr=1e-4, eps=1e-4, clamp=None)
        _, _, _, r = lamb_ref(w0, 0 * w0, 0 * w0, g0, 1, 1e-4, (0.9, 0.999), 1e-4, 0.0, None, True, torch.float16)
        rel = LAMB_RATIO_RTOL
    else:
        opt = LARS([w], lr=1e-3, momentum=0.0, trust_coefficient=0.01)
        _, _, r = lars_ref(w0, 0 * w0, g0, 1e-3, 0.0, 0.0, 0.01, 1e-8, True)
        rel = 1e-6
    opt.step()
    got = float(opt.last_trust_ratios[0])
    assert math.isfinite(got) and got == pytest.approx(r, rel=rel), (seed, got, r)
    assert torch.isfinite(w).all(), seed


@pytest.mark.parametrize("cls", [LAMB, LARS], ids=lambda c: c.__name__)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_low_precision_foreach_and_loop_are_bitwise_equal_on_cpu(cls, dtype, seed):
    """As for float32 (module docstring of trust_ratio): torch's CPU _foreach_mul_ rounds a Python scalar to bf16 /
    fp16 first (LARS's momentum 0.9 became 0.8984 on the batched path), which this caught."""
    runs = []
    for foreach in (False, True):
        ps = params_for(dtype, seed)
        opt = cls(ps, foreach=foreach, **(LAMB_KW if cls is LAMB else LARS_KW))
        gen = torch.Generator().manual_seed(seed + 1)
        for _ in range(3):
            for p in ps:
                p.grad = (torch.randn(p.shape, generator=gen, dtype=torch.float64) * 0.1).to(dtype)
            opt.step()
        runs.append([p.detach().clone() for p in ps])
    for a, b in zip(*runs):
        assert torch.equal(a, b), seed
