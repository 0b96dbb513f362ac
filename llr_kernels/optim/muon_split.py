"""LLRMuon's Muon step with each matrix orthogonalized on exactly one rank (FSDP2, and DDP when asked).

Newton-Schulz needs whole matrices; the rest of Muon's step is elementwise. So, per step:
1. momentum / Nesterov on each rank's own rows (FSDP2 shards; the whole matrix under DDP): the ``muon_momentum``
   op, dispatched like the single-process step's;
2. each Newton-Schulz input goes to its owner (FSDP2: ``dist.gather`` of the row shards; DDP: already there);
3. every owner orthogonalizes its matrices, batched by shape, as a single process does;
4. the results go back (FSDP2: ``dist.scatter`` of the rows; DDP: ``dist.broadcast`` of the matrix);
5. decoupled weight decay and the update on each rank's own rows: the ``muon_apply`` op with each matrix's LR
   computed on device (``muon_apply``).
This module is stages 2-4; owners come from ``spectral_split.assign_owners`` over the Newton-Schulz cost
(m n min(m, n) per iteration), so the work is balanced and every rank computes the same assignment. It follows
microsoft/dion's distributed Muon in spirit (one owner per matrix), with one collective per matrix instead of
batched all-to-alls: simple and exact, not yet tuned (nothing here has run on more than CPU gloo ranks).

The momentum buffers have the parameters' layout (DTensors under FSDP2), so checkpoints (DCP) reshard them.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist

from ..ops.custom_ops import muon_momentum
from ..ops.dispatch import get_op
from ..ops.muon.newton_schulz import newton_schulz
from ._dtensor import local
from .muon_apply import make_apply_launch, run_apply
from .params import default_state_dtype
from .spectral_split import _comm_device, assign_owners, gather_to_owner

if TYPE_CHECKING:
    from .muon import LLRMuon


def ns_cost(shape: tuple[int, ...]) -> float:
    """Flops of one Newton-Schulz iteration on an m x n matrix, up to a constant: m n min(m, n)."""
    m, n = int(shape[0]), int(shape[1])
    return float(m) * n * min(m, n)


def scatter_rows(full: torch.Tensor | None, like: torch.Tensor, dtype: torch.dtype, owner: int, group: Any) -> torch.Tensor:
    """The owner's ``full`` matrix (of ``dtype``: every rank must name it) split into the row shards of the DTensor
    ``like``; this rank's shard."""
    world, rank = dist.get_world_size(group), dist.get_rank(group)
    rows = int(like.shape[0])
    chunk = -(-rows // world)
    dev = _comm_device(group)
    shard = local(like)
    out = torch.empty((chunk, *like.shape[1:]), dtype=dtype, device=dev)
    parts = None
    if rank == owner:
        padded = torch.zeros((chunk * world, *full.shape[1:]), dtype=dtype, device=dev)
        padded[:rows].copy_(full)
        parts = list(padded.split(chunk))
    dist.scatter(out, parts, src=dist.get_global_rank(group, owner), group=group)
    return out[: shard.shape[0]].to(shard.device)


class SplitMuonStep:
    """The Muon part of an LLRMuon step, split across the ranks of ``group`` (layout "dtensor" or "replicated")."""

    def __init__(self, opt: "LLRMuon", active: list[tuple[int, torch.Tensor]], group: Any, layout: str) -> None:
        if opt.capturable:
            raise NotImplementedError("LLRMuon with capturable=True cannot split Newton-Schulz across ranks (its "
                                      "collectives run per step on the host); use capturable=False under FSDP2/DDP")
        self.opt, self.group, self.layout = opt, group, layout
        self.group_index = [gi for gi, _ in active]
        self.params = [p for _, p in active]
        self.world, self.rank = dist.get_world_size(group), dist.get_rank(group)
        self.last_orthogonalized = 0  # matrices this rank orthogonalized in the last step
        self.owners = assign_owners([ns_cost(tuple(p.shape)) for p in self.params], self.world)
        device = local(self.params[0]).device if self.params else torch.device("cpu")
        backend = opt.muon_backend or opt.backend
        self.momentum_backend, _ = get_op("muon_momentum", backend, device)
        self.apply = make_apply_launch(opt, self.params, self.group_index, device, backend)
        for p in self.params:
            st = opt.state[p]
            if "momentum_buffer" not in st:  # a DTensor like p under FSDP2
                st["momentum_buffer"] = torch.zeros_like(p, dtype=default_state_dtype(opt.state_dtype, p.dtype))

    def step(self) -> None:
        opt = self.opt
        inputs = []  # 1. momentum on this rank's rows; the Newton-Schulz input in ns dtype
        for gi, p in zip(self.group_index, self.params):
            g = opt.param_groups[gi]
            grad = local(p.grad)
            grad = -grad if g["maximize"] else grad
            buf = local(opt.state[p]["momentum_buffer"])
            u = torch.empty(buf.shape, dtype=opt.ns_dtype, device=buf.device)
            muon_momentum([grad.contiguous()], [buf], [u], float(g["momentum"]), bool(g["nesterov"]),
                          self.momentum_backend)
            inputs.append(u)
        whole: dict[int, torch.Tensor] = {}  # 2. whole inputs on their owners
        for i, (p, u) in enumerate(zip(self.params, inputs)):
            if self.layout == "dtensor":
                m = gather_to_owner(u, int(p.shape[0]), self.owners[i], self.group)
                if m is not None:
                    whole[i] = m
            elif self.owners[i] == self.rank:
                whole[i] = u
        self.last_orthogonalized = len(whole)
        ortho: dict[int, torch.Tensor] = {}  # 3. Newton-Schulz on the owner, batched by shape and settings
        buckets: dict[tuple, list[int]] = {}
        for i in whole:
            g = opt.param_groups[self.group_index[i]]
            key = (tuple(whole[i].shape), str(g["ns_coefficients"]), int(g["ns_steps"]), float(g["ns_eps"]))
            buckets.setdefault(key, []).append(i)
        for (_, _, steps, eps), members in buckets.items():
            g = opt.param_groups[self.group_index[members[0]]]
            out = newton_schulz(torch.stack([whole[i] for i in members]), g["ns_coefficients"], steps, eps=eps,
                                dtype=opt.ns_dtype)
            for j, i in enumerate(members):
                ortho[i] = out[j]
        back = []  # 4. results back to every rank's rows
        for i, p in enumerate(self.params):
            if self.layout == "dtensor":
                o = scatter_rows(ortho.get(i), p, inputs[i].dtype, self.owners[i], self.group)
            else:
                o = ortho[i] if i in ortho else torch.empty_like(inputs[i])
                o = o.contiguous()
                dist.broadcast(o, src=dist.get_global_rank(self.group, self.owners[i]), group=self.group)
            back.append(o.to(local(p).device))
        run_apply(opt, self.apply, [local(p) for p in self.params], back)  # 5. each matrix's LR, on device
