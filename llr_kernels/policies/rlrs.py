"""RLRS (Ludziejewski et al., 2025, "Decoupled Relative Learning Rate Schedules", arXiv 2507.03526): each
component group follows its own relative LR, from a start value to an end value over training, on top of the
global schedule.

In the paper each component m runs its own cosine, from base x l_start(m) to base x a_end x l_end(m) (a_end: the
global cosine's final fraction): eta_m(u) = E + (S - E) (1 + cos(pi u)) / 2, u = t / T. The global schedule
(warmup, cosine, any torch.optim.lr_scheduler) already edits group["lr"], so the policy's multiplier is the
component's relative LR, eta_m(u) / eta_global(u) with eta_global the global cosine (curve "paper"): l_start(m)
at the first step, l_end(m) at the last, and exactly the paper's component curve when the global schedule is a
cosine to ``final_lr_ratio`` over the same T. Curves "linear" and "cosine" interpolate the relative LR itself.
Blocks come from ``policies.blocks`` (a dense model's FFN takes the role the paper gives MoE experts, see the
presets); blocks without an entry stay at 1. The multipliers change at every step, so every step copies them to
the device (one small host-to-device copy; a compiled step leaves its graph there).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from .._checks import check_choice, check_int, check_real
from .base import LayerwisePolicy, PolicyConfig, register_policy
from .blocks import blocks_of, check_block_table

CURVES = ("paper", "linear", "cosine")


@dataclass
class RLRSConfig(PolicyConfig):
    """Relative LR per block: ``start[b]`` at step 0 to ``end[b]`` at ``total_steps`` (blocks missing from one of
    the two take the other's value; missing from both: 1)."""

    start: dict[str, float] = field(default_factory=dict)
    end: dict[str, float] = field(default_factory=dict)
    total_steps: int | None = None
    curve: str = "paper"
    final_lr_ratio: float = 0.1

    def validate(self) -> "RLRSConfig":
        check_block_table("start", self.start, "relative LR")
        check_block_table("end", self.end, "relative LR")
        if self.total_steps is None:
            raise ValueError("RLRS needs total_steps (the number of optimizer steps): its relative LRs move from "
                             "start to end over training")
        check_int("total_steps", self.total_steps, 1)
        check_choice("curve", self.curve, CURVES, hint=" (how the relative LR moves from start to end)")
        check_real("final_lr_ratio", self.final_lr_ratio, 0.0, 1.0, lo_open=True,
                   hint=" (the global cosine's final LR / peak LR; curve 'paper' divides by that cosine)")
        return self



@register_policy(code=3)
class RLRSPolicy(LayerwisePolicy):
    name = "rlrs"
    config: RLRSConfig

    def _ends(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Every layer's (start, end) relative LR, computed once per layer set (not at every step)."""
        cached = self.__dict__.get("_ends_cache")
        if cached is None or cached[0] != len(self.kinds):
            cached = self._ends_cache = (len(self.kinds), self._compute_ends())
        return cached[1]

    def _compute_ends(self) -> tuple[torch.Tensor, torch.Tensor]:
        c = self.config
        blocks = blocks_of(self.kinds, self.names)
        a = [float(c.start.get(b, c.end.get(b, 1.0))) for b in blocks]
        z = [float(c.end.get(b, c.start.get(b, 1.0))) for b in blocks]
        return torch.tensor(a, dtype=torch.float64), torch.tensor(z, dtype=torch.float64)

    def initial_targets(self, first: int, count: int) -> torch.Tensor:
        return self._ends()[0][first:first + count]

    def multipliers(self, t: int) -> torch.Tensor:
        a, z = self._ends()
        c = self.config
        u = min(1.0, max(0.0, t / c.total_steps))
        if c.curve == "linear":
            return a + (z - a) * u
        w = 0.5 * (1.0 + math.cos(math.pi * u))  # 1 -> 0
        if c.curve == "cosine":
            return z + (a - z) * w
        f = c.final_lr_ratio  # "paper": the component's cosine over the global one
        return (f * z + (a - f * z) * w) / (f + (1.0 - f) * w)

    def ramping(self, t: int) -> bool:
        a, z = self._ends()
        return bool((a != z).any()) and 0 < t <= self.config.total_steps


RLRSConfig.policy_class = RLRSPolicy
