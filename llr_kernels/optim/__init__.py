"""LLR optimizers: torch.optim optimizers whose per-layer LRs follow the LLR policy."""
from .adamw import LLRAdamW
from .base import LLROptimizer
from .muon import LLRMuon

__all__ = ["LLRAdamW", "LLRMuon", "LLROptimizer"]
