"""Ragged AdamW cases shared by tests/ops/test_adamw_kernels.py and tests/optim/test_capturable.py: dozens of tensors
of mixed sizes and dtypes with per-tensor LRs, weight decays and step counters, and the float64 reference step."""
from __future__ import annotations

import torch

from reference import adamw_step_f64

DEV = torch.device("cuda" if torch.cuda.is_available() else "cpu")
BETAS = (0.9, 0.999)
EPS = 1e-8
COMBOS = [(torch.float32, torch.float32), (torch.bfloat16, torch.float32), (torch.float16, torch.float32),
          (torch.float32, torch.bfloat16), (torch.bfloat16, torch.bfloat16)]
SIZES = [0, 1, 2, 3, 7, 16, 31, 64, 100, 255, 512, 777, 1000, 1023, 1024, 1025, 2048, 3001, 4096, 5000, 8191,
         8192, 8193, 12345, 16384, 20000, 32768, 32769, 40000, 70001]




class Case:
    """A ragged tensor set with optimizer state mid-training (random m, v, step counters)."""

    def __init__(self, seed: int, amsgrad: bool, combos=COMBOS, sizes=SIZES):
        gen = torch.Generator().manual_seed(seed)
        n = len(sizes)
        self.amsgrad = amsgrad
        self.params, self.grads, self.m, self.v, self.vmax = [], [], [], [], []
        for i, size in enumerate(sizes):
            pdt, sdt = combos[i % len(combos)]
            self.params.append(torch.randn(size, generator=gen).to(pdt))
            self.grads.append((torch.randn(size, generator=gen) * 0.1).to(pdt))
            self.m.append((torch.randn(size, generator=gen) * 0.05).to(sdt))
            v = torch.rand(size, generator=gen) * 1e-2
            self.v.append(v.to(sdt))
            self.vmax.append((v * (1 + torch.rand(size, generator=gen))).to(sdt))
        self.lrs = torch.rand(n, generator=gen) * 1e-2 + 1e-4
        self.wds = torch.rand(n, generator=gen) * 0.2
        self.steps = torch.randint(0, 20, (n,), generator=gen).float()

    def clone(self, device=DEV) -> "Case":
        c = Case.__new__(Case)
        c.amsgrad = self.amsgrad
        for k in ("params", "grads", "m", "v", "vmax"):
            setattr(c, k, [t.clone().to(device) for t in getattr(self, k)])
        for k in ("lrs", "wds", "steps"):
            setattr(c, k, getattr(self, k).clone().to(device))
        return c

    def run(self, fn, **kw):
        return fn(self.params, self.grads, self.m, self.v, self.vmax if self.amsgrad else None, self.lrs, self.wds,
                  self.steps, beta1=BETAS[0], beta2=BETAS[1], eps=EPS, amsgrad=self.amsgrad, **kw)

    def tensors(self) -> list[torch.Tensor]:
        return self.params + self.m + self.v + (self.vmax if self.amsgrad else []) + [self.steps]


def reference(case: Case, maximize=False, inv_scale=None, max_grad_norm=None):
    """One AdamW step in float64 from the case's (rounded) values: (params, m, v, vmax, steps, norm)."""
    p, m, v, x, t, norm = adamw_step_f64(case.params, case.grads, case.m, case.v, case.vmax if case.amsgrad else None,
                                         case.lrs.tolist(), case.wds.tolist(), case.steps.tolist(), betas=BETAS, eps=EPS,
                                         amsgrad=case.amsgrad, maximize=maximize, inv_scale=inv_scale,
                                         max_grad_norm=max_grad_norm)
    return p, m, v, x, torch.tensor(t, dtype=torch.float64), norm


def _rel(dtype: torch.dtype) -> float:
    return {torch.float32: 4 * 2.0**-23, torch.bfloat16: 2.0**-8, torch.float16: 2.0**-10, torch.float64: 1e-14}[dtype]


def assert_matches(got: list[torch.Tensor], want: list[torch.Tensor], before: list[torch.Tensor], what: str) -> None:
    """Each tensor within its dtype's rounding of the float64 value, plus 1e-5 of the step's change.

    The rounding term is relative, and at least one subnormal spacing of the dtype (2^-24 for fp16): a value that
    lands among fp16's subnormals is rounded on an absolute grid, where a relative bound alone is too tight.
    """
    for i, (x, w, x0) in enumerate(zip(got, want, before)):
        x = x.detach().cpu().double()
        x0 = x0.detach().cpu().double()
        fi = torch.finfo(got[i].dtype)
        subnormal_spacing = fi.tiny * fi.eps
        tol = _rel(got[i].dtype) * w.abs() + 1e-5 * (w - x0).abs() + max(1e-9, subnormal_spacing)
        bad = (x - w).abs() > tol
        assert not bad.any(), (
            f"{what}[{i}] ({got[i].dtype}, numel {x.numel()}): max err {float((x - w).abs().max()):.3e} "
            f"at {int(bad.nonzero()[0])}"
        )


