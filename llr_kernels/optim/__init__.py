"""Optimizers: LLRAdamW / LLRMuon (per-layer LRs from a layerwise policy, one fused step), the trust-ratio
baselines LAMB / LARS, and ``layerwise_optimizer``, one entry point for all of them."""
from .adamw import LLRAdamW
from .base import LLROptimizer
from .factory import layerwise_optimizer
from .muon import LLRMuon
from .trust_ratio import LAMB, LARS
from .wrappers import normalize_name

__all__ = ["LAMB", "LARS", "LLRAdamW", "LLRMuon", "LLROptimizer", "layerwise_optimizer", "normalize_name"]
