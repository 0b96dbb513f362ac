"""Batched Newton-Schulz orthogonalization (Muon's zeroth power), the pure-torch implementation.

``newton_schulz(G)`` maps every matrix of a batch (B, m, n) to approximately U V^T (G = U S V^T) with odd
matrix polynomials X <- a X + (b A + c A^2) X, A = X X^T, after scaling X to Frobenius norm <= 1 (so the
spectral norm is <= 1). One iteration is three batched GEMMs, so a bucket of equal-shape matrices costs
3 * steps launches whatever its size.

Coefficient sets:
  * ``"quintic"`` (default): (3.4445, -4.7750, 2.0315) every step, Keller Jordan's Muon and
    ``torch.optim.Muon``. It does not converge to 1: singular values end in roughly [0.7, 1.2].
  * ``"polar_express"``: the 5-step schedule of Polar Express (Amsel et al., 2025, arXiv 2505.16932) with a
    2% safety factor, as used in modded-nanogpt; the input is divided by 1.02 * ||X||_F. Singular values end
    closer to 1 for the same cost.
  * any (a, b, c) triple (repeated ``steps`` times) or a sequence of triples (one per step).

Conventions match ``torch.optim.Muon`` so that LLRMuon with s = 1 reproduces it: compute in ``dtype``
(bfloat16 by default, on every device), X / max(||X||_F, eps), and the short side is the Gram side. Tall
matrices (m > n) are not transposed: the iteration X <- a X + X (b A + c A^2), A = X^T X, is the same map
written on the other side, so the output keeps the input's layout and can go straight into a buffer.
"""
from __future__ import annotations

from typing import Sequence, Union

import torch
from torch import Tensor

QUINTIC: tuple[float, float, float] = (3.4445, -4.7750, 2.0315)

# Polar Express, num_iters=5, safety_factor=2e-2, cushion=2 (modded-nanogpt's table).
POLAR_EXPRESS: tuple[tuple[float, float, float], ...] = (
    (8.156554524902461, -22.48329292557795, 15.878769915207462),
    (4.042929935166739, -2.808917465908714, 0.5000178451051316),
    (3.8916678022926607, -2.772484153217685, 0.5060648178503393),
    (3.285753657755655, -2.3681294933425376, 0.46449024233003106),
    (2.3465413258596377, -1.7097828382687081, 0.42323551169305323),
)
POLAR_EXPRESS_SAFETY = 1.02

Coefficients = Union[str, Sequence[float], Sequence[Sequence[float]]]


def resolve_coefficients(coefficients: Coefficients, steps: int) -> tuple[tuple[tuple[float, float, float], ...], float]:
    """(one (a, b, c) per step, norm safety factor) from a name, a triple, or a per-step sequence."""
    if not (isinstance(steps, int) and 1 <= steps < 100):
        raise ValueError(f"ns_steps must be an integer in [1, 100), got {steps!r}")
    if isinstance(coefficients, str):
        if coefficients == "quintic":
            return (QUINTIC,) * steps, 1.0
        if coefficients == "polar_express":
            if steps > len(POLAR_EXPRESS):
                # Past its schedule Polar Express is at its fixed point; repeat the last (most conservative) step.
                return POLAR_EXPRESS + (POLAR_EXPRESS[-1],) * (steps - len(POLAR_EXPRESS)), POLAR_EXPRESS_SAFETY
            return POLAR_EXPRESS[:steps], POLAR_EXPRESS_SAFETY
        raise ValueError(f"ns_coefficients must be 'quintic', 'polar_express', (a, b, c) or a list of (a, b, c); got {coefficients!r}")
    seq = list(coefficients)
    if len(seq) == 3 and all(isinstance(x, (int, float)) for x in seq):
        return (tuple(float(x) for x in seq),) * steps, 1.0  # type: ignore[return-value]
    if seq and all(len(t) == 3 for t in seq):
        if len(seq) != steps:
            raise ValueError(f"got {len(seq)} coefficient triples for ns_steps={steps}; give one (a, b, c) per step")
        return tuple(tuple(float(x) for x in t) for t in seq), 1.0  # type: ignore[return-value]
    raise ValueError(f"ns_coefficients must be 'quintic', 'polar_express', (a, b, c) or a list of (a, b, c); got {coefficients!r}")


def newton_schulz(
    G: Tensor,
    coefficients: Coefficients = "quintic",
    steps: int = 5,
    *,
    eps: float = 1e-7,
    dtype: torch.dtype | None = torch.bfloat16,
    out: Tensor | None = None,
    overwrite_input: bool = False,
) -> Tensor:
    """Orthogonalize every matrix of G (..., m, n) as one batch; returns (..., m, n) in ``dtype``.

    dtype: compute dtype (None keeps G's dtype). out: optional contiguous buffer of G's shape and ``dtype``
    that receives the result (the last GEMM writes into it, no extra copy). overwrite_input: G may be used
    as scratch when it is already contiguous in ``dtype`` (saves one copy; LLRMuon's batch buffers).
    """
    if G.dim() < 2:
        raise ValueError(f"newton_schulz needs matrices (..., m, n), got shape {tuple(G.shape)}")
    coeffs, safety = resolve_coefficients(coefficients, steps)
    dtype = G.dtype if dtype is None else dtype
    m, n = G.shape[-2], G.shape[-1]
    reuse = overwrite_input and G.dtype == dtype and G.is_contiguous()
    X = G.view(-1, m, n) if reuse else G.reshape(-1, m, n).to(dtype, copy=True)
    if out is not None:
        if out.shape != G.shape or out.dtype != dtype or not out.is_contiguous():
            raise ValueError(f"out must be a contiguous {dtype} tensor of shape {tuple(G.shape)}")
        out3 = out.view(-1, m, n)
    norm = X.norm(dim=(-2, -1), keepdim=True)
    if safety != 1.0:
        norm = norm * safety
    X.div_(norm.clamp_(min=eps))
    tall = m > n
    last = len(coeffs) - 1
    for i, (a, b, c) in enumerate(coeffs):
        target = {"out": out3} if (out is not None and i == last) else {}
        if tall:
            A = torch.bmm(X.mT, X)
            B = torch.baddbmm(A, A, A, beta=b, alpha=c)
            X = torch.baddbmm(X, X, B, beta=a, **target)
        else:
            A = torch.bmm(X, X.mT)
            B = torch.baddbmm(A, A, A, beta=b, alpha=c)
            X = torch.baddbmm(X, B, X, beta=a, **target)
    if out is not None:
        return out
    return X.view(G.shape)
