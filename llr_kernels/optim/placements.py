"""Whole matrices of DTensors of any layout, moved between one owner rank and every rank's block.

The LLR update (each matrix measured on one rank) and LLRMuon's split step (Newton-Schulz on one rank) need a
matrix whole on its owner and, for Muon, the result back in each rank's shard. This works for every layout built
from ``Shard(d)`` and ``Replicate()`` on a mesh of any dimension (FSDP2, HSDP, tensor parallel's row- and
column-wise shards, FSDP x TP with FSDP2's strided shards): a rank's block is then, along each tensor
dimension, a nested ``torch.chunk`` of the mesh dimensions that shard it, so the owner knows where every block
goes and receives it straight into place (point-to-point; of replicated blocks only the copy at mesh coordinate 0
moves). Other layouts (``Partial``) are first redistributed to ``Shard(0)`` on every mesh dimension by DTensor. Every rank of the mesh calls these functions for every matrix,
in the same order.
"""
from __future__ import annotations

import itertools
from typing import Any

import torch
import torch.distributed as dist

from ._dtensor import describe


def chunk_range(n: int, parts: int, index: int) -> tuple[int, int]:
    """[start, end) of chunk ``index`` when ``torch.chunk`` splits n items into ``parts`` (DTensor's Shard: chunks of
    ceil(n / parts), the last ranks short or empty)."""
    size = -(-n // parts) if n else 0
    start = min(index * size, n)
    return start, min(start + size, n)


def _order(placements: tuple, mesh_shape: tuple[int, ...], ndim: int) -> list[tuple[int, int]] | None:
    """(mesh dim, tensor dim) of every sharding placement in the order the shards nest, or None when a rank's
    shard is not one block. Plain ``Shard`` nests left to right; FSDP2's ``_StridedShard(d, sf)`` over tensor
    parallel's ``Shard(d)`` nests right to left (TP's chunk first, then FSDP's chunk of it: one block), when sf is
    the number of shards of the later mesh dimensions on that tensor dimension."""
    from torch.distributed.tensor import Replicate, Shard

    plain, strided = [], []
    for d, pl in enumerate(placements):
        if type(pl) is Replicate:
            continue
        if type(pl) is Shard:
            plain.append((d, pl.dim % ndim))
        elif type(pl).__name__ == "_StridedShard":
            dim = pl.dim % ndim
            later = 1
            for e in range(d + 1, len(placements)):
                if type(placements[e]) is Shard and placements[e].dim % ndim == dim:
                    later *= mesh_shape[e]
            if pl.split_factor != later:
                return None
            strided.append((d, dim))
        else:
            return None
    return plain + strided[::-1]


def is_blockwise(placements: tuple, mesh_shape: tuple[int, ...] = (), ndim: int = 2) -> bool:
    """Placements whose local shards are single blocks (``Shard``, ``Replicate``, FSDP2 x TP's strided shards)."""
    return _order(placements, mesh_shape or (1,) * len(placements), ndim) is not None


def block_of(shape: tuple[int, ...], mesh_shape: tuple[int, ...], placements: tuple, coord: tuple[int, ...]) -> tuple[slice, ...]:
    """The block of a tensor of ``shape`` that the rank at mesh coordinate ``coord`` holds under blockwise
    ``placements``: along each tensor dimension, nested ``torch.chunk`` of the mesh dimensions that shard it."""
    order = _order(tuple(placements), tuple(mesh_shape), len(shape))
    if order is None:
        raise ValueError(f"placements {tuple(placements)} do not give each rank one block")
    ranges = [(0, int(n)) for n in shape]
    for d, dim in order:
        a, b = ranges[dim]
        s, e = chunk_range(b - a, mesh_shape[d], coord[d])
        ranges[dim] = (a + s, a + e)
    return tuple(slice(a, b) for a, b in ranges)


def mesh_ranks(mesh: Any) -> list[int]:
    """Global ranks of a device mesh, sorted."""
    return sorted(int(r) for r in mesh.mesh.flatten().tolist())


def _coords(mesh: Any) -> list[tuple[tuple[int, ...], int]]:
    """(coordinate, global rank) of every rank of the mesh, coordinates in row-major order."""
    grid = mesh.mesh
    return [(c, int(grid[c])) for c in itertools.product(*(range(n) for n in grid.shape))]


def blockwise(t: Any) -> Any:
    """``t`` itself when its shards are blocks, else redistributed to Shard(0) on every mesh dimension."""
    if is_blockwise(tuple(t.placements), tuple(t.device_mesh.shape), t.dim()):
        return t
    from torch.distributed.tensor import Shard

    return t.redistribute(t.device_mesh, [Shard(0)] * t.device_mesh.ndim)


def comm_device(t: torch.Tensor) -> torch.device:
    """Where the buffers of a transfer live: the tensor's device, CPU when the default backend is gloo."""
    return t.device if t.device.type == "cpu" or "nccl" in str(dist.get_backend()) else torch.device("cpu")


def gather_whole(t: Any, owner: int, dtype: torch.dtype | None = None) -> torch.Tensor | None:
    """The whole tensor of the DTensor ``t`` (cast to ``dtype`` if given) on the rank ``owner`` (global rank);
    None on every other rank. Each block arrives straight in its place: the owner holds the tensor once."""
    t = blockwise(t)
    mesh, placements = t.device_mesh, tuple(t.placements)
    replicated = [d for d, pl in enumerate(placements) if pl.is_replicate()]
    me = dist.get_rank()
    mine = t.to_local()
    dtype = dtype or mine.dtype
    if me != owner:
        if any(c[d] for c, r in _coords(mesh) if r == me for d in replicated) or mine.numel() == 0:
            return None  # another replica of this block sends it, or there is nothing to send
        dist.send(mine.to(device=comm_device(mine), dtype=dtype).contiguous(), dst=owner)
        return None
    whole = torch.empty(tuple(t.shape), dtype=dtype, device=comm_device(mine))
    pending = []
    for coord, rank in _coords(mesh):
        if any(coord[d] for d in replicated):
            continue
        sl = block_of(tuple(t.shape), tuple(mesh.shape), placements, coord)
        if any(s.stop == s.start for s in sl):
            continue
        if rank == me:
            whole[sl].copy_(mine)
            continue
        view = whole[sl]
        buf = view if view.is_contiguous() else torch.empty(view.shape, dtype=dtype, device=whole.device)
        pending.append((dist.irecv(buf, src=rank), view, buf))
    for work, view, buf in pending:
        work.wait()
        if buf is not view:
            view.copy_(buf)
    return whole.to(mine.device)


def scatter_whole(whole: torch.Tensor | None, like: Any, owner: int, dtype: torch.dtype) -> torch.Tensor:
    """This rank's shard, in the layout of the DTensor ``like``, of the tensor ``whole`` that the rank ``owner``
    holds (None elsewhere); ``dtype`` names the result's dtype on every rank."""
    target = like if is_blockwise(tuple(like.placements), tuple(like.device_mesh.shape), like.dim()) else None
    from torch.distributed.tensor import DTensor, Shard

    mesh = like.device_mesh
    placements = tuple(like.placements) if target is not None else (Shard(0),) * mesh.ndim
    shape = tuple(like.shape)
    me = dist.get_rank()
    device = like.to_local().device
    coords = _coords(mesh)
    my_block = next(block_of(shape, tuple(mesh.shape), placements, c) for c, r in coords if r == me)
    if me == owner:
        out = None
        sends = []
        src = whole.to(device=comm_device(whole), dtype=dtype)
        for coord, rank in coords:
            sl = block_of(shape, tuple(mesh.shape), placements, coord)
            if rank == me:
                out = src[sl].clone()
            elif all(s.stop > s.start for s in sl):
                sends.append(dist.isend(src[sl].contiguous(), dst=rank))
        for work in sends:
            work.wait()
    else:
        out = torch.empty(tuple(s.stop - s.start for s in my_block), dtype=dtype, device=comm_device(like.to_local()))
        if out.numel():
            dist.recv(out, src=owner)
    out = out.to(device)
    if target is not None:
        return out
    staged = DTensor.from_local(out, mesh, placements, run_check=False, shape=like.shape, stride=like.stride())
    return staged.redistribute(mesh, like.placements).to_local()


def check_splittable(t: Any, name: str) -> None:
    """A clear error for a parameter whose layout these transfers cannot serve (Partial parameters)."""
    if any(pl.is_partial() for pl in t.placements):
        raise NotImplementedError(f"parameter {name} has {describe(t)}: a parameter with Partial placements has no "
                                  "elements any rank holds, so no step can act on its shards; keep parameters Shard / "
                                  "Replicate (a Partial gradient is fine: it is reduced before the step)")
