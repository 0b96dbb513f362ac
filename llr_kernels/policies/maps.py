"""LR maps: per-layer metric values (PL_Alpha_Hill or another) -> per-layer multipliers.

Every map sends a larger metric value to a larger multiplier (LLR, Eq. 3: weaker heavy tail, larger LR) and acts
on the usable layers only (finite values, not pinned, not excluded); the others keep ``previous``, and pinned
layers get ``hi``. The variants are the TempBalance family's assignment functions (Zhou et al., NeurIPS 2023,
code ``tempbalance.py``; the sigmoid from the LLR / AlphaDecay code), written relative to the base LR:

- "linear" (Eq. 3 of the LLR paper; TempBalance's ``tb_linear_map``): lo + (x - min) / (max - min) (hi - lo).
- "step" (``tb_step``): by rank: the layer of rank r (0 = smallest x) among m gets lo + (hi - lo) r / m, so the
  top rank reaches (m - 1) / m of the range, as in TempBalance.
- "sqrt" / "log2" (``tb_sqrt`` / ``tb_log2``): m f(x) / sum f(x) over the usable layers, f = sqrt or log2: mean
  multiplier 1, the spread set by f's, not by [lo, hi] (log2 needs x > 1, true of every alpha from Eq. 2).
- "sigmoid" (the LLR / AlphaDecay code's ``sigmoid``): 2 / (1 + exp(-4 z)), z = (x - mean) / (std + 1e-8) over
  the usable layers: in (0, 2) around 1, not [lo, hi].

If fewer than two layers are usable, or their values are all equal, the map is degenerate and the usable layers
get 1 (no layer moves away from the base LR on the strength of one value).
"""
from __future__ import annotations

import math

import torch

MAPS = ("linear", "sqrt", "log2", "sigmoid", "step")
SIGMOID_SLOPE = 4.0  # "sigmoid": the LLR / AlphaDecay code's sigmoid_alpha


def map_values(
    values: torch.Tensor,
    lo: float,
    hi: float,
    *,
    kind: str = "linear",
    pinned: torch.Tensor | None = None,
    previous: torch.Tensor | None = None,
) -> torch.Tensor:
    """Multipliers (float64, CPU) from metric values with the ``kind`` map into [lo, hi] (see the module doc)."""
    if kind not in MAPS:
        raise ValueError(f"map must be one of {MAPS}, got {kind!r}")
    x = values.detach().to(torch.float64).cpu()
    pin = torch.zeros_like(x, dtype=torch.bool) if pinned is None else pinned.cpu().bool()
    out = torch.ones_like(x) if previous is None else previous.detach().to(torch.float64).cpu().clone()
    usable = torch.isfinite(x) & ~pin
    if kind == "log2":
        usable &= x > 1.0
    if kind == "sqrt":
        usable &= x >= 0.0
    if usable.any():
        u = x[usable]
        span = float(u.max() - u.min())
        if u.numel() < 2 or not (span > 0 and math.isfinite(span)):
            out[usable] = 1.0
        elif kind == "linear":
            out[usable] = (u - u.min()) / span * (hi - lo) + lo
        elif kind == "step":
            rank = torch.argsort(torch.argsort(u)).to(torch.float64)
            out[usable] = lo + (hi - lo) * rank / u.numel()
        elif kind in ("sqrt", "log2"):
            f = torch.sqrt(u) if kind == "sqrt" else torch.log2(u)
            out[usable] = f / f.sum() * u.numel()
        else:  # sigmoid
            z = (u - u.mean()) / (u.std(unbiased=False) + 1e-8)
            out[usable] = 2.0 / (1.0 + torch.exp(-SIGMOID_SLOPE * z))
    out[pin] = hi
    return out


def llr_multipliers(
    alphas: torch.Tensor,
    s: float,
    *,
    pinned: torch.Tensor | None = None,
    previous: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-layer LR multipliers in [1, s] from Hill alphas (Eq. 3): higher alpha, larger LR.

    pinned: bool mask of layers fixed at s (embedding; LM head if configured); their alphas are ignored.
    previous: multipliers to keep where an alpha is NaN (default 1). If every usable alpha is equal (or
    fewer than two are usable) the map is degenerate and those layers get 1.
    """
    return map_values(alphas, 1.0, s, kind="linear", pinned=pinned, previous=previous)
