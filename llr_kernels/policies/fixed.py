"""Policies without measurements: one multiplier per layer for all of training, or per block type.

``UniformConfig(scale)``: every layer at ``scale`` x the base LR (1: plain AdamW / Muon; s: the paper's
"uniform-smax" upper bound, Table 5). ``BlockwiseConfig(ratios)``: a fixed LR ratio per block type
(``policies.blocks``), as the Sharpness-disparity Blockwise LR of Wang et al. (2025); its presets are in
``policies.presets``.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .._checks import check_real
from .base import LayerwisePolicy, PolicyConfig, register_policy
from .blocks import blocks_of, check_block_table


@dataclass
class UniformConfig(PolicyConfig):
    """Every layer's LR is ``scale`` x the base LR."""

    scale: float = 1.0

    def validate(self) -> "UniformConfig":
        check_real("scale", self.scale, 0.0, lo_open=True, hint=" (every layer's LR multiplier; 1 = the base LR)")
        return self



@register_policy(code=1)
class UniformPolicy(LayerwisePolicy):
    name = "uniform"
    config: UniformConfig

    def initial_targets(self, first: int, count: int) -> torch.Tensor:
        return torch.full((count,), float(self.config.scale), dtype=torch.float64)


@dataclass
class BlockwiseConfig(PolicyConfig):
    """A fixed LR multiplier per block type (``policies.blocks.BLOCKS``); blocks not listed get ``default``."""

    ratios: dict[str, float] = field(default_factory=dict)
    default: float = 1.0

    def validate(self) -> "BlockwiseConfig":
        check_block_table("ratios", self.ratios, "LR multiplier")
        check_real("default", self.default, 0.0, lo_open=True, hint=" (the multiplier of blocks not in ratios)")
        return self



@register_policy(code=2)
class BlockwisePolicy(LayerwisePolicy):
    name = "blockwise"
    config: BlockwiseConfig

    def initial_targets(self, first: int, count: int) -> torch.Tensor:
        c = self.config
        blocks = blocks_of(self.kinds, self.names)[first:first + count]
        return torch.tensor([float(c.ratios.get(b, c.default)) for b in blocks], dtype=torch.float64)


UniformConfig.policy_class = UniformPolicy
BlockwiseConfig.policy_class = BlockwisePolicy
