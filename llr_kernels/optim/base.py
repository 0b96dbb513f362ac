"""What every LLR optimizer shares: layers, the policy, the spectral update, per-tensor LRs, state_dict.

A subclass implements ``_step_params(group_params)`` (the actual update with per-tensor LRs); this base
decides, before each step, whether alphas are re-measured (Algorithm 1), and makes each tensor's LR
``group["lr"] * multiplier(layer)`` so that any torch.optim.lr_scheduler, which only edits group["lr"],
composes unchanged.
"""
from __future__ import annotations

import time
from typing import Any, Callable

import torch
from torch import nn

from .._checks import check_choice, check_int
from ..dispatch import BACKENDS, has_impl, unavailable_reason
from ..layers import Classifier, Layer, classify_parameters
from ..policy import LLRConfig, LLRPolicy
from ..spectral import hill_alpha
from ..spectral.hill import METHODS, VARIANTS


def _param_name_map(model: nn.Module | None) -> dict[int, str]:
    if model is None:
        return {}
    return {id(layer.param): layer.name for layer in classify_parameters(model)}


def _normalize_groups(params: Any, model: nn.Module | None) -> tuple[list[dict], list[tuple[str, torch.Tensor]]]:
    """Turn any accepted ``params`` form into param groups of tensors plus (name, tensor) pairs in order."""
    if isinstance(params, nn.Module):
        model = params if model is None else model
        params = [(n, p) for n, p in params.named_parameters() if p.requires_grad]
    if isinstance(params, torch.Tensor):
        raise TypeError("params must be an nn.Module, an iterable of tensors, (name, tensor) pairs or param groups, not one tensor")
    items = list(params)
    if not items:
        raise ValueError("the optimizer got an empty parameter list; pass a model or its parameters")
    groups = items if isinstance(items[0], dict) else [{"params": items}]
    names = _param_name_map(model)
    out_groups, named = [], []
    for gi, g in enumerate(groups):
        if not isinstance(g, dict) or "params" not in g:
            raise TypeError("param groups must all be dicts with a 'params' entry")
        ps = g["params"]
        ps = [ps] if isinstance(ps, torch.Tensor) else list(ps)
        tensors = []
        for j, item in enumerate(ps):
            if isinstance(item, tuple) and len(item) == 2 and isinstance(item[1], torch.Tensor):
                name, p = item
            elif isinstance(item, torch.Tensor):
                p = item
                name = names.get(id(p), f"group{gi}.param{j}")
            else:
                raise TypeError(f"cannot read parameter entry of type {type(item).__name__}; use tensors or (name, tensor)")
            if p.is_complex():
                raise ValueError(f"parameter {name!r} is complex; LLR optimizers support real floating-point tensors only")
            tensors.append(p)
            named.append((name, p))
        out_groups.append({**{k: v for k, v in g.items() if k != "params"}, "params": tensors})
    return out_groups, named


def classify_named(
    named: list[tuple[str, torch.Tensor]], model: nn.Module | None, classify: Classifier | None
) -> list[Layer]:
    """Layers of the optimizer's parameters, in order; with a model, kinds also use module types."""
    layers = classify_parameters(named, classify=classify)
    if model is not None:
        by_id = {id(layer.param): layer for layer in classify_parameters(model, classify=classify)}
        layers = [by_id.get(id(layer.param), layer) for layer in layers]
    return layers


def clip_all_grads(params: list[torch.Tensor], max_grad_norm: float) -> torch.Tensor:
    """Clip the global grad norm over ``params`` in place (all ranks for DTensors); returns the plain norm."""
    norm = torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
    full = getattr(norm, "full_tensor", None)
    return full() if callable(full) else norm


def check_backend(arg: str, backend: str, ops: tuple[str, ...], params: list[torch.Tensor]) -> None:
    """Raise ValueError now if an explicit ``backend`` cannot run one of ``ops`` on these params' devices
    (not installed, no CUDA and no TRITON_INTERPRET=1, extension disabled or not built, no implementation)."""
    if backend == "auto" or not params:
        return
    for op in ops:
        if not has_impl(op, backend):
            raise ValueError(f"{arg}={backend!r} has no implementation of {op!r}; use {arg}='auto' or 'torch'")
    for device in {p.device for p in params}:
        why = unavailable_reason(backend, device)
        if why is not None:
            raise ValueError(f"{arg}={backend!r} cannot run on {device}: {why}; use {arg}='auto' or 'torch'")
    if backend != "torch":
        for p in params:
            if not p.is_contiguous():
                raise ValueError(
                    f"{arg}={backend!r} needs contiguous parameters, but one of shape {tuple(p.shape)} is not; "
                    f"use {arg}='torch', or make the parameter contiguous"
                )


def check_spectral_args(hill_method: Any, hill_variant: Any, min_eigs: Any) -> None:
    check_choice("hill_method", hill_method, METHODS, hint=" (how alphas are computed; 'auto' picks per matrix)")
    check_choice("hill_variant", hill_variant, VARIANTS, hint=" ('paper' = Eq. 2, 'reference' = the public code's indices)")
    check_int("min_eigs", min_eigs, 2, hint=" (matrices with fewer eigenvalues get alpha = NaN; public code: 50)")


def check_model_args(model: Any, classify: Any) -> None:
    if model is not None and not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module (it names the parameters) or None, got {type(model).__name__}")
    if classify is not None and not callable(classify):
        raise TypeError(f"classify must be a callable (name, param, module) -> kind or None, got {type(classify).__name__}")


def _full(t: torch.Tensor) -> torch.Tensor:
    """The whole matrix of a possibly sharded tensor (FSDP2/DTensor); plain tensors pass through."""
    full = getattr(t, "full_tensor", None)
    return full() if callable(full) else t


class LLROptimizer(torch.optim.Optimizer):
    """Base of LLRAdamW / LLRMuon. See those classes for the user-facing arguments."""

    def __init__(
        self,
        params: Any,
        defaults: dict[str, Any],
        *,
        llr: LLRConfig,
        model: nn.Module | None = None,
        classify: Classifier | None = None,
        backend: str = "auto",
        hill_method: str = "auto",
        hill_variant: str = "paper",
        min_eigs: int = 50,
    ) -> None:
        llr.validate()
        check_choice("backend", backend, BACKENDS, hint=" (see llr_kernels.dispatch)")
        check_spectral_args(hill_method, hill_variant, min_eigs)
        check_model_args(model, classify)
        self.backend = backend
        groups, named = _normalize_groups(params, model)
        super().__init__(groups, defaults)
        if model is None and isinstance(params, nn.Module):
            model = params
        self.layers: list[Layer] = classify_named(named, model, classify)
        self._layer_index = {id(layer.param): i for i, layer in enumerate(self.layers)}
        pinned = torch.tensor(
            [(l.kind == "embedding" and llr.pin_embedding) or (l.kind == "lm_head" and llr.pin_lm_head) for l in self.layers],
            dtype=torch.bool,
        )
        self.llr = LLRPolicy(llr, len(self.layers), pinned)
        self.hill_method, self.hill_variant, self.min_eigs = hill_method, hill_variant, min_eigs
        self.llr_step = 0
        self.llr_update_seconds = 0.0
        self.hill_status: list[str] = ["not_measured"] * len(self.layers)  # per layer, from the last update

    # ----- layers and multipliers -------------------------------------------------------------------
    def layer_of(self, p: torch.Tensor) -> int:
        return self._layer_index[id(p)]

    def measured_layers(self) -> list[int]:
        """Indices of layers whose alpha is measured: every matrix (pinned ones too, for logging only)."""
        return [i for i, l in enumerate(self.layers) if l.is_matrix]

    def _spectral_matrix(self, layer: Layer, source: str) -> torch.Tensor | None:
        """The matrix whose spectrum sets this layer's alpha; subclasses may choose another (Muon)."""
        if source == "grad":
            return None if layer.param.grad is None else _full(layer.param.grad)
        return _full(layer.param.detach())

    @torch.no_grad()
    def update_alphas(self, t: int | None = None) -> torch.Tensor:
        """Measure every layer's alpha now and set new multipliers (normally called by ``step``)."""
        t = self.llr_step if t is None else t
        source = self.llr.source(t)
        start = time.perf_counter()
        idx, mats = [], []
        for i in self.measured_layers():
            m = self._spectral_matrix(self.layers[i], source)
            if m is not None:
                idx.append(i)
                mats.append(m)
        alphas = torch.full((len(self.layers),), float("nan"), dtype=torch.float64)
        status = ["vector" if not l.is_matrix else "no_grad" for l in self.layers]
        if mats:
            res = hill_alpha(mats, method=self.hill_method, variant=self.hill_variant, min_eigs=self.min_eigs, return_status=True)
            alphas[idx] = res.alpha
            for i, st in zip(idx, res.status):
                status[i] = st
        self.llr.update(t, alphas, source)
        self.hill_status = status
        self.llr_update_seconds += time.perf_counter() - start
        return alphas

    def multipliers(self) -> torch.Tensor:
        """Multipliers in force for the next step (float64, CPU, one per layer)."""
        return self.llr.multipliers(self.llr_step)

    def layer_stats(self) -> list[dict[str, Any]]:
        """Per layer: name, kind, shape, alpha, multiplier, LR of the next step, and the Hill status."""
        mult = self.multipliers()
        group_lr = {id(p): g["lr"] for g in self.param_groups for p in g["params"]}
        stats = []
        for i, layer in enumerate(self.layers):
            base = group_lr.get(id(layer.param), float("nan"))
            stats.append(
                {
                    "name": layer.name,
                    "kind": layer.kind,
                    "shape": layer.shape,
                    "alpha": float(self.llr.alphas[i]),
                    "multiplier": float(mult[i]),
                    "lr": float(base) * float(mult[i]),
                    "status": self.hill_status[i],
                }
            )
        return stats

    # ----- step -------------------------------------------------------------------------------------
    def _step_params(self, multipliers: torch.Tensor) -> None:
        raise NotImplementedError

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """One optimizer step; re-measures alphas first when Algorithm 1 says so."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        if self.llr.is_update_step(self.llr_step):
            self.update_alphas(self.llr_step)
        self._step_params(self.llr.multipliers(self.llr_step))
        self.llr_step += 1
        return loss

    # ----- checkpointing ----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        sd = super().state_dict()
        sd["llr"] = {
            "step": self.llr_step,
            "policy": self.llr.state_dict(),
            "layer_names": [l.name for l in self.layers],
            "hill_status": list(self.hill_status),
            "update_seconds": self.llr_update_seconds,
        }
        return sd

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state_dict = dict(state_dict)
        llr = state_dict.pop("llr", None)
        if llr is None:
            raise ValueError("this state_dict has no 'llr' entry: it was not saved by an LLR optimizer")
        names = [l.name for l in self.layers]
        if llr["layer_names"] != names:
            raise ValueError("the saved LLR layers do not match this optimizer's layers (different model or parameter order)")
        super().load_state_dict(state_dict)
        self._restore_state_dtypes(state_dict["state"])
        self.llr.load_state_dict(llr["policy"])
        self.llr_step = int(llr["step"])
        self.hill_status = list(llr["hill_status"])
        self.llr_update_seconds = float(llr["update_seconds"])
        self._on_state_loaded()

    def _restore_state_dtypes(self, saved: dict[Any, dict[str, Any]]) -> None:
        """Undo torch's cast of loaded state to the param dtype: fp32 moments of bf16 params stay fp32."""
        params = [p for g in self.param_groups for p in g["params"]]
        for i, p in enumerate(params):
            for key, value in saved.get(i, {}).items():
                cur = self.state[p].get(key)
                if isinstance(value, torch.Tensor) and isinstance(cur, torch.Tensor) and cur.dtype != value.dtype:
                    self.state[p][key] = value.to(device=cur.device, copy=True)

    def _on_state_loaded(self) -> None:
        """Hook for subclasses that cache buffers built from state."""
