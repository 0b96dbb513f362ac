"""LLR optimizers: torch.optim optimizers whose per-layer LRs follow the LLR policy."""
from .adamw import LLRAdamW
from .base import LLROptimizer

__all__ = ["LLRAdamW", "LLROptimizer"]
