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

from dataclasses import dataclass
from typing import Sequence

import torch

from .._checks import check_bool, check_choice, check_int, check_real
from ..layers import Layer
from ..spectral.fits import FIT_METHODS
from ..spectral.metrics import METRICS as SPECTRAL_METRICS
from .base import LayerwisePolicy, PolicyConfig, register_policy
from .maps import MAPS, llr_multipliers, map_values

METRICS = SPECTRAL_METRICS + ("grad_norm",)  # what a layer's LR can follow (the paper's Fig. 7 ablation)
FITS = FIT_METHODS  # the power-law fits of "alpha" / "alpha_hat" (Fig. 8)


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
class LLRConfig(PolicyConfig):
    """Hyperparameters of the LLR policy (paper defaults; s = 3 for AdamW, 2 for Muon).

    Beyond the paper: ``map`` (the TempBalance family's alpha -> LR maps, ``policies.maps``) and ``s_min`` (the
    lower ratio; Eq. 3 uses 1); ``metric`` / ``fit`` (what is measured: PL_Alpha_Hill by the median Hill fit, as
    the paper, or the ablations of its Fig. 7 / 8); ``shuffle`` (a control: the same multipliers, dealt to the
    layers at random at every update, seeded by ``seed``); ``bias_follows_matrix`` (a bias takes its matrix's
    multiplier, as the public code's param groups do, instead of 1); ``wd_range`` (AlphaDecay: weight-decay
    multipliers mapped linearly from alpha into [lo, hi], higher alpha more decay; None: uniform decay).
    """

    s: float = 3.0
    interval: int = 500
    total_steps: int | None = None
    grad_phase: float = 0.05
    active_until: float = 1.0
    ramp_steps: int = 0
    pin_embedding: bool = True
    pin_lm_head: bool = False
    outlier_z: float | None = OUTLIER_Z  # None: no outlier rule (see robust_outliers)
    map: str = "linear"
    s_min: float = 1.0
    metric: str = "alpha"
    fit: str = "median"
    shuffle: bool = False
    seed: int = 0
    bias_follows_matrix: bool = False
    wd_range: tuple[float, float] | None = None

    def validate(self) -> "LLRConfig":
        """Check every field (TypeError for a wrong type, ValueError for a value out of range); returns self."""
        check_real("s_min", self.s_min, 0.0, lo_open=True, hint=" (the lowest multiplier; Eq. 3 uses 1)")
        check_real("s", self.s, self.s_min, hint=" (LRs span [s_min*lr, s*lr]; s=1 is plain AdamW/Muon; paper: 3 AdamW, 2 Muon)")
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
        check_choice("map", self.map, MAPS, hint=" (how alphas become multipliers; 'linear' is the paper's Eq. 3)")
        check_choice("metric", self.metric, METRICS, hint=" (what is measured per layer; 'alpha' is PL_Alpha_Hill)")
        check_choice("fit", self.fit, FITS, hint=" (the power-law fit; 'median' is the paper's Hill estimator)")
        if self.fit != "median" and self.metric not in ("alpha", "alpha_hat"):
            raise ValueError(f"fit={self.fit!r} applies to the power-law metrics 'alpha' and 'alpha_hat', not "
                             f"metric={self.metric!r}; leave fit='median'")
        check_bool("shuffle", self.shuffle)
        check_int("seed", self.seed, 0, hint=" (seed of the shuffle control)")
        check_bool("bias_follows_matrix", self.bias_follows_matrix)
        if self.wd_range is not None:
            if not (isinstance(self.wd_range, (tuple, list)) and len(self.wd_range) == 2):
                raise TypeError(f"wd_range must be None or a pair (lo, hi) of weight-decay multipliers, got {self.wd_range!r}")
            lo = check_real("wd_range[0]", self.wd_range[0], 0.0, hint=" (the smallest weight-decay multiplier)")
            check_real("wd_range[1]", self.wd_range[1], lo, hint=" (the largest weight-decay multiplier, >= wd_range[0])")
        return self

    def build(self, layers: Sequence[Layer]) -> "LLRPolicy":
        return LLRPolicy(self, len(layers), pinned_of(layers, self), list(layers))


def pinned_of(layers: Sequence[Layer], config: LLRConfig) -> torch.Tensor:
    """Bool mask of the layers pinned at s: the embedding (pin_embedding) and the LM head (pin_lm_head)."""
    return torch.tensor(
        [(l.kind == "embedding" and config.pin_embedding) or (l.kind == "lm_head" and config.pin_lm_head) for l in layers],
        dtype=torch.bool,
    )


@register_policy(code=0)
class LLRPolicy(LayerwisePolicy):
    """Algorithm 1's schedule and the multiplier state of every layer, with a resumable state_dict.

    Steps are counted from 0: before the optimizer's t-th step (t = 0, 1, ...) ``is_update_step(t)`` says
    whether alphas are measured now and ``source(t)`` whether from gradients or weights.
    """

    name = "llr"
    config: LLRConfig

    def __init__(self, config: LLRConfig, num_layers: int, pinned: torch.Tensor,
                 layers: Sequence[Layer] | None = None) -> None:
        super().__init__(config, num_layers, pinned, layers)
        self.metric, self.fit = config.metric, config.fit

    def initial_targets(self, first: int, count: int) -> torch.Tensor:
        s = torch.tensor(float(self.config.s), dtype=torch.float64)
        return torch.where(self.pinned[first:first + count], s, torch.tensor(1.0, dtype=torch.float64))

    def pins(self, layers: Sequence[Layer]) -> torch.Tensor:
        return pinned_of(layers, self.config)

    @property
    def measures(self) -> bool:
        return True

    def frozen(self, t: int) -> bool:
        """True once multipliers no longer change (past active_until * total_steps)."""
        c = self.config
        return c.total_steps is not None and c.active_until < 1.0 and t >= c.active_until * c.total_steps

    def is_update_step(self, t: int) -> bool:
        return t % self.config.interval == 0 and not self.frozen(t)

    def source(self, t: int) -> str:
        """"grad" during the first grad_phase of training (t/T <= p, Algorithm 1), else "weight"."""
        c = self.config
        if c.metric == "grad_norm":
            return "grad"
        if c.total_steps is None or c.grad_phase <= 0.0:
            return "weight"
        return "grad" if t / c.total_steps <= c.grad_phase else "weight"

    def targets_from(self, values: torch.Tensor, source: str) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """NaN values and outliers (``robust_outliers``, for alphas, unless ``outlier_z`` is None) keep their
        layer's previous multiplier and do not enter the map's range. Weight-decay targets (``wd_range``) come
        from weight measurements only, as AlphaDecay's, over the hidden matrices (not the embedding or LM head)."""
        c = self.config
        if c.outlier_z is not None and c.metric == "alpha":
            outliers = robust_outliers(values, ~self.pinned, c.outlier_z)
        else:
            outliers = torch.zeros(self.num_layers, dtype=torch.bool)
        mapped = torch.where(outliers, torch.full_like(values, float("nan")), values)
        if c.map == "linear" and c.s_min == 1.0:
            target = llr_multipliers(mapped, c.s, pinned=self.pinned, previous=self.target)
        else:
            target = map_values(mapped, c.s_min, c.s, kind=c.map, pinned=self.pinned, previous=self.target)
        if c.shuffle:
            target = self._shuffled(target, mapped)
        if c.bias_follows_matrix:
            for i, j in self._followers().items():
                target[i] = target[j]
        wd = None
        if c.wd_range is not None and source == "weight":
            hidden = torch.tensor([k not in ("embedding", "lm_head") for k in self.kinds]) & ~self.pinned
            wd = map_values(torch.where(hidden, mapped, torch.full_like(mapped, float("nan"))),
                            float(c.wd_range[0]), float(c.wd_range[1]), previous=self.wd_target)
            if c.bias_follows_matrix:
                for i, j in self._followers().items():
                    wd[i] = wd[j]
        return target, wd, outliers

    def _shuffled(self, target: torch.Tensor, mapped: torch.Tensor) -> torch.Tensor:
        """The "llr-shuffled" control: the mapped layers' multipliers permuted among them (seeded per update)."""
        usable = torch.nonzero(torch.isfinite(mapped) & ~self.pinned).flatten()
        g = torch.Generator().manual_seed(int(self.config.seed) * 1_000_003 + self.num_updates)
        perm = usable[torch.randperm(usable.numel(), generator=g)]
        out = target.clone()
        out[usable] = target[perm]
        return out

    def _followers(self) -> dict[int, int]:
        """{index of a bias: index of its matrix}, matched by name ("x.bias" follows "x.weight")."""
        index = {n: i for i, n in enumerate(self.names)}
        out = {}
        for i, n in enumerate(self.names):
            if n.endswith(".bias") and self.kinds[i] == "vector":
                j = index.get(n[: -len(".bias")] + ".weight")
                if j is not None and self.kinds[j] not in ("vector", "frozen"):
                    out[i] = j
        return out
