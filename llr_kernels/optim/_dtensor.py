"""The three questions the optimizers ask of a possibly sharded (FSDP2 / DTensor) tensor, answered in one place."""
from __future__ import annotations

import torch


def is_dtensor(t: object) -> bool:
    """A torch.distributed DTensor (duck-typed: torch.distributed may be absent)."""
    return callable(getattr(t, "to_local", None))


def local(t: torch.Tensor) -> torch.Tensor:
    """This rank's shard of a DTensor (elementwise steps act on shards); plain tensors as they are."""
    return t.to_local() if is_dtensor(t) else t


def full(t: torch.Tensor) -> torch.Tensor:
    """The whole tensor of a DTensor (a collective: every rank must call it); plain tensors as they are."""
    return t.full_tensor() if is_dtensor(t) else t
