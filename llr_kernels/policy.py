"""The LLR policy: when to measure alphas, from what, and how alphas become per-layer LR multipliers.

``llr_multipliers`` is paper Eq. 3 mapped into [1, s]; ``LLRPolicy`` is Algorithm 1's schedule (every
``interval`` steps; gradient alphas while t/T <= grad_phase, weight alphas after) plus two knobs the paper
leaves open: ``active_until`` (freeze multipliers after that fraction of training; the public scripts use
0.2) and ``ramp_steps`` (move linearly to new multipliers over that many steps, as the public code does).

No single layer may set Eq. 3's range for everyone. The spectral estimator already returns NaN for spectra
without a tail (flat, alpha above its bound, too few eigenvalues; ``llr_kernels.spectral.hill``); on top of
that ``robust_outliers`` drops alphas far from the other layers' (see its docstring) before the map. Every
excluded layer keeps its previous multiplier, and the optimizers report it as status "outlier".
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


OUTLIER_Z = 5.0  # default cut, in robust standard deviations of ln(alpha - 1)
OUTLIER_MIN_SCALE = 0.2  # floor of that scale: alpha - 1 within a factor e^(5 x 0.2) = e of the median's is never an outlier
OUTLIER_MIN_LAYERS = 5  # fewer usable alphas: no outlier rule (a median and MAD of 3 or 4 values say little)


def robust_outliers(
    alphas: torch.Tensor, usable: torch.Tensor, z: float = OUTLIER_Z, min_scale: float = OUTLIER_MIN_SCALE
) -> torch.Tensor:
    """Bool mask of usable alphas that lie far from the others', by a robust statistic.

    Works on x = ln(alpha - 1), the log of the tail's mean log-excess inverse (Eq. 2 gives alpha - 1 =
    k / logsum), where layers' alphas spread evenly: a layer is an outlier when
    |x - median(x)| > z * max(1.4826 * MAD(x), min_scale). The MAD (1.4826 makes it a standard deviation for
    normal data) ignores up to half the layers being extreme, so one orthogonal or rank-one layer cannot
    hide itself by widening the scale. The floor sets the least deviation that can count: alpha - 1 within
    a factor e of the median's never does, which covers the component spread the paper reports inside one
    model (e.g. attention ~1.3-1.7 vs FFN ~1.9-2.1 for gradients, a factor ~3 in alpha - 1, is kept because
    such spreads also widen the MAD). Seen in a test run: a layer initialised orthogonal drifts to alpha 8.3
    (status "ok") while the others sit at 1.9-2.5; without this rule it takes multiplier s and squashes every
    other layer into [1, 1.3]. Needs at least ``OUTLIER_MIN_LAYERS`` usable alphas, else nothing is an outlier.
    """
    a = alphas.detach().to(torch.float64).cpu()
    ok = usable.cpu().bool() & torch.isfinite(a) & (a > 1.0)
    out = torch.zeros_like(ok)
    if int(ok.sum()) < OUTLIER_MIN_LAYERS:
        return out
    x = torch.log(a[ok] - 1.0)
    med = x.median()
    mad = (x - med).abs().median()
    scale = max(1.4826 * float(mad), min_scale)
    out[ok] = (x - med).abs() > z * scale
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
    outlier_z: float | None = OUTLIER_Z  # None: no outlier rule (see robust_outliers)

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
        if self.outlier_z is not None:
            check_real("outlier_z", self.outlier_z, 0.0, lo_open=True,
                       hint=" (robust standard deviations of ln(alpha - 1) beyond which an alpha is ignored; None turns the rule off)")
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
        self.outliers = torch.zeros(num_layers, dtype=torch.bool)  # excluded by robust_outliers at the last update

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

    def update(self, t: int, alphas: torch.Tensor, source: str) -> torch.Tensor:
        """Record alphas measured before step t and set new target multipliers; returns the outlier mask.

        NaN alphas and outliers (``robust_outliers``, unless ``outlier_z`` is None) keep their layer's
        previous multiplier and do not enter Eq. 3's range; ``alphas`` keeps the measured values for logging.
        """
        self.start = self.multipliers(t)
        self.alphas = alphas.detach().to(torch.float64).cpu().clone()
        z = self.config.outlier_z
        self.outliers = (
            robust_outliers(self.alphas, ~self.pinned, z) if z is not None else torch.zeros(self.num_layers, dtype=torch.bool)
        )
        mapped = torch.where(self.outliers, torch.full_like(self.alphas, float("nan")), self.alphas)
        self.target = llr_multipliers(mapped, self.config.s, pinned=self.pinned, previous=self.target)
        self.last_update, self.last_source = t, source
        self.num_updates += 1
        return self.outliers.clone()

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

    def add_layers(self, pinned: torch.Tensor) -> None:
        """Append layers (``add_param_group``): no alpha yet and multiplier s if pinned, else 1, until the next
        update measures them like the others."""
        pinned = pinned.cpu().bool().reshape(-1)
        k = pinned.numel()
        init = torch.where(pinned, torch.tensor(float(self.config.s), dtype=torch.float64), torch.tensor(1.0, dtype=torch.float64))
        self.pinned = torch.cat([self.pinned, pinned])
        self.alphas = torch.cat([self.alphas, torch.full((k,), float("nan"), dtype=torch.float64)])
        self.target = torch.cat([self.target, init])
        self.start = torch.cat([self.start, init])
        self.outliers = torch.cat([self.outliers, torch.zeros(k, dtype=torch.bool)])
        self.num_layers += k

    def state_dict(self) -> dict[str, Any]:
        return {
            "alphas": self.alphas.clone(),
            "target": self.target.clone(),
            "start": self.start.clone(),
            "last_update": self.last_update,
            "last_source": self.last_source,
            "num_updates": self.num_updates,
            "outliers": self.outliers.clone(),
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
        outliers = state.get("outliers")  # absent from checkpoints written before the outlier rule
        if outliers is not None and outliers.numel() != self.num_layers:
            raise ValueError(f"LLR state's outlier mask has {outliers.numel()} entries but this optimizer has "
                             f"{self.num_layers} layers; was it saved for another model?")
        self.outliers = torch.zeros(self.num_layers, dtype=torch.bool) if outliers is None else outliers.cpu().bool().clone()
