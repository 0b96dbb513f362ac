"""Gradient clipping (``max_grad_norm``) over parameters of any layout: plain tensors, DTensors on one mesh, or on
several meshes at once (tensor parallel with plain norms, FSDP2 x TP with parameters on the 2-D mesh and others).

torch's ``clip_grad_norm_`` stacks per-tensor norms and so needs every grad on one mesh (or none on any). Here the
global squared norm is summed per mesh (each rank's shards, a replicated shard counted once: divided by the number
of ranks that hold it, then one all-reduce per mesh dimension), plain grads are added as they are (replicated
across ranks, as under DDP or tensor parallel), and the total is combined once. The scale is torch's:
min(1, max_norm / (norm + 1e-6)), applied to each rank's shards.
"""
from __future__ import annotations

import torch
import torch.distributed as dist

from ._dtensor import aligned, is_dtensor, local


def _comm_device(group) -> torch.device:
    backend = dist.get_backend(group)
    return torch.device("cuda", torch.cuda.current_device()) if "nccl" in str(backend) else torch.device("cpu")


def squared_norm_by_mesh(params: list[torch.Tensor]) -> torch.Tensor:
    """The global squared L2 norm (float64, 0-d) of the grads of ``params`` (DTensor grads first put in their
    parameter's placements), on the first mesh's communication device (no host sync); every rank holding a
    DTensor of a mesh must call it with the same meshes."""
    by_mesh: dict = {}
    plain = []
    for p in params:
        g = p.grad
        if g is None:
            continue
        if not is_dtensor(p):
            plain.append(torch.linalg.vector_norm(g.detach(), dtype=torch.float64).pow(2))
            continue
        g = aligned(g, p)
        mesh = g.device_mesh
        holders = 1
        for d, pl in enumerate(g.placements):
            if pl.is_replicate():
                holders *= mesh.size(d)
        part = torch.linalg.vector_norm(local(g).detach(), dtype=torch.float64).pow(2) / holders
        by_mesh.setdefault(mesh, []).append(part)
    sums = []
    for mesh, parts in by_mesh.items():
        sq = torch.stack(parts).sum().to(_comm_device(mesh.get_group(0)))
        for d in range(mesh.ndim):  # a sum over each mesh dimension in turn: the sum over every rank of the mesh
            dist.all_reduce(sq, group=mesh.get_group(d))
        sums.append(sq)
    device = sums[0].device if sums else (plain[0].device if plain else torch.device("cpu"))
    total = torch.zeros((), dtype=torch.float64, device=device)
    for x in sums + plain:
        total = total + x.to(device)
    return total


def clip_all_grads(params: list[torch.Tensor], max_grad_norm: float) -> torch.Tensor:
    """Clip the global grad norm over ``params`` in place (every rank of every DTensor mesh takes part); returns the
    norm before clipping (0-d, in the first grad's dtype). Without DTensors this is torch's ``clip_grad_norm_``."""
    if not any(is_dtensor(p) for p in params):
        return torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
    grads = [p for p in params if p.grad is not None]
    if not grads:
        return torch.zeros(())
    norm = squared_norm_by_mesh(grads).sqrt()
    coef = torch.clamp(max_grad_norm / (norm + 1e-6), max=1.0)
    coefs: dict = {}  # one copy per (device, dtype)
    for p in grads:
        g = local(p.grad)
        key = (g.device, g.dtype)
        if key not in coefs:
            coefs[key] = coef.to(device=g.device, dtype=g.dtype)
        g.mul_(coefs[key])
    return norm.to(local(grads[0].grad).dtype)
