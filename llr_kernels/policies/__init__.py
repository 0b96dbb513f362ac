"""Layerwise policies: per-layer LR (and weight-decay) multipliers that feed the same fused optimizer step.

Pass one to ``LLRAdamW`` / ``LLRMuon`` as ``policy=`` (a preset name or a config), or use
``llr_kernels.layerwise_optimizer``; without one, the optimizers run LLR as the paper defines it.

    LLRAdamW(model, lr=1e-3, total_steps=T, policy="sharpness")
    LLRAdamW(model, lr=1e-3, total_steps=T, policy=LLRConfig(s=3, map="sqrt", wd_range=(0.67, 5)))

Presets (``PRESETS``; each documents its source):
- "llr": the paper's LLR (Eq. 2 alphas, Eq. 3 map into [1, s]); "llr-shuffled": the same multipliers dealt to
  the layers at random at every update (a control: does the spectral signal matter, or only the spread?).
- "uniform": every layer at the base LR; "uniform-smax": every layer at s x the base LR (the paper's Table 5).
- "sharpness": Blockwise LR of Wang et al. (2025, arXiv 2502.19002; official repo README's tuned ratios): Norm 1,
  VO 4, FFN 6, QK 8, Emb 10 x the base LR, LM head at the base LR (their LLaMA script's default); a fused QKV
  matrix (GPT-2) cannot be split by a per-tensor LR and gets the VO ratio. "sharpness-llr-code": the LLR public
  code's version, which also gives the LM head 10.
- "rlrs": relative LR schedules (Ludziejewski et al., 2025, arXiv 2507.03526), Table 4's MoE values: Embedding
  5 -> 0.6, Unembedding 0.6 -> 0.4, Router 0.6 -> 1, Experts 0.3 -> 1.125, Attention 1 -> 1; a dense model's FFN
  takes the Experts' values (the paper's dense tables were not available to us: an assumption, stated).
- "alphadecay": AlphaDecay (He et al., 2025, arXiv 2506.14562): uniform LR, per-layer weight decay mapped
  linearly from weight alphas into [0.67, 5] x weight_decay (their AdamW setting), higher alpha more decay;
  "llr+alphadecay": LLR's LRs and AlphaDecay's weight decays from the same measurements.
LARS and LAMB change the step itself, not only its multipliers: ``llr_kernels.optim.trust_ratio``.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

from .base import LayerwisePolicy, PolicyConfig, policy_code, policy_name, register_policy
from .blocks import BLOCKS, block_of, blocks_of
from .fixed import BlockwiseConfig, BlockwisePolicy, UniformConfig, UniformPolicy
from .llr import FITS, METRICS, LLRConfig, LLRPolicy, robust_outliers
from .maps import MAPS, llr_multipliers, map_values
from .rlrs import RLRSConfig, RLRSPolicy

SHARPNESS_RATIOS = {"norm": 1.0, "vo": 4.0, "qkv": 4.0, "ffn": 6.0, "qk": 8.0, "embedding": 10.0, "head": 1.0}
RLRS_START = {"embedding": 5.0, "head": 0.6, "router": 0.6, "experts": 0.3, "ffn": 0.3, "qk": 1.0, "vo": 1.0, "qkv": 1.0}
RLRS_END = {"embedding": 0.6, "head": 0.4, "router": 1.0, "experts": 1.125, "ffn": 1.125, "qk": 1.0, "vo": 1.0, "qkv": 1.0}
ALPHADECAY_WD_RANGE = (0.67, 5.0)


def _llr(base: LLRConfig, **kw: Any) -> LLRConfig:
    return dataclasses.replace(base, **kw)


# name -> builder from the optimizer's LLR arguments (s, interval, total_steps, ...), which the LLR-family
# presets keep and the others read where they need them (uniform-smax: s; rlrs: total_steps)
PRESETS: dict[str, Callable[[LLRConfig], PolicyConfig]] = {
    "llr": lambda b: b,
    "llr-shuffled": lambda b: _llr(b, shuffle=True),
    "uniform": lambda b: UniformConfig(1.0),
    "uniform-smax": lambda b: UniformConfig(float(b.s)),
    "sharpness": lambda b: BlockwiseConfig(dict(SHARPNESS_RATIOS)),
    "sharpness-llr-code": lambda b: BlockwiseConfig({**SHARPNESS_RATIOS, "head": 10.0}),
    "rlrs": lambda b: RLRSConfig(dict(RLRS_START), dict(RLRS_END), total_steps=b.total_steps),
    "alphadecay": lambda b: _llr(b, s=1.0, grad_phase=0.0, wd_range=ALPHADECAY_WD_RANGE),
    "llr+alphadecay": lambda b: _llr(b, wd_range=ALPHADECAY_WD_RANGE),
}


def resolve_policy(policy: str | PolicyConfig | None, llr: LLRConfig) -> PolicyConfig:
    """The policy config an optimizer runs: ``llr`` (its LLR arguments) when ``policy`` is None, a preset built
    from those arguments when it is a name, or the given config."""
    if policy is None:
        return llr.validate()
    if isinstance(policy, str):
        if policy not in PRESETS:
            raise ValueError(f"unknown policy {policy!r}; presets are {sorted(PRESETS)}, or pass a config "
                             "(LLRConfig, UniformConfig, BlockwiseConfig, RLRSConfig)")
        return PRESETS[policy](llr).validate()
    if isinstance(policy, PolicyConfig):
        return policy.validate()
    raise TypeError(f"policy must be None, a preset name from {sorted(PRESETS)} or a PolicyConfig, got "
                    f"{type(policy).__name__}")


__all__ = [
    "BLOCKS", "FITS", "MAPS", "METRICS", "PRESETS", "ALPHADECAY_WD_RANGE", "RLRS_END", "RLRS_START",
    "SHARPNESS_RATIOS", "BlockwiseConfig", "BlockwisePolicy", "LLRConfig", "LLRPolicy", "LayerwisePolicy",
    "PolicyConfig", "RLRSConfig", "RLRSPolicy", "UniformConfig", "UniformPolicy", "block_of", "blocks_of",
    "llr_multipliers", "map_values", "policy_code", "policy_name", "register_policy", "resolve_policy", "robust_outliers",
]
