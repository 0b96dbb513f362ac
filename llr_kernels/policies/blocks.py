"""Which block of a Transformer a layer belongs to, for policies that set one LR per block type.

Blocks: "embedding", "head" (LM head), "qk" (attention query/key), "vo" (attention value/output), "qkv" (a fused
query-key-value matrix, GPT-2's ``c_attn``), "ffn", "router" and "experts" (MoE, from names), "norm" (norm
weights), "bias", and "other" (any other matrix). Built on ``llr_kernels.layers`` kinds, so a ``classify``
override of the optimizer reaches policies too.
"""
from __future__ import annotations

import re
from typing import Any

from .._checks import check_real

BLOCKS = ("embedding", "head", "qk", "vo", "qkv", "ffn", "router", "experts", "norm", "bias", "other")
_ROUTER = re.compile(r"(^|\.)(router|gate)\.weight$|moe.*\.gate\.weight$")
_EXPERTS = re.compile(r"(^|\.)experts?\.")


def block_of(kind: str, name: str) -> str:
    """The block of a layer of this ``kind`` (``llr_kernels.layers.KINDS``) and parameter ``name``."""
    lname = name.lower()
    if kind == "embedding":
        return "embedding"
    if kind == "lm_head":
        return "head"
    if kind == "vector":
        return "bias" if lname.endswith("bias") else "norm"
    if _ROUTER.search(lname) and "experts" not in lname:
        return "router"
    if _EXPERTS.search(lname):
        return "experts"
    if kind in ("attn_q", "attn_k"):
        return "qk"
    if kind in ("attn_v", "attn_o"):
        return "vo"
    if kind == "attn_qkv":
        return "qkv"
    if kind.startswith("ffn_"):
        return "ffn"
    return "other"


def blocks_of(kinds: list[str], names: list[str]) -> list[str]:
    """``block_of`` of every layer, a bias taking its weight's block ("x.bias" follows "x.weight"), as the
    Blockwise-LR code groups a module's parameters together; a bias without a weight stays "bias"."""
    blocks = [block_of(k, n) for k, n in zip(kinds, names)]
    index = {n: i for i, n in enumerate(names)}
    for i, n in enumerate(names):
        if blocks[i] == "bias" and n.endswith(".bias"):
            j = index.get(n[: -len(".bias")] + ".weight")
            if j is not None and blocks[j] != "bias":
                blocks[i] = blocks[j]
    return blocks


def check_block_table(name: str, table: Any, what: str) -> None:
    """``table`` must be a dict {block: positive number} over ``BLOCKS``; ``what`` says what a value is."""
    if not isinstance(table, dict):
        raise TypeError(f"{name} must be a dict {{block: {what}}} over {BLOCKS}, got {table!r}")
    for k, v in table.items():
        if k not in BLOCKS:
            raise ValueError(f"{name} has an unknown block {k!r}; blocks are {BLOCKS}")
        check_real(f"{name}[{k!r}]", v, 0.0, lo_open=True, hint=f" (a {what})")
