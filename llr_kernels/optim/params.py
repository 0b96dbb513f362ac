"""Parameters and param groups: every accepted ``params`` form as named param groups, the layers they make, and the
per-parameter values the optimizers derive from a group and a layer (LR, weight decay, state dtype)."""
from __future__ import annotations

import os
import sys
import warnings
from typing import Any

import torch
from torch import nn

from ..layers import Classifier, Layer, classify_parameters
from .wrappers import normalize_name


def default_state_dtype(state_dtype: torch.dtype | None, param_dtype: torch.dtype) -> torch.dtype:
    """Optimizer state dtype of a parameter: ``state_dtype`` when given, else float32 (float64 for float64 params)."""
    return state_dtype or (torch.float64 if param_dtype == torch.float64 else torch.float32)


def per_layer(group_values: Any, group_index: Any, multipliers: Any, layer_index: Any) -> Any:
    """group value x layer multiplier, per tensor: what each tensor's LR (and weight decay) is. Works alike on
    device tensors indexed by index tensors (the fused steps) and on host values indexed by ints (stats)."""
    return group_values[group_index] * multipliers[layer_index]


def _param_name_map(model: nn.Module | None) -> dict[int, str]:
    if model is None:
        return {}
    return {id(layer.param): layer.name for layer in classify_parameters(model)}


def normalize_groups(
    params: Any, model: nn.Module | None, first_group: int = 0
) -> tuple[list[dict], list[tuple[str, torch.Tensor]], list[str]]:
    """Turn any accepted ``params`` form into param groups of tensors, (name, tensor) pairs in order, and the
    generated names of matrices that had none (no pair, not found in ``model``): see ``warn_unnamed``.
    ``first_group``: index of the first group in the optimizer (``add_param_group``), for generated names."""
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
    out_groups, named, unnamed = [], [], []
    for gi, g in enumerate(groups, start=first_group):
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
                name = names.get(id(p))
                if name is None:
                    name = f"group{gi}.param{j}"
                    if p.dim() >= 2:
                        unnamed.append(name)
            else:
                raise TypeError(f"cannot read parameter entry of type {type(item).__name__}; use tensors or (name, tensor)")
            if p.is_complex():
                raise ValueError(f"parameter {name!r} is complex; LLR optimizers support real floating-point tensors only")
            tensors.append(p)
            named.append((name, p))
        out_groups.append({**{k: v for k, v in g.items() if k != "params"}, "params": tensors})
    return out_groups, named, unnamed


def warn_unnamed(unnamed: list[str], who: str) -> None:
    """Warn (once per call site) that matrices without names are all classified as hidden linear layers."""
    if not unnamed:
        return
    warnings.warn(
        f"{who} got {len(unnamed)} weight matrices without names (e.g. model.parameters()): LLR cannot tell the "
        "embedding (pinned at s*lr) and the LM head from hidden layers without names, so every matrix is treated "
        f"as a hidden linear layer. Pass the model: {who}(model, ...), {who}(model.named_parameters(), ...), or "
        f"param groups with model=model (Hugging Face Trainer: optimizers=({who}(model, ...), scheduler) or "
        f"optimizer_cls_and_kwargs=({who}, {{'model': model, ...}}))",
        UserWarning,
        stacklevel=caller_stacklevel(),
    )


def classify_named(
    named: list[tuple[str, torch.Tensor]], model: nn.Module | None, classify: Classifier | None
) -> list[Layer]:
    """Layers of the optimizer's parameters, in order; with a model, kinds also use module types. Names drop
    the levels that wrappers insert (``_orig_mod.``, ``module.``, ...: ``wrappers.normalize_name``)."""
    layers = classify_parameters(named, classify=classify)
    if model is not None:
        by_id = {id(layer.param): layer for layer in classify_parameters(model, classify=classify)}
        layers = [by_id.get(id(layer.param), layer) for layer in layers]
    for layer in layers:
        layer.name = normalize_name(layer.name)
        layer.aliases = list(dict.fromkeys(normalize_name(a) for a in layer.aliases))
    return layers


def reject_sparse_embeddings(model: nn.Module | None, stepped: dict[int, int]) -> None:
    """Fail at construction, not at the first step, for embeddings that would produce sparse gradients."""
    if model is None:
        return
    for name, mod in model.named_modules():
        if isinstance(mod, (nn.Embedding, nn.EmbeddingBag)) and mod.sparse and id(mod.weight) in stepped:
            raise ValueError(
                f"{name or 'the model'} is an {type(mod).__name__} with sparse=True: LLR optimizers step dense "
                "gradients only; build it with sparse=False"
            )


def caller_stacklevel() -> int:
    """The ``stacklevel`` that points a warning at the first frame outside llr_kernels and torch (the user's
    ``opt.step()``), whatever decorators lie in between."""
    skip = (os.path.dirname(os.path.dirname(os.path.abspath(__file__))), os.path.dirname(torch.__file__))
    frame, level = sys._getframe(1), 1
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(skip):
        frame, level = frame.f_back, level + 1
    return level
