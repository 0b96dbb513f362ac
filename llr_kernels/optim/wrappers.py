"""Undo what wrappers add: module levels in parameter names, and optimizer wrappers around ours.

torch.compile (``_orig_mod.``), DDP / DataParallel (a leading ``module.``), FSDP1 (``_fsdp_wrapped_module.``)
and activation checkpointing (``_checkpoint_wrapped_module.``) insert module levels into parameter names.
Layer names drop them (``normalize_name``), so ``layer_stats()`` reads the same under any wrapper and a
checkpoint saved under one wrapper loads under another. Trainers wrap the optimizer (accelerate's
``AcceleratedOptimizer`` keeps ours as ``.optimizer`` and forwards no other attribute); ``unwrap`` follows
such chains and ``layer_stats`` reads the stats through them.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .base import LLROptimizer

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


def unwrap(optimizer: Any) -> "LLROptimizer":
    """The LLR optimizer inside ``optimizer``, following ``.optimizer`` attributes (accelerate's
    ``AcceleratedOptimizer``, Hugging Face ``Trainer.optimizer``, DeepSpeed-style wrappers); raises TypeError
    when none is found."""
    from .base import LLROptimizer

    seen, cur = [], optimizer
    while not isinstance(cur, LLROptimizer):
        seen.append(type(cur).__name__)
        nxt = getattr(cur, "optimizer", None)
        if nxt is None or nxt is cur or len(seen) > 16:
            raise TypeError(
                f"no LLR optimizer (LLRAdamW / LLRMuon) inside {' -> '.join(seen)}: unwrap follows .optimizer "
                "attributes; pass the optimizer that wraps an LLR optimizer"
            )
        cur = nxt
    return cur


def layer_stats(optimizer: Any) -> list[dict[str, Any]]:
    """``layer_stats()`` of the LLR optimizer inside ``optimizer`` (e.g. ``layer_stats(trainer.optimizer)``)."""
    return unwrap(optimizer).layer_stats()
