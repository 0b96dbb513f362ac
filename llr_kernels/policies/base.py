"""What every layerwise policy shares: per-layer LR and weight-decay multipliers over training, resumable.

A policy is built from its config for the optimizer's layers (``config.build(layers)``). Before the optimizer's
t-th step (t = 0, 1, ...) the optimizer asks ``is_update_step(t)``; if so it measures each matrix layer's metric
(``metric`` / ``fit``, from the weights or, when ``source(t)`` is "grad", the gradients) and hands the values to
``update``, which sets new target multipliers. ``multipliers(t)`` / ``wd_multipliers(t)`` are what step t uses:
each tensor's LR is group lr x its layer's multiplier, its weight decay group weight_decay x its wd multiplier.
``ramping(t)`` says that multipliers change at step t without a measurement (a ramp, a schedule), so the optimizer
copies them to the device again. The state (metric values, targets, ramp starts, outliers) has the same layout
for every policy, which the checkpoint code (``optim/checkpoint.py``, DCP per-layer entries) relies on.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch

from ..layers import Layer


@dataclass
class _LayerInfo:
    """What a policy reads of a layer: its name and kind (``llr_kernels.layers.Layer`` has both)."""

    name: str
    kind: str


def _ones(n: int) -> torch.Tensor:
    return torch.ones(n, dtype=torch.float64)


@dataclass
class PolicyConfig:
    """Base of the policy configs: ``build(layers)`` makes the policy of an optimizer's layers (by default a
    ``policy_class`` with no layer pinned)."""

    policy_class = None  # the LayerwisePolicy subclass this config builds (a class attribute, not a field)

    def validate(self) -> "PolicyConfig":
        return self

    def build(self, layers: Sequence[Layer]) -> "LayerwisePolicy":
        return self.policy_class(self, len(layers), torch.zeros(len(layers), dtype=torch.bool), list(layers))


_REGISTRY: dict[str, tuple[int, type]] = {}  # policy name -> (checkpoint code, class)


def register_policy(code: int):
    """Class decorator: make a LayerwisePolicy subclass known by its ``name``, with the integer ``code`` that
    checkpoints store for it (torch.distributed.checkpoint entries hold ints, not strings). Codes are forever:
    a new policy takes a new one."""

    def deco(cls: type) -> type:
        taken = {c: n for n, (c, _) in _REGISTRY.items()}
        if taken.get(code, cls.name) != cls.name:
            raise ValueError(f"policy code {code} is taken by {taken[code]!r}")
        _REGISTRY[cls.name] = (code, cls)
        return cls

    return deco


def policy_code(name: str) -> int:
    """The checkpoint code of a registered policy name, -1 for an unknown one."""
    return _REGISTRY[name][0] if name in _REGISTRY else -1


def policy_name(code: int) -> str:
    """The policy name of a checkpoint code ("unknown" when no registered policy has it)."""
    return next((n for n, (c, _) in _REGISTRY.items() if c == code), "unknown")


class LayerwisePolicy:
    """Per-layer multiplier state with a ramp and a resumable state_dict; subclasses decide the targets.

    A subclass sets ``name`` and overrides ``initial_targets`` (multipliers before any measurement), and, if it
    measures, ``is_update_step`` / ``source`` / ``targets_from`` (measured values -> new targets); a schedule
    overrides ``multipliers`` and ``ramping``.
    """

    name = "base"
    metric = "alpha"  # what the optimizer measures at update steps (llr_kernels.spectral.metrics)
    fit = "median"  # the power-law fit, for metric "alpha" / "alpha_hat"

    def __init__(self, config: PolicyConfig, num_layers: int, pinned: torch.Tensor,
                 layers: Sequence[Layer] | None = None) -> None:
        self.config = config.validate()
        self.num_layers = num_layers
        self.pinned = pinned.cpu().bool().reshape(-1)
        if self.pinned.numel() != num_layers:
            raise ValueError(f"pinned has {self.pinned.numel()} entries for {num_layers} layers")
        self.kinds = [l.kind for l in layers] if layers is not None else ["linear"] * num_layers
        self.names = [l.name for l in layers] if layers is not None else [f"layer{i}" for i in range(num_layers)]
        self.alphas = torch.full((num_layers,), float("nan"), dtype=torch.float64)  # last measured metric values
        self.target = self.initial_targets(0, num_layers)
        self.start = self.target.clone()
        self.wd_target = _ones(num_layers)
        self.wd_start = _ones(num_layers)
        self.last_update: int | None = None
        self.last_source: str | None = None
        self.num_updates = 0
        self.outliers = torch.zeros(num_layers, dtype=torch.bool)  # excluded at the last update

    # ----- what subclasses decide ----------------------------------------------------------------------------
    def initial_targets(self, first: int, count: int) -> torch.Tensor:
        """Multipliers of layers first .. first + count - 1 before any measurement (default 1)."""
        return _ones(count)

    def pins(self, layers: Sequence[Layer]) -> torch.Tensor:
        """Bool mask of these layers held at the top of the range (none, unless the policy pins some)."""
        return torch.zeros(len(layers), dtype=torch.bool)

    @property
    def measures(self) -> bool:
        """Whether this policy ever measures layers (False: the optimizer never runs the spectral update)."""
        return False

    def frozen(self, t: int) -> bool:
        return False

    def is_update_step(self, t: int) -> bool:
        return False

    def source(self, t: int) -> str:
        """"grad" or "weight": what the measurement before step t reads."""
        return "weight"

    def phase(self, t: int) -> str:
        return "frozen" if self.frozen(t) else self.source(t)

    def targets_from(self, values: torch.Tensor, source: str) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """(LR targets, weight-decay targets or None to keep them, outlier mask) from values measured on
        ``source`` ("grad" or "weight")."""
        raise NotImplementedError(f"policy {self.name!r} does not measure layers")

    # ----- the shared machinery -----------------------------------------------------------------------------
    def update(self, t: int, values: torch.Tensor, source: str) -> torch.Tensor:
        """Record the values measured before step t and set new targets; returns the outlier mask."""
        values = values.detach().to(torch.float64).cpu().clone()
        return self.apply_targets(t, values, source, *self.targets_from(values, source))

    def apply_targets(self, t: int, values: torch.Tensor, source: str, target: torch.Tensor,
                      wd_target: torch.Tensor | None, outliers: torch.Tensor) -> torch.Tensor:
        """Take targets decided before step t (by ``targets_from`` here, or over several optimizers' layers by a
        ``PolicyGroup``): ramps start from the multipliers in force; returns the outlier mask."""
        self.start = self.multipliers(t)
        self.wd_start = self.wd_multipliers(t)
        self.alphas = values.detach().to(torch.float64).cpu().clone()
        self.target, self.outliers = target.clone(), outliers.clone()
        if wd_target is not None:
            self.wd_target = wd_target.clone()
        self.last_update, self.last_source = t, source
        self.num_updates += 1
        return self.outliers.clone()

    @property
    def ramp_steps(self) -> int:
        return int(getattr(self.config, "ramp_steps", 0))

    def _ramp(self, start: torch.Tensor, target: torch.Tensor, t: int) -> torch.Tensor:
        r = self.ramp_steps
        if r == 0 or self.last_update is None:
            return target.clone()
        frac = min(1.0, (t - self.last_update + 1) / r)
        return start + (target - start) * frac

    def multipliers(self, t: int) -> torch.Tensor:
        """LR multipliers in force at step t (float64, CPU), following the ramp if one is set."""
        return self._ramp(self.start, self.target, t)

    def wd_multipliers(self, t: int) -> torch.Tensor:
        """Weight-decay multipliers in force at step t (float64, CPU; 1 unless the policy sets them)."""
        return self._ramp(self.wd_start, self.wd_target, t)

    def ramping(self, t: int) -> bool:
        """True when the multipliers of step t differ from step t - 1's without a measurement."""
        r = self.ramp_steps
        return r > 0 and self.last_update is not None and t - self.last_update + 1 <= r

    def add_layers(self, pinned: torch.Tensor, layers: Sequence[Layer] | None = None) -> None:
        """Append layers (``add_param_group``): no value yet, initial multipliers, until the next update."""
        pinned = pinned.cpu().bool().reshape(-1)
        k = pinned.numel()
        self.kinds += [l.kind for l in layers] if layers is not None else ["linear"] * k
        self.names += [l.name for l in layers] if layers is not None else [f"layer{self.num_layers + i}" for i in range(k)]
        self.pinned = torch.cat([self.pinned, pinned])
        init = self.initial_targets(self.num_layers, k)
        self.alphas = torch.cat([self.alphas, torch.full((k,), float("nan"), dtype=torch.float64)])
        self.target = torch.cat([self.target, init])
        self.start = torch.cat([self.start, init])
        self.wd_target = torch.cat([self.wd_target, _ones(k)])
        self.wd_start = torch.cat([self.wd_start, _ones(k)])
        self.outliers = torch.cat([self.outliers, torch.zeros(k, dtype=torch.bool)])
        self.num_layers += k

    def fresh(self) -> "LayerwisePolicy":
        """A new policy of the same config and layers, with no history."""
        layers = [_LayerInfo(n, k) for n, k in zip(self.names, self.kinds)]
        return type(self)(self.config, self.num_layers, self.pinned, layers)  # type: ignore[arg-type]

    def state_dict(self) -> dict[str, Any]:
        return {
            "policy": self.name,
            "alphas": self.alphas.clone(),
            "target": self.target.clone(),
            "start": self.start.clone(),
            "wd_target": self.wd_target.clone(),
            "wd_start": self.wd_start.clone(),
            "last_update": self.last_update,
            "last_source": self.last_source,
            "num_updates": self.num_updates,
            "outliers": self.outliers.clone(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        saved = state.get("policy", "llr")  # checkpoints before the policy interface were all LLR
        if saved != self.name:
            raise ValueError(f"this checkpoint was saved with layerwise policy {saved!r} but this optimizer uses "
                             f"{self.name!r}; build the optimizer with policy={saved!r} to resume it")
        n = state["target"].numel()
        if n != self.num_layers:
            raise ValueError(f"LLR state has {n} layers but this optimizer has {self.num_layers}; was it saved for another model?")
        self.alphas = state["alphas"].to(torch.float64).clone()
        self.target = state["target"].to(torch.float64).clone()
        self.start = state["start"].to(torch.float64).clone()
        wd_t, wd_s = state.get("wd_target"), state.get("wd_start")  # absent before weight-decay multipliers
        self.wd_target = _ones(n) if wd_t is None else wd_t.to(torch.float64).clone()
        self.wd_start = _ones(n) if wd_s is None else wd_s.to(torch.float64).clone()
        self.last_update = state["last_update"]
        self.last_source = state["last_source"]
        self.num_updates = state["num_updates"]
        outliers = state.get("outliers")  # absent from checkpoints written before the outlier rule
        if outliers is not None and outliers.numel() != self.num_layers:
            raise ValueError(f"LLR state's outlier mask has {outliers.numel()} entries but this optimizer has "
                             f"{self.num_layers} layers; was it saved for another model?")
        self.outliers = torch.zeros(self.num_layers, dtype=torch.bool) if outliers is None else outliers.cpu().bool().clone()
