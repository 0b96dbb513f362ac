"""The LLR update split across processes (ranks of a process group, not matrix ranks): each rank measures only its share of the layers, then all ranks share the
alphas, so every rank holds the same multipliers and the update's wall time falls with the world size.

Which group splits the work (``spectral_group`` of the optimizers):
- FSDP2 / DTensor parameters on a 1-D mesh: that mesh's group ("auto"). Each matrix (weight, gradient or first
  moment) is gathered onto its owner only (``dist.gather`` of the row shards), never onto every rank as
  ``full_tensor()`` would: per update a rank receives about 1/world of the model, one matrix at a time, and
  holds at most the matrices it owns (``last_split`` reports both).
- Replicated parameters (DDP): the group of a ``DistributedDataParallel`` model passed as ``model`` ("auto"), or
  a process group given explicitly. Every rank already holds every matrix: nothing but the alphas moves.
- Otherwise (one process, pipeline stages holding different layers, HSDP meshes): no split, each rank measures
  its own matrices as before (FSDP2 on other meshes through ``full_tensor()``).

Why gather W and not sum partial Grams: for a row-sharded W (rows x cols), the short-side Gram of a tall W is
W^T W = sum_r W_r^T W_r, so the owner could receive world - 1 partial Grams of cols^2 elements instead of
rows * cols * (world - 1) / world elements of W. That moves fewer bytes only when cols < rows / world (world <= 2
for LLaMA's 2.7:1 FFN matrices, never for square attention matrices), and a wide W's Gram W W^T mixes rows of
different shards and cannot be summed at all; gathering W is as cheap or cheaper in every other case, and the
owner then runs the same spectral path as a single process.

Owners are assigned by longest-processing-time first over the estimated cost (the short-side Gram plus its
eigendecomposition, m n^2 + 4/3 n^3 for an m x n matrix with n <= m), ties broken by layer index, so every
rank computes the same assignment with no communication.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist

from ..spectral.rules import STATUS_CODES  # statuses travel as index + 1 in the all-reduce (0: measured elsewhere)
from ._dtensor import is_dtensor


def measure_cost(shape: tuple[int, ...]) -> float:
    """Estimated flops of one matrix's exact alpha: Gram (m n^2) + eigendecomposition (4/3 n^3), n = short side."""
    rows = int(shape[0])
    cols = 1
    for d in shape[1:]:
        cols *= int(d)
    n, m = min(rows, cols), max(rows, cols)
    return float(m) * n * n + 4.0 / 3.0 * float(n) ** 3


def assign_owners(costs: list[float], world: int) -> list[int]:
    """Owner rank of each item: longest processing time first onto the least loaded rank (deterministic)."""
    load = [0.0] * world
    owner = [0] * len(costs)
    for i in sorted(range(len(costs)), key=lambda i: (-costs[i], i)):
        r = min(range(world), key=lambda r: (load[r], r))
        owner[i] = r
        load[r] += costs[i]
    return owner


def _row_sharded(t: torch.Tensor) -> bool:
    """A DTensor sharded along dim 0 over a 1-D mesh (FSDP2's layout)."""
    from torch.distributed.tensor import Shard

    return t.device_mesh.ndim == 1 and len(t.placements) == 1 and t.placements[0] == Shard(0)


def resolve_group(spectral_group: Any, model: Any, params: list[torch.Tensor]) -> tuple[Any, str]:
    """(the process group that splits the spectral work or None, the layout: "dtensor", "replicated" or "")."""
    if spectral_group is None or not (dist.is_available() and dist.is_initialized()):
        return None, ""
    dtensors = [p for p in params if is_dtensor(p)]
    if spectral_group == "auto":
        if dtensors:
            p = dtensors[0]
            same_mesh = all(q.device_mesh == p.device_mesh for q in dtensors)
            if same_mesh and len(dtensors) == len(params) and all(_row_sharded(q) for q in dtensors):
                return _useful(p.device_mesh.get_group(), "dtensor")
            return None, ""
        group = getattr(model, "process_group", None) if isinstance(model, torch.nn.parallel.DistributedDataParallel) else None
        return _useful(group, "replicated") if group is not None else (None, "")
    if dtensors:
        raise ValueError("spectral_group=<a process group> is for replicated (DDP) parameters; with FSDP2/DTensor "
                         "parameters leave spectral_group='auto' (the parameters' mesh splits the work)")
    return spectral_group, "replicated"


def _useful(group: Any, layout: str) -> tuple[Any, str]:
    """(group, layout), or no split when the group has one rank (nothing to share; a DTensor's one shard is whole)."""
    return (group, layout) if dist.get_world_size(group) > 1 else (None, "")


def _comm_device(group: Any) -> torch.device:
    backend = dist.get_backend(group)
    return torch.device("cuda", torch.cuda.current_device()) if "nccl" in str(backend) else torch.device("cpu")


def gather_to_owner(local: torch.Tensor, rows: int, owner: int, group: Any) -> torch.Tensor | None:
    """The whole (rows, ...) matrix whose row shards (FSDP2's ``torch.chunk`` layout: ceil(rows / world) rows a
    rank, the last ranks fewer) the ranks hold as ``local``, on the owner (group rank); None elsewhere. Every rank
    calls it."""
    world, rank = dist.get_world_size(group), dist.get_rank(group)
    chunk = -(-rows // world)
    dev = _comm_device(group)
    padded = torch.zeros((chunk, *local.shape[1:]), dtype=local.dtype, device=dev)
    padded[: local.shape[0]].copy_(local)
    whole = torch.empty((chunk * world, *local.shape[1:]), dtype=local.dtype, device=dev) if rank == owner else None
    dist.gather(padded, None if whole is None else list(whole.split(chunk)), dst=dist.get_global_rank(group, owner),
                group=group)  # straight into one buffer: the owner holds the matrix once
    return None if whole is None else whole[:rows].to(local.device)


def share_results(alphas: torch.Tensor, status: list[str], mine: list[int], group: Any) -> tuple[torch.Tensor, list[str]]:
    """Every rank's alphas and statuses for the layers it measured (``mine``), combined on all ranks."""
    dev = _comm_device(group)
    n = alphas.numel()
    vals = torch.zeros(n, dtype=torch.float64, device=dev)
    codes = torch.zeros(n, dtype=torch.int64, device=dev)
    if mine:
        idx = torch.tensor(mine, dtype=torch.long)
        vals[idx.to(dev)] = alphas[idx].to(dev)
        codes[idx.to(dev)] = torch.tensor([STATUS_CODES.index(status[i]) + 1 if status[i] in STATUS_CODES else 1
                                           for i in mine], dtype=torch.int64, device=dev)
    dist.all_reduce(vals, group=group)  # each layer has one owner: the sum is that owner's value (NaN stays NaN)
    dist.all_reduce(codes, group=group)
    codes = codes.cpu().tolist()
    return vals.cpu(), [STATUS_CODES[c - 1] if c > 0 else "not_measured" for c in codes]
