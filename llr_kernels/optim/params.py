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
    ``first_group``: index of the first group in the optimizer (``add_param_group``), for generated names.

    Names come from (name, tensor) pairs, a group's "param_names" list (torch's key, as torchtitan passes it), or
    ``model``. When every tensor's name is known the groups keep them under "param_names" (torch >= 2.6: a
    state_dict then names each parameter, and stacks that checkpoint by name rely on it); else no group has the key
    (torch wants all groups with names or none)."""
    if isinstance(params, nn.Module):
        model = params if model is None else model
        every = list(params.named_parameters())
        params = [(n, p) for n, p in every if p.requires_grad]
        if not params:
            what = (f"all {len(every)} of its parameters have requires_grad=False" if every else "it has no parameters")
            raise ValueError(f"the model ({type(model).__name__}) has no trainable parameters: {what}. Unfreeze the "
                             "ones to train (p.requires_grad_(True)) before building the optimizer")
    if isinstance(params, torch.Tensor):
        raise TypeError("params must be an nn.Module, an iterable of tensors, (name, tensor) pairs or param groups, not one tensor")
    items = list(params)
    if not items:
        raise ValueError("the optimizer got an empty parameter list: pass a model, its (named) parameters or param "
                         "groups holding at least one tensor")
    groups = items if isinstance(items[0], dict) else [{"params": items}]
    names = _param_name_map(model)
    out_groups, named, unnamed, all_known = [], [], [], True
    for gi, g in enumerate(groups, start=first_group):
        if not isinstance(g, dict) or "params" not in g:
            raise TypeError("param groups must all be dicts with a 'params' entry")
        ps = g["params"]
        ps = [ps] if isinstance(ps, torch.Tensor) else list(ps)
        given = g.get("param_names")
        if given is not None and len(given) != len(ps):
            raise ValueError(f"param group {gi} has {len(ps)} params but {len(given)} param_names; give one name per "
                             "parameter, in order")
        tensors, group_names = [], []
        for j, item in enumerate(ps):
            if isinstance(item, tuple) and len(item) == 2 and isinstance(item[1], torch.Tensor):
                name, p = item
            elif isinstance(item, torch.Tensor):
                p = item
                name = given[j] if given is not None else names.get(id(p))
                if name is None:
                    name = f"group{gi}.param{j}"
                    all_known = False
                    if p.dim() >= 2:
                        unnamed.append(name)
            else:
                raise TypeError(f"cannot read parameter entry of type {type(item).__name__}; use tensors or (name, tensor)")
            if p.is_complex():
                raise ValueError(f"parameter {name!r} is complex; LLR optimizers support real floating-point tensors only")
            tensors.append(p)
            group_names.append(name)
            named.append((name, p))
        out_groups.append({**{k: v for k, v in g.items() if k not in ("params", "param_names")}, "params": tensors,
                           "param_names": group_names})
    if not all_known:
        for g in out_groups:
            del g["param_names"]
    return out_groups, named, unnamed


def warn_unnamed(unnamed: list[str], who: str, *, muon: bool = False) -> None:
    """Warn (once per call site) that matrices without names are all classified as hidden linear layers; for
    LLRMuon (``muon=True``) also that they all go to Newton-Schulz, the embedding and the LM head included."""
    if not unnamed:
        return
    muon_part = (" and every one of them goes to the Muon (Newton-Schulz) group, the embedding and the LM head "
                 "included, which Muon is not meant for (they belong in its AdamW group)") if muon else ""
    warnings.warn(
        f"{who} got {len(unnamed)} weight matrices without names (e.g. model.parameters()): LLR cannot tell the "
        "embedding (pinned at s*lr) and the LM head from hidden layers without names, so every matrix is treated "
        f"as a hidden linear layer{muon_part}. Pass the model: {who}(model, ...), {who}(model.named_parameters(), ...), or "
        f"param groups with model=model (Hugging Face Trainer: optimizer_cls_and_kwargs="
        f"llr_kernels.integrations.hf.llr_optimizer_cls_and_kwargs(model, {who}, lr=...), which keeps the Trainer's "
        "decay / no-decay groups)",
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
