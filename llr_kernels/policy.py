"""The LLR policy: when to measure alphas, from what, and how alphas become per-layer LR multipliers.

``llr_multipliers`` is paper Eq. 3 mapped into [1, s]; ``LLRPolicy`` is Algorithm 1's schedule (every
``interval`` steps; gradient alphas while t/T <= grad_phase, weight alphas after) plus two knobs the paper
leaves open: ``active_until`` (freeze multipliers after that fraction of training; the public scripts use
0.2) and ``ramp_steps`` (move linearly to new multipliers over that many steps, as the public code does).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from ._checks import check_bool, check_int, check_real


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
    a = alphas.detach().to(torch.float64).cpu()
    pin = torch.zeros_like(a, dtype=torch.bool) if pinned is None else pinned.cpu().bool()
    prev = torch.ones_like(a) if previous is None else previous.detach().to(torch.float64).cpu().clone()
    usable = torch.isfinite(a) & ~pin
    out = prev.clone()
    if usable.any():
        lo, hi = a[usable].min(), a[usable].max()
        span = float(hi - lo)
        if span > 0 and math.isfinite(span):
            out[usable] = (a[usable] - lo) / span * (s - 1.0) + 1.0
        else:
            out[usable] = 1.0
    out[pin] = s
    return out


@dataclass
class LLRConfig:
    """Hyperparameters of the LLR policy (paper defaults; s = 3 for AdamW, 2 for Muon)."""

    s: float = 3.0
    interval: int = 500
    total_steps: int | None = None
    grad_phase: float = 0.05
    active_until: float = 1.0
    ramp_steps: int = 0
    pin_embedding: bool = True
    pin_lm_head: bool = False

    def validate(self) -> "LLRConfig":
        """Check every field (TypeError for a wrong type, ValueError for a value out of range); returns self."""
        check_real("s", self.s, 1.0, hint=" (LRs span [lr, s*lr]; s=1 is plain AdamW/Muon; paper: 3 AdamW, 2 Muon)")
        check_int("interval", self.interval, 1, hint=" (steps between alpha updates; paper: 500)")
        if self.total_steps is not None:
            check_int("total_steps", self.total_steps, 1, hint=" (or None: the length of training, for grad_phase and active_until)")
        check_real("grad_phase", self.grad_phase, 0.0, 1.0, hint=" (fraction of total_steps measured from gradients; paper: 0.05)")
        check_real("active_until", self.active_until, 0.0, 1.0, lo_open=True,
                   hint=" (fraction of total_steps after which multipliers freeze; 1.0 = paper, 0.2 = public scripts)")
        if self.active_until < 1.0 and self.total_steps is None:
            raise ValueError(
                f"active_until={self.active_until!r} is a fraction of training and needs total_steps; pass total_steps "
                "(the number of optimizer steps) or leave active_until=1.0"
            )
        check_int("ramp_steps", self.ramp_steps, 0, hint=" (steps to move linearly to new multipliers; 0 = jump)")
        check_bool("pin_embedding", self.pin_embedding)
        check_bool("pin_lm_head", self.pin_lm_head)
        return self


class LLRPolicy:
    """Algorithm 1's schedule and the multiplier state of every layer, with a resumable state_dict.

    Steps are counted from 0: before the optimizer's t-th step (t = 0, 1, ...) ``is_update_step(t)`` says
    whether alphas are measured now and ``source(t)`` whether from gradients or weights.
    """

    def __init__(self, config: LLRConfig, num_layers: int, pinned: torch.Tensor) -> None:
        self.config = config.validate()
        self.num_layers = num_layers
        self.pinned = pinned.cpu().bool()
        init = torch.where(self.pinned, torch.tensor(float(config.s), dtype=torch.float64), torch.tensor(1.0, dtype=torch.float64))
        self.alphas = torch.full((num_layers,), float("nan"), dtype=torch.float64)
        self.target = init.clone()
        self.start = init.clone()
        self.last_update: int | None = None
        self.last_source: str | None = None
        self.num_updates = 0

    def frozen(self, t: int) -> bool:
        """True once multipliers no longer change (past active_until * total_steps)."""
        c = self.config
        return c.total_steps is not None and c.active_until < 1.0 and t >= c.active_until * c.total_steps

    def is_update_step(self, t: int) -> bool:
        return t % self.config.interval == 0 and not self.frozen(t)

    def source(self, t: int) -> str:
        """"grad" during the first grad_phase of training (t/T <= p, Algorithm 1), else "weight"."""
        c = self.config
        if c.total_steps is None or c.grad_phase <= 0.0:
            return "weight"
        return "grad" if t / c.total_steps <= c.grad_phase else "weight"

    def phase(self, t: int) -> str:
        return "frozen" if self.frozen(t) else self.source(t)

    def update(self, t: int, alphas: torch.Tensor, source: str) -> None:
        """Record alphas measured before step t and set new target multipliers."""
        self.start = self.multipliers(t)
        self.alphas = alphas.detach().to(torch.float64).cpu().clone()
        self.target = llr_multipliers(self.alphas, self.config.s, pinned=self.pinned, previous=self.target)
        self.last_update, self.last_source = t, source
        self.num_updates += 1

    def multipliers(self, t: int) -> torch.Tensor:
        """Multipliers in force at step t (float64, CPU), following the ramp if one is set."""
        r = self.config.ramp_steps
        if r == 0 or self.last_update is None:
            return self.target.clone()
        frac = min(1.0, (t - self.last_update + 1) / r)
        return self.start + (self.target - self.start) * frac

    def ramping(self, t: int) -> bool:
        r = self.config.ramp_steps
        return r > 0 and self.last_update is not None and t - self.last_update + 1 <= r

    def state_dict(self) -> dict[str, Any]:
        return {
            "alphas": self.alphas.clone(),
            "target": self.target.clone(),
            "start": self.start.clone(),
            "last_update": self.last_update,
            "last_source": self.last_source,
            "num_updates": self.num_updates,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        n = state["target"].numel()
        if n != self.num_layers:
            raise ValueError(f"LLR state has {n} layers but this optimizer has {self.num_layers}; was it saved for another model?")
        self.alphas = state["alphas"].to(torch.float64).clone()
        self.target = state["target"].to(torch.float64).clone()
        self.start = state["start"].to(torch.float64).clone()
        self.last_update = state["last_update"]
        self.last_source = state["last_source"]
        self.num_updates = state["num_updates"]
