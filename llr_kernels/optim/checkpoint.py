"""Checkpoints of LLR optimizers: the "llr" entry of ``state_dict()``, its layer check, and the per-layer entries
that carry the same state through torch.distributed.checkpoint. (A torch.optim.AdamW checkpoint loads through
``LLRAdamW.load_torch_state_dict``, ``optim/adamw.py``.)

``state_dict()["llr"]`` names every layer without wrapper levels (``wrappers.normalize_name``), so a checkpoint
saved by an optimizer built on ``torch.compile(model)`` or ``DDP(model)`` loads into one built on the plain
model and back. Format history: 1 (no "format" key: names as the model spelled them, no shapes), 2 (normalised
names, "layer_shapes") and 3 (the same values also per layer, in each layer parameter's state, for
torch.distributed.checkpoint: see below); all load, names of any are compared after normalisation.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from ..layers import Layer
from ..policies import policy_code, policy_name
from ..spectral.rules import STATUS_CODES, STATUS_NOT_MEASURED
from .wrappers import normalize_name

if TYPE_CHECKING:
    from .base import LLROptimizer

FORMAT = 3


def check_layers(saved: dict[str, Any], layers: list[Layer]) -> None:
    """Raise ValueError naming the first layer where the checkpoint's "llr" entry and ``layers`` differ."""
    fmt = saved.get("format", 1)
    if not isinstance(fmt, int) or fmt > FORMAT:
        raise ValueError(f"this checkpoint's LLR state has format {fmt!r}, newer than this llr_kernels reads "
                         f"({FORMAT}); upgrade llr_kernels to load it")
    names = saved.get("layer_names")
    if names is None:
        raise ValueError("this checkpoint's 'llr' entry has no 'layer_names', so it cannot be matched to this "
                         "optimizer's layers; it was not written by LLROptimizer.state_dict()")
    theirs = [normalize_name(n) for n in names]
    mine = [normalize_name(l.name) for l in layers]
    shapes = saved.get("layer_shapes")
    for i in range(max(len(theirs), len(mine))):
        a = theirs[i] if i < len(theirs) else None
        b = mine[i] if i < len(mine) else None
        if a != b:
            raise ValueError(
                f"the checkpoint's LLR layers do not match this optimizer's: layer {i} is "
                f"{a if a is None else repr(a)} in the checkpoint but {b if b is None else repr(b)} here "
                f"({len(theirs)} layers saved, {len(mine)} here; names compared without wrapper levels such as "
                "'_orig_mod.' and 'module.'). Build the optimizer on the same model, with the same parameters in the "
                "same order, as the one that saved the checkpoint"
            )
        if shapes is not None and tuple(shapes[i]) != tuple(layers[i].shape):
            raise ValueError(
                f"the checkpoint's LLR layer {i} ({a!r}) has shape {tuple(shapes[i])} but this optimizer's has "
                f"{tuple(layers[i].shape)}: the checkpoint belongs to a model of another size"
            )


def llr_entry(opt: "LLROptimizer") -> dict[str, Any]:
    """The "llr" entry of ``opt.state_dict()``."""
    return {
        "format": FORMAT,
        "step": opt.llr_step,
        "policy": opt.llr.state_dict(),
        "layer_names": [normalize_name(l.name) for l in opt.layers],
        "layer_shapes": [list(l.shape) for l in opt.layers],
        "hill_status": list(opt.hill_status),
        "update_seconds": opt.llr_update_seconds,
    }


# ----- torch.distributed.checkpoint (DCP) -------------------------------------------------------------
# DCP's get/set_optimizer_state_dict keep only "state" and "param_groups" of an optimizer's state_dict (state keyed
# by parameter FQN and resharded under FSDP2), so the LLR state also travels per layer: in the state of the layer's
# parameter, under PER_LAYER_KEY, as 0-d tensors and ints (DCP's flattened format takes nothing else). Each entry
# also carries the values all layers share (step, last update, ...), so any one of them restores those.
PER_LAYER_KEY = "llr"
_SOURCES = ("", "grad", "weight")


def per_layer_entries(opt: "LLROptimizer") -> dict[int, dict[str, Any]]:
    """{layer index: its PER_LAYER_KEY entry}, for ``opt.state_dict()``."""
    p = opt.llr
    shared = {
        "format": FORMAT,
        "step": int(opt.llr_step),
        "last_update": -1 if p.last_update is None else int(p.last_update),
        "last_source": _SOURCES.index(p.last_source or ""),
        "num_updates": int(p.num_updates),
        "update_seconds": float(opt.llr_update_seconds),
        "policy": policy_code(p.name),
    }
    out = {}
    for i in range(len(opt.layers)):
        status = opt.hill_status[i]
        out[i] = {
            **shared,
            "alpha": p.alphas[i].clone(),
            "target": p.target[i].clone(),
            "start": p.start[i].clone(),
            "wd_target": p.wd_target[i].clone(),
            "wd_start": p.wd_start[i].clone(),
            "outlier": int(bool(p.outliers[i])),
            "status": STATUS_CODES.index(status) if status in STATUS_CODES else 0,
        }
    return out


def llr_entry_from_layers(opt: "LLROptimizer", entries: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """The "llr" entry of a state_dict rebuilt from the per-layer entries DCP brought back ({layer index: entry}).

    Layers without an entry (e.g. frozen parameters, whose state DCP does not keep) start fresh; the shared values
    come from the first entry."""
    if not entries:
        raise ValueError("this state_dict has no 'llr' entry and no per-layer LLR state: it was not saved by an LLR "
                         "optimizer")
    first = entries[min(entries)]
    fmt = int(first.get("format", FORMAT))
    if fmt > FORMAT:
        raise ValueError(f"this checkpoint's LLR state has format {fmt}, newer than this llr_kernels reads ({FORMAT}); "
                         "upgrade llr_kernels to load it")
    fresh = opt.llr.fresh()
    alphas, target, start = fresh.alphas.clone(), fresh.target.clone(), fresh.start.clone()
    wd_target, wd_start = fresh.wd_target.clone(), fresh.wd_start.clone()
    outliers = torch.zeros(len(opt.layers), dtype=torch.bool)
    status = [STATUS_NOT_MEASURED] * len(opt.layers)
    for i, e in entries.items():
        alphas[i], target[i], start[i] = (float(e[k]) for k in ("alpha", "target", "start"))
        if "wd_target" in e:  # absent before weight-decay multipliers
            wd_target[i], wd_start[i] = float(e["wd_target"]), float(e["wd_start"])
        outliers[i] = bool(int(e["outlier"]))
        code = int(e["status"])
        status[i] = STATUS_CODES[code] if 0 <= code < len(STATUS_CODES) else STATUS_NOT_MEASURED
    last_update = int(first["last_update"])
    code_of_policy = int(first.get("policy", 0))  # absent before the policy interface: LLR
    return {
        "format": FORMAT,
        "step": int(first["step"]),
        "policy": {"policy": policy_name(code_of_policy),
                   "alphas": alphas, "target": target, "start": start, "wd_target": wd_target, "wd_start": wd_start,
                   "last_update": None if last_update < 0 else last_update,
                   "last_source": _SOURCES[int(first["last_source"])] or None,
                   "num_updates": int(first["num_updates"]), "outliers": outliers},
        "layer_names": [normalize_name(l.name) for l in opt.layers],  # DCP matched the parameters by FQN already
        "layer_shapes": [list(l.shape) for l in opt.layers],
        "hill_status": status,
        "update_seconds": float(first["update_seconds"]),
    }
