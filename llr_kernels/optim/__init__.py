"""LLR optimizers: torch.optim optimizers whose per-layer LRs follow the LLR policy."""
from .adamw import LLRAdamW
from .base import LLROptimizer
from .muon import LLRMuon
from .wrappers import layer_stats, normalize_name, unwrap

__all__ = ["LLRAdamW", "LLRMuon", "LLROptimizer", "layer_stats", "normalize_name", "unwrap"]
