"""Argument checks of the optimizers that need more than one value's type and range (``llr_kernels._checks``):
backends on the parameters' devices, the spectral options, the process group, the model and classifier."""
from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from .._checks import check_choice, check_int
from ..ops.dispatch import has_impl, unavailable_reason
from ..spectral.rules import METHODS, VARIANTS


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


def check_spectral_args(hill_method: Any, hill_variant: Any, min_eigs: Any) -> None:
    check_choice("hill_method", hill_method, METHODS, hint=" (how alphas are computed; 'auto' picks per matrix)")
    check_choice("hill_variant", hill_variant, VARIANTS, hint=" ('paper' = Eq. 2, 'reference' = the public code's indices)")
    check_int("min_eigs", min_eigs, 2, hint=" (matrices with fewer eigenvalues get alpha = NaN; public code: 50)")


def check_spectral_group(spectral_group: Any) -> None:
    if spectral_group is None or spectral_group == "auto":
        return
    if not (dist.is_available() and isinstance(spectral_group, dist.ProcessGroup)):
        raise TypeError(f"spectral_group must be 'auto', None or a torch.distributed.ProcessGroup, got {spectral_group!r} "
                        "('auto': split the LLR update over the DTensor parameters' mesh or a DDP model's group; None: no split)")


def check_model_args(model: Any, classify: Any) -> None:
    if model is not None and not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module (it names the parameters) or None, got {type(model).__name__}")
    if classify is not None and not callable(classify):
        raise TypeError(f"classify must be a callable (name, param, module) -> kind or None, got {type(classify).__name__}")
