"""Undo the module levels that wrappers add to parameter names.

torch.compile (``_orig_mod.``), DDP / DataParallel (a leading ``module.``), FSDP1 (``_fsdp_wrapped_module.``)
and activation checkpointing (``_checkpoint_wrapped_module.``) insert module levels into parameter names.
Layer names drop them (``normalize_name``), so ``layer_stats()`` reads the same under any wrapper and a
checkpoint saved under one wrapper loads under another. (Optimizer wrappers: ``stats.unwrap``.)
"""
from __future__ import annotations

# Module levels inserted at any depth (torch.compile of a submodule, FSDP1 / checkpoint wrapping per block).
WRAPPER_LEVELS = ("_orig_mod", "_fsdp_wrapped_module", "_checkpoint_wrapped_module")
# Levels inserted only at the top (DDP, DataParallel), possibly under or over torch.compile.
LEADING_LEVELS = ("module",)


def normalize_name(name: str) -> str:
    """``name`` without the module levels that wrappers insert (see the module docstring).

    ``_orig_mod.module.model.layers.0._checkpoint_wrapped_module.mlp.up_proj.weight`` becomes
    ``model.layers.0.mlp.up_proj.weight``. ``module`` is dropped only before the first real level, so a model's
    own submodule called ``module`` deeper down keeps its name.
    """
    out: list[str] = []
    for part in name.split("."):
        if part in WRAPPER_LEVELS or (not out and part in LEADING_LEVELS):
            continue
        out.append(part)
    return ".".join(out) if out else name
