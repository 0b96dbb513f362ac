"""Independent float64 references for the tests: AdamW, Muon, the Hill estimator (Eq. 2) and the LR map (Eq. 3).

Written from the published formulas (torch.optim.AdamW / torch.optim.Muon documentation, the LLR paper's
Eq. 2 and Eq. 3), not from the library's code: numpy or float64 torch, one tensor at a time, no fusion.
Tests compare the library's fast, batched, multi-tensor paths against these.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch

QUINTIC = (3.4445, -4.7750, 2.0315)  # Keller Jordan's Muon coefficients (torch.optim.Muon's defaults)


# ----- AdamW --------------------------------------------------------------------------------------
def adamw_step_f64(
    params: Sequence[torch.Tensor],
    grads: Sequence[torch.Tensor],
    exp_avgs: Sequence[torch.Tensor],
    exp_avg_sqs: Sequence[torch.Tensor],
    max_exp_avg_sqs: Sequence[torch.Tensor] | None,
    lrs: Sequence[float],
    weight_decays: Sequence[float],
    steps: Sequence[float],
    *,
    betas: tuple[float, float],
    eps: float,
    amsgrad: bool = False,
    maximize: bool = False,
    inv_scale: float | None = None,
    max_grad_norm: float | None = None,
) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor], list[torch.Tensor], list[float], float | None]:
    """One decoupled-weight-decay AdamW step of every tensor in float64, each with its own LR, wd and step.

    ``steps`` are the counters BEFORE the step. Returns (params, exp_avgs, exp_avg_sqs, max_exp_avg_sqs,
    new steps, global grad norm or None), all new float64 CPU tensors; inputs are not modified.
    """
    f64 = lambda xs: [x.detach().cpu().double() for x in xs]  # noqa: E731
    p, g, m, v = f64(params), f64(grads), f64(exp_avgs), f64(exp_avg_sqs)
    vmax = f64(max_exp_avg_sqs) if max_exp_avg_sqs is not None else [torch.zeros_like(x) for x in v]
    scale = 1.0 if inv_scale is None else float(inv_scale)
    norm = None
    if max_grad_norm is not None:
        norm = math.sqrt(sum(float((x * x).sum()) for x in g)) * scale
        scale *= min(1.0, max_grad_norm / (norm + 1e-6))
    b1, b2 = betas
    out_p, out_m, out_v, out_x, out_t = [], [], [], [], []
    for i in range(len(p)):
        lr, wd, t = float(lrs[i]), float(weight_decays[i]), float(steps[i]) + 1
        gi = g[i] * scale * (-1.0 if maximize else 1.0)
        pi = p[i] * (1 - lr * wd)
        mi = b1 * m[i] + (1 - b1) * gi
        vi = b2 * v[i] + (1 - b2) * gi * gi
        vh = torch.maximum(vmax[i], vi) if amsgrad else vi
        pi = pi - lr / (1 - b1**t) * mi / (vh.sqrt() / math.sqrt(1 - b2**t) + eps)
        out_p.append(pi), out_m.append(mi), out_v.append(vi), out_x.append(vh), out_t.append(t)
    return out_p, out_m, out_v, out_x, out_t, norm


class AdamWF64:
    """AdamW over a list of tensors in float64, one LR / weight decay / betas per tensor (set before step).

    ``state_round``: a dtype the moments are rounded to after every step (emulates bf16 optimizer state).
    """

    def __init__(self, params, lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, amsgrad=False, maximize=False,
                 state_round: torch.dtype | None = None):
        self.params = list(params)
        n = len(self.params)
        self.lrs = [lr] * n if not isinstance(lr, (list, tuple)) else list(lr)
        self.betas = [betas] * n if not isinstance(betas, list) else list(betas)
        self.wds = [weight_decay] * n if not isinstance(weight_decay, (list, tuple)) else list(weight_decay)
        self.eps, self.amsgrad, self.maximize, self.state_round = eps, amsgrad, maximize, state_round
        self.master = [p.detach().double().clone() for p in self.params]
        self.m = [torch.zeros_like(x) for x in self.master]
        self.v = [torch.zeros_like(x) for x in self.master]
        self.vmax = [torch.zeros_like(x) for x in self.master]
        self.t = [0.0] * n

    @torch.no_grad()
    def step(self, grad_scale: float = 1.0) -> None:
        for i, p in enumerate(self.params):
            if p.grad is None:
                continue
            out = adamw_step_f64([self.master[i]], [p.grad.double() * grad_scale], [self.m[i]], [self.v[i]], [self.vmax[i]],
                                 [self.lrs[i]], [self.wds[i]], [self.t[i]], betas=self.betas[i], eps=self.eps,
                                 amsgrad=self.amsgrad, maximize=self.maximize)
            self.master[i], m, v, vmax, (self.t[i],), _ = out[0][0], out[1][0], out[2][0], out[3][0], out[4], None
            if self.state_round is not None:
                m, v, vmax = (x.to(self.state_round).double() for x in (m, v, vmax))
            self.m[i], self.v[i], self.vmax[i] = m, v, vmax
            p.copy_(self.master[i].to(p.dtype))


# ----- Muon ---------------------------------------------------------------------------------------
def ns_f64(G: torch.Tensor, coefficients: Sequence[Sequence[float]], safety: float = 1.0, eps: float = 1e-7) -> torch.Tensor:
    """Newton-Schulz of one matrix in float64, Keller Jordan's layout (tall matrices transposed, Gram on
    the short side): X = G / max(safety * ||G||_F, eps); X <- a X + (b A + c A^2) X, A = X X^T."""
    X = G.detach().to(torch.float64)
    tall = X.shape[0] > X.shape[1]
    if tall:
        X = X.T
    X = X / max(float(X.norm()) * safety, eps)
    for a, b, c in coefficients:
        A = X @ X.T
        X = a * X + (b * A + c * A @ A) @ X
    return X.T if tall else X


def torch_muon_ns_f64(grad: torch.Tensor, ns_coefficients, ns_steps: int, eps: float) -> torch.Tensor:
    """Drop-in for torch.optim._muon._zeropower_via_newtonschulz, in float64 (same normalisation and layout)."""
    return ns_f64(grad, [tuple(ns_coefficients)] * ns_steps, 1.0, eps)


def muon_lr_ratio(adjust_lr_fn: str | None, shape: Sequence[int]) -> float:
    """Muon's shape factor, from torch.optim.Muon's documentation and Moonshot's paper (arXiv 2502.16982)."""
    rows, cols = shape[0], shape[1]
    if adjust_lr_fn in (None, "original"):
        return math.sqrt(max(1.0, rows / cols))
    if adjust_lr_fn == "match_rms_adamw":
        return 0.2 * math.sqrt(max(rows, cols))
    assert adjust_lr_fn == "none"
    return 1.0


class MuonF64:
    """Single-tensor Muon with one LR per matrix, float64 Newton-Schulz (the formula, no batching).

    buf = mu buf + (1 - mu) g;  u = (1 - mu) g + mu buf (Nesterov) or buf;  O = NS(u);
    p = p (1 - lr wd) - lr ratio(shape) O.  ``maximize`` negates the gradient first.
    """

    def __init__(self, params, lrs, weight_decay, momentum=0.95, nesterov=True, coefficients=(QUINTIC,) * 5,
                 safety=1.0, adjust_lr_fn="original", maximize=False, eps=1e-7, state_round: torch.dtype | None = None):
        self.state_round = state_round  # store the momentum in this dtype (Nesterov then reads the stored value)
        self.params = list(params)
        self.lrs = list(lrs) if isinstance(lrs, (list, tuple)) else [lrs] * len(self.params)
        self.wd, self.mu, self.nesterov, self.maximize, self.eps = weight_decay, momentum, nesterov, maximize, eps
        self.coefficients, self.safety, self.adjust = coefficients, safety, adjust_lr_fn
        self.bufs = [torch.zeros_like(p, dtype=torch.float64) for p in self.params]

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        for p, buf, lr in zip(self.params, self.bufs, self.lrs):
            g = p.grad.double() * (-1.0 if self.maximize else 1.0)
            buf.mul_(self.mu).add_(g, alpha=1 - self.mu)
            if self.state_round is not None:
                buf.copy_(buf.to(self.state_round).double())
            u = (1 - self.mu) * g + self.mu * buf if self.nesterov else buf
            o = ns_f64(u, self.coefficients, self.safety, self.eps)
            new = p.double() * (1 - lr * self.wd) - lr * muon_lr_ratio(self.adjust, p.shape) * o
            p.copy_(new.to(p.dtype))


# ----- Hill estimator (Eq. 2) and the LR map (Eq. 3) ---------------------------------------------
def esd_np(w: torch.Tensor) -> np.ndarray:
    """Ascending eigenvalues of W^T W that can be nonzero (the n = min(rows, cols) squared singular values),
    numpy float64; >2-D weights are viewed as (shape[0], -1)."""
    a = w.detach().cpu().double().reshape(w.shape[0], -1).numpy()
    gram = a @ a.T if a.shape[0] <= a.shape[1] else a.T @ a
    return np.sort(np.linalg.eigvalsh(gram))


def hill_np(eigs: np.ndarray, variant: str = "paper", min_eigs: int = 50) -> float:
    """PL_Alpha_Hill from ascending eigenvalues l_1..l_n (1-based in the comments).

    paper (Eq. 2): k = floor(n/2), alpha = 1 + k / sum_{i=1..k} ln(l_{n-i+1} / l_{n-k}).
    reference (public code): i = n // 2 (0-based), alpha = 1 + (n - i) / sum_{j >= i} ln(l_j / l_i).
    NaN when n < min_eigs or the threshold eigenvalue is not positive.
    """
    lam = [float(x) for x in eigs]
    n = len(lam)
    if n < max(2, min_eigs):
        return float("nan")
    if variant == "paper":
        k = n // 2
        thr = lam[(n - k) - 1]  # l_{n-k}, 1-based
        top = [lam[(n - i + 1) - 1] for i in range(1, k + 1)]  # l_{n-i+1}, i = 1..k
    else:
        i0 = n // 2
        thr = lam[i0]
        top = lam[i0:]
    if not thr > 1e-12 * max(lam[-1], 0.0):  # a zero (or rounding-level) threshold: no tail to fit
        return float("nan")
    return 1.0 + len(top) / sum(math.log(x / thr) for x in top)


def alpha_np(w: torch.Tensor, variant: str = "paper", min_eigs: int = 50) -> float:
    return hill_np(esd_np(w), variant, min_eigs)


def eq3(alphas: Sequence[float], s: float, pinned: Sequence[bool] | None = None,
        previous: Sequence[float] | None = None) -> list[float]:
    """Eq. 3 mapped into [1, s] over the layers with finite alphas that are not pinned.

    Pinned layers get s; a NaN alpha keeps ``previous`` (default 1); fewer than two distinct finite alphas
    give 1 to the usable layers.
    """
    n = len(alphas)
    pinned = [False] * n if pinned is None else list(pinned)
    out = [1.0] * n if previous is None else [float(x) for x in previous]
    usable = [i for i in range(n) if math.isfinite(alphas[i]) and not pinned[i]]
    if usable:
        lo = min(alphas[i] for i in usable)
        hi = max(alphas[i] for i in usable)
        for i in usable:
            out[i] = (alphas[i] - lo) / (hi - lo) * (s - 1.0) + 1.0 if hi > lo else 1.0
    for i in range(n):
        if pinned[i]:
            out[i] = float(s)
    return out


def power_law_matrix(rows: int, cols: int, exponent: float, seed: int, scale: float = 1.0) -> torch.Tensor:
    """A rows x cols float32 matrix whose squared singular values follow l_j ~ j^(-1/(exponent-1)) (j = 1..n):
    a power-law ESD with tail exponent about ``exponent``, so the Hill alpha grows with it (known order)."""
    g = torch.Generator().manual_seed(seed)
    n = min(rows, cols)
    u, _ = torch.linalg.qr(torch.randn(rows, n, generator=g, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(cols, n, generator=g, dtype=torch.float64))
    j = torch.arange(1, n + 1, dtype=torch.float64)
    sv = j ** (-0.5 / (exponent - 1.0))
    return (scale * (u * sv) @ v.T).float()


class LLRScheduleF64:
    """Algorithm 1 with Eq. 2 and Eq. 3 in float64 numpy, per layer name: the expected multipliers.

    Before step t (t = 0, 1, ...): when t % interval == 0 (and t < active_until * total_steps), alphas are
    measured from the gradients while t / total_steps <= grad_phase, else from the weights; Eq. 3 sets new
    targets (pinned layers at s, a NaN alpha keeps the layer's previous target). With ramp_steps = r the
    multiplier moves linearly from the one in force at the update to the target: after an update at u it is
    start + (target - start) * min(1, (t - u + 1) / r) (README: "moves linearly to new multipliers").
    """

    def __init__(self, names: Sequence[str], matrix: Sequence[bool], *, s: float, pinned: Sequence[str] = (),
                 interval: int = 500, total_steps: int | None = None, grad_phase: float = 0.05,
                 active_until: float = 1.0, ramp_steps: int = 0, min_eigs: int = 50, variant: str = "paper"):
        self.names, self.matrix = list(names), list(matrix)
        self.s, self.pinned = float(s), [n in set(pinned) for n in names]
        self.interval, self.total, self.grad_phase = interval, total_steps, grad_phase
        self.active_until, self.ramp, self.min_eigs, self.variant = active_until, ramp_steps, min_eigs, variant
        init = [self.s if pin else 1.0 for pin in self.pinned]
        self.start, self.target, self.last = list(init), list(init), None
        self.alphas = [float("nan")] * len(self.names)
        self.sources: list[tuple[int, str]] = []

    def source(self, t: int) -> str:
        if self.total is None or self.grad_phase <= 0:
            return "weight"
        return "grad" if t / self.total <= self.grad_phase else "weight"

    def update_due(self, t: int) -> bool:
        frozen = self.total is not None and self.active_until < 1.0 and t >= self.active_until * self.total
        return t % self.interval == 0 and not frozen

    def before_step(self, t: int, weights: dict[str, torch.Tensor], grads: dict[str, torch.Tensor | None]) -> None:
        """Call before the optimizer's t-th step with the current weights and gradients by name."""
        if not self.update_due(t):
            return
        src = self.source(t)
        mats = grads if src == "grad" else weights
        alphas = []
        for name, is_matrix in zip(self.names, self.matrix):
            m = mats.get(name)
            alphas.append(alpha_np(m, self.variant, self.min_eigs) if is_matrix and m is not None else float("nan"))
        self.start = self.multipliers(t)
        self.alphas = alphas
        self.target = eq3(alphas, self.s, self.pinned, previous=self.target)
        self.last = t
        self.sources.append((t, src))

    def multipliers(self, t: int) -> list[float]:
        if self.ramp == 0 or self.last is None:
            return list(self.target)
        frac = min(1.0, (t - self.last + 1) / self.ramp)
        return [a + (b - a) * frac for a, b in zip(self.start, self.target)]


def hill_llr_np(eigs: np.ndarray, min_eigs: int = 50, rel_zero: float = 1e-8, alpha_max: float = 50.0) -> float:
    """The alpha LLR feeds to Eq. 3, from ascending eigenvalues (issue 12's rules, written independently).

    Eq. 2 (paper variant); when the threshold l_{n-k} is zero (eigenvalues at most ``rel_zero`` x l_max count
    as zero: the documented floor of llr_kernels.spectral.rules, which exact and Lanczos share), Eq. 2 on the r
    nonzero eigenvalues with k = floor(r/2), NaN if r < min_eigs; NaN above
    ``alpha_max`` (flat or near-flat spectra, not tail estimates). Meant for spectra with a clear gap between
    zero and nonzero eigenvalues (low-rank gradients), not for rank decisions near the floor.
    """
    lam = np.clip(np.asarray(eigs, dtype=np.float64), 0.0, None)
    n = lam.size
    if n < max(2, min_eigs) or not lam[-1] > 0:
        return float("nan")
    nonzero = lam[lam > rel_zero * lam[-1]]
    if nonzero.size <= n // 2:  # Eq. 2's threshold is zero: the rank-aware estimate on the nonzero part
        if nonzero.size < max(2, min_eigs):
            return float("nan")
        lam = nonzero
    a = hill_np(lam, "paper", min_eigs=2)
    return a if a <= alpha_max else float("nan")


def robust_outliers_np(alphas: Sequence[float], pinned: Sequence[bool], z: float = 5.0, min_scale: float = 0.2,
                       min_layers: int = 5) -> list[bool]:
    """Issue 12's outlier rule: |ln(a-1) - median| > z * max(1.4826 MAD, min_scale) over usable alphas."""
    idx = [i for i, a in enumerate(alphas) if math.isfinite(a) and a > 1.0 and not pinned[i]]
    out = [False] * len(alphas)
    if len(idx) < min_layers:
        return out
    x = np.log(np.array([alphas[i] for i in idx]) - 1.0)
    med = _lower_median(x)
    scale = max(1.4826 * _lower_median(np.abs(x - med)), min_scale)
    for j, i in enumerate(idx):
        out[i] = bool(abs(x[j] - med) > z * scale)
    return out


def _lower_median(x: np.ndarray) -> float:
    """The lower median (torch.median's convention for even counts)."""
    s = np.sort(x)
    return float(s[(s.size - 1) // 2])
