"""What the optimizers ask of a possibly sharded tensor (FSDP2, HSDP, tensor parallel: DTensors), in one place: is it
a DTensor, its local shard, the whole tensor, its layout in words, and a grad or state tensor in its parameter's
placements."""
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


def describe(t: torch.Tensor) -> str:
    """A tensor's layout in words, for error messages: placements and mesh of a DTensor, else "a plain tensor"."""
    if not is_dtensor(t):
        return "a plain tensor"
    return f"placements {tuple(t.placements)} on a {t.device_mesh.ndim}-D mesh of shape {tuple(t.device_mesh.shape)}"


def aligned(t: torch.Tensor, like: torch.Tensor, name: str = "a parameter") -> torch.Tensor:
    """``t`` (a grad or a state tensor of the parameter ``like``) in ``like``'s layout, so that the local shards of
    both hold the same elements: a ``Partial`` tensor is reduced, a ``Replicate`` one sliced, another sharding
    moved (DTensor.redistribute; a collective when ``t`` is not already in that layout: every rank calls it).
    Plain tensors of plain parameters pass through."""
    if not is_dtensor(like):
        if is_dtensor(t):
            raise ValueError(f"{name} is a plain tensor but its gradient / state is a DTensor with {describe(t)}; "
                             "give the parameter and its gradient the same layout")
        return t
    if not is_dtensor(t):
        raise ValueError(f"{name} is a DTensor with {describe(like)} but its gradient / state is a plain tensor of "
                         f"shape {tuple(t.shape)}; LLR optimizers need both in one layout")
    if t.device_mesh == like.device_mesh and tuple(t.placements) == tuple(like.placements):
        return t
    if t.device_mesh != like.device_mesh:
        raise ValueError(f"{name} has {describe(like)} but its gradient / state has {describe(t)} on another mesh; "
                         "LLR optimizers move a gradient onto its parameter's placements, not across meshes")
    return t.redistribute(like.device_mesh, like.placements)


def align_grads(params: list[torch.Tensor], name_of: dict[int, str] | None = None) -> None:
    """Give every DTensor parameter's grad the parameter's placements (``aligned``), in place of ``p.grad``: under
    tensor parallel an embedding's grad can come out ``Replicate`` on a ``Shard(0)`` weight, and a sequence-parallel
    norm's grad ``Partial(sum)`` on a ``Replicate`` weight; elementwise steps, clipping and gradient-phase alphas
    then read the right elements. Same values, the parameter's layout (as torch.optim's DTensor steps see them)."""
    for p in params:
        g = p.grad
        if g is None or not (is_dtensor(p) or is_dtensor(g)):
            continue
        a = aligned(g, p, (name_of or {}).get(id(p), "a parameter"))
        if a is not g:
            p.grad = a
