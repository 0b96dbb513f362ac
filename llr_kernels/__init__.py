"""llr_kernels: layerwise learning rates (LLR) from spectral heavy-tailedness, with fused kernels.

    from llr_kernels import LLRAdamW, format_layer_stats
    opt = LLRAdamW(model, lr=1e-3, weight_decay=0.1, s=3.0, interval=500, total_steps=T)
    print(format_layer_stats(opt))   # per layer: kind, shape, alpha, multiplier, LR, weight decay, status
"""
from .layers import KINDS, Layer, classify_parameters
from .optim import LAMB, LARS, LLRAdamW, LLRMuon, LLROptimizer, layerwise_optimizer
from .policies import (
    PRESETS as POLICY_PRESETS,
    BlockwiseConfig,
    LayerwisePolicy,
    LLRConfig,
    LLRPolicy,
    PolicyConfig,
    RLRSConfig,
    UniformConfig,
    llr_multipliers,
)
from .spectral import HillResult, hill_alpha
from .stats import format_layer_stats, layer_records, layer_stats, unwrap

__version__ = "0.1.0"

__all__ = [
    "KINDS",
    "LAMB",
    "LARS",
    "layerwise_optimizer",
    "POLICY_PRESETS",
    "BlockwiseConfig",
    "LayerwisePolicy",
    "PolicyConfig",
    "RLRSConfig",
    "UniformConfig",
    "HillResult",
    "LLRAdamW",
    "LLRMuon",
    "LLRConfig",
    "LLROptimizer",
    "LLRPolicy",
    "Layer",
    "classify_parameters",
    "format_layer_stats",
    "hill_alpha",
    "layer_records",
    "layer_stats",
    "llr_multipliers",
    "unwrap",
]
