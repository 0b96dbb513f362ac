"""The LLR update split across processes (ranks of a process group, not matrix ranks): each rank measures only its
share of the layers, then all ranks share the alphas, so every rank holds bitwise the same multipliers and the
update's wall time falls with the world size.

Which ranks split the work (``spectral_group`` of the optimizers):
- DTensor parameters of any layout ("auto"): FSDP2, HSDP, tensor / sequence parallel, FSDP x TP; the ranks of
  their mesh (all the measured DTensors' meshes must span the same ranks, e.g. one 2-D mesh). Each matrix
  (weight, gradient or first moment) is gathered onto its owner only (``placements.gather_whole``), never onto
  every rank as ``full_tensor()`` would: per update a rank receives about 1/world of the model, one matrix at a
  time. Plain matrices among them are taken as replicated over those ranks (as a tensor-parallel model's
  unsharded layers are): the owner measures its own copy.
- Replicated parameters (DDP): the group of a ``DistributedDataParallel`` model passed as ``model`` ("auto"), or
  a process group given explicitly. Every rank already holds every matrix: nothing but the alphas moves.
- Otherwise (one process; DTensors on meshes over different ranks, as pipeline stages are): no split, each rank
  measures its own matrices (DTensors through ``full_tensor()``).

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

from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from ..spectral.rules import (
    STATUS_CODES,  # statuses travel as index + 1 in the all-reduce (0: measured elsewhere)
)
from ._dtensor import is_dtensor
from .placements import mesh_ranks


def measure_cost(shape: tuple[int, ...], stacked: bool = False) -> float:
    """Estimated flops of one matrix's exact alpha: Gram (m n^2) + eigendecomposition (4/3 n^3), n = short side;
    ``stacked``: a stack of shape[0] matrices of shape[1:]."""
    if stacked:
        return int(shape[0]) * measure_cost(tuple(shape[1:]))
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


@dataclass
class Split:
    """The ranks that share the LLR update (or LLRMuon's Newton-Schulz): owners index ``ranks``."""

    ranks: list[int]  # global ranks, sorted
    layout: str  # "dtensor" (matrices gathered from every rank's shard) or "replicated" (every rank holds them)
    mesh: Any = None  # "dtensor": the mesh whose dimensions carry the all-reduce of the results
    group: Any = None  # "replicated": the process group

    @property
    def world(self) -> int:
        return len(self.ranks)

    @property
    def rank(self) -> int:
        """This process's index in ``ranks``."""
        return self.ranks.index(dist.get_rank())

    def all_reduce(self, t: torch.Tensor) -> None:
        """Sum ``t`` over the ranks in place (on a mesh: one all-reduce per mesh dimension)."""
        if self.mesh is None:
            dist.all_reduce(t, group=self.group)
            return
        for d in range(self.mesh.ndim):
            dist.all_reduce(t, group=self.mesh.get_group(d))

    def comm_device(self) -> torch.device:
        group = self.group if self.mesh is None else self.mesh.get_group(0)
        backend = dist.get_backend(group)
        return torch.device("cuda", torch.cuda.current_device()) if "nccl" in str(backend) else torch.device("cpu")


def resolve_split(spectral_group: Any, model: Any, params: list[torch.Tensor], *, keep_single: bool = False) -> Split | None:
    """Who splits the work over ``params`` (see the module docstring), or None for no split (also for a split over
    one rank unless ``keep_single``)."""
    if spectral_group is None or not (dist.is_available() and dist.is_initialized()):
        return None
    dtensors = [p for p in params if is_dtensor(p)]
    if dtensors:
        if spectral_group != "auto":
            raise ValueError("spectral_group=<a process group> is for replicated (DDP) parameters; with DTensor "
                             "parameters (FSDP2, tensor parallel) leave spectral_group='auto' (their mesh splits the work)")
        ranks = mesh_ranks(dtensors[0].device_mesh)
        if any(mesh_ranks(q.device_mesh) != ranks for q in dtensors[1:]):
            return None
        split = Split(ranks, "dtensor", mesh=dtensors[0].device_mesh)
    elif spectral_group == "auto":
        group = getattr(model, "process_group", None) if isinstance(model, torch.nn.parallel.DistributedDataParallel) else None
        if group is None:
            return None
        split = Split(sorted(dist.get_process_group_ranks(group)), "replicated", group=group)
    else:  # an explicit group splits even over one rank (as asked)
        return Split(sorted(dist.get_process_group_ranks(spectral_group)), "replicated", group=spectral_group)
    return split if split.world > 1 or keep_single else None


def share_results(alphas: torch.Tensor, status: list[str], mine: list[int], split: Split) -> tuple[torch.Tensor, list[str]]:
    """Every rank's alphas and statuses for the layers it measured (``mine``), combined on all ranks."""
    dev = split.comm_device()
    n = alphas.numel()
    vals = torch.zeros(n, dtype=torch.float64, device=dev)
    codes = torch.zeros(n, dtype=torch.int64, device=dev)
    if mine:
        idx = torch.tensor(mine, dtype=torch.long)
        vals[idx.to(dev)] = alphas[idx].to(dev)
        codes[idx.to(dev)] = torch.tensor([STATUS_CODES.index(status[i]) + 1 if status[i] in STATUS_CODES else 1
                                           for i in mine], dtype=torch.int64, device=dev)
    split.all_reduce(vals)  # each layer has one owner: the sum is that owner's value exactly (NaN stays NaN)
    split.all_reduce(codes)
    codes = codes.cpu().tolist()
    return vals.cpu(), [STATUS_CODES[c - 1] if c > 0 else "not_measured" for c in codes]
