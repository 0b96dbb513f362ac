"""One entry point for every layerwise scheme of the library, so a user switches scheme with one argument."""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..policies import PRESETS, PolicyConfig

TRUST_RATIO = ("lamb", "lars")  # schemes that change the step itself: their own optimizers
OPTIMIZERS = ("adamw", "muon")


def layerwise_optimizer(params: Any, policy: str | PolicyConfig = "llr", *, optimizer: str = "adamw",
                        **kwargs: Any) -> torch.optim.Optimizer:
    """An optimizer running ``policy`` on ``params`` (a model, named parameters or param groups).

    policy: a preset of ``llr_kernels.policies.PRESETS`` ("llr", "uniform", "sharpness", "rlrs", "alphadecay",
        ...) or a PolicyConfig, run by the fused step of ``optimizer`` ("adamw": LLRAdamW, "muon": LLRMuon); or
        "lamb" / "lars", the trust-ratio optimizers of ``optim.trust_ratio`` (their own step; ``optimizer`` unused).
    kwargs: the chosen optimizer's arguments (lr, weight_decay, total_steps, s, ...).
    """
    if isinstance(policy, str) and policy in TRUST_RATIO:
        from .trust_ratio import LAMB, LARS

        if optimizer != "adamw":
            raise ValueError(f"policy {policy!r} is its own optimizer; drop optimizer={optimizer!r}")
        ps = params.parameters() if isinstance(params, nn.Module) else params
        return (LAMB if policy == "lamb" else LARS)(ps, **kwargs)
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {OPTIMIZERS} (the fused step that runs the policy), got {optimizer!r}")
    if isinstance(policy, str) and policy not in PRESETS:
        raise ValueError(f"unknown policy {policy!r}; choose from {sorted(PRESETS) + list(TRUST_RATIO)}, or pass a "
                         "PolicyConfig")
    from .adamw import LLRAdamW
    from .muon import LLRMuon

    return (LLRAdamW if optimizer == "adamw" else LLRMuon)(params, policy=policy, **kwargs)
