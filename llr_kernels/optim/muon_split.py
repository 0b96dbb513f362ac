"""LLRMuon's Muon step with each matrix orthogonalized on exactly one rank: every DTensor layout (FSDP2, HSDP,
tensor parallel, FSDP x TP), and DDP when asked.

Newton-Schulz needs whole matrices; the rest of Muon's step is elementwise. So, per step:
1. momentum / Nesterov on each rank's own shard (grads already in their parameter's placements: the base step
   aligns them; the whole matrix under DDP): the ``muon_momentum`` op, dispatched like the single-process step's;
2. each Newton-Schulz input goes whole to its owner (``placements.gather_whole``; DDP: already there);
3. every owner orthogonalizes its matrices, batched by shape and settings, as a single process does;
4. the results go back to every rank's shard (``placements.scatter_whole``; DDP: ``dist.broadcast``);
   stages 2-4 run one chunk of matrices at a time, so that no owner holds more than ``spectral_memory_budget``
   bytes of whole matrices and Newton-Schulz work (``ns_bytes``; one matrix above it is a chunk of its own);
5. decoupled weight decay and the update on each rank's own shard: the ``muon_apply`` op with each matrix's LR
   computed on device (``muon_apply``).
This module is stages 2-4; owners come from ``spectral_split.assign_owners`` over the Newton-Schulz cost
(m n min(m, n) per iteration), so the work is balanced and every rank computes the same assignment. It follows
microsoft/dion's distributed Muon in spirit (one owner per matrix, results scattered back), with point-to-point
transfers per matrix instead of batched all-to-alls: simple and exact, not yet tuned (nothing here has run on
more than CPU gloo ranks).

The momentum buffers have the parameters' layout (DTensors with the same placements), so checkpoints (DCP)
reshard them.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.distributed as dist

from ..ops.custom_ops import muon_momentum
from ..ops.dispatch import get_op
from ..ops.muon.newton_schulz import newton_schulz
from ..spectral.cost import default_budget
from ._dtensor import is_dtensor, local
from .muon_apply import make_apply_launch, run_apply
from .params import default_state_dtype
from .placements import gather_whole, scatter_whole
from .spectral_split import Split, assign_owners

if TYPE_CHECKING:
    from .muon import LLRMuon


def ns_bytes(shape: tuple[int, ...], elem: int) -> int:
    """Bytes one m x n matrix holds on its owner during Newton-Schulz, counted high: the whole input, its stacked
    batch copy, the iterate and the update (4 m n elements), and two n x n products of the short side."""
    m, n = int(shape[0]), int(shape[1])
    return (4 * m * n + 2 * min(m, n) ** 2) * elem


def ns_cost(shape: tuple[int, ...]) -> float:
    """Flops of one Newton-Schulz iteration on an m x n matrix, up to a constant: m n min(m, n)."""
    m, n = int(shape[0]), int(shape[1])
    return float(m) * n * min(m, n)


class SplitMuonStep:
    """The Muon part of an LLRMuon step, split across the ranks of ``split`` (DTensors of any layout; plain
    matrices are taken as replicated over those ranks, as under DDP)."""

    def __init__(self, opt: LLRMuon, active: list[tuple[int, torch.Tensor]], split: Split) -> None:
        if opt.capturable:
            raise NotImplementedError("LLRMuon with capturable=True cannot split Newton-Schulz across ranks (its "
                                      "collectives run per step on the host); use capturable=False under FSDP2/DDP")
        self.opt, self.split = opt, split
        self.group_index = [gi for gi, _ in active]
        self.params = [p for _, p in active]
        self.world, self.rank = split.world, split.rank
        self.last_orthogonalized = 0  # matrices this rank orthogonalized in the last step
        self.owners = assign_owners([ns_cost(tuple(p.shape)) for p in self.params], self.world)
        device = local(self.params[0]).device if self.params else torch.device("cpu")
        backend = opt.muon_backend or opt.backend
        self.momentum_backend, _ = get_op("muon_momentum", backend, device)
        self.apply = make_apply_launch(opt, self.params, self.group_index, device, backend)
        budget = opt.spectral_memory_budget if opt.spectral_memory_budget is not None else default_budget(device)
        self.chunks = self._chunks(budget, torch.finfo(opt.ns_dtype).bits // 8)
        for p in self.params:
            st = opt.state[p]
            if "momentum_buffer" not in st:  # a DTensor like p under FSDP2
                st["momentum_buffer"] = torch.zeros_like(p, dtype=default_state_dtype(opt.state_dtype, p.dtype))

    def _chunks(self, budget: int, elem: int) -> list[list[int]]:
        """The matrices in consecutive chunks that keep every owner's whole matrices under ``budget`` bytes (the
        same chunks on every rank: they follow from the owners alone); a matrix above the budget alone is a chunk."""
        chunks: list[list[int]] = [[]]
        held: dict[int, int] = {}
        for i, p in enumerate(self.params):
            need = ns_bytes(tuple(p.shape), elem)
            everyone = not is_dtensor(p) and self.split.layout == "dtensor"  # replicated: every rank computes it
            ranks = range(self.world) if everyone else [self.owners[i]]
            if chunks[-1] and any(held.get(r, 0) + need > budget for r in ranks):
                chunks.append([])
                held = {}
            chunks[-1].append(i)
            for r in ranks:
                held[r] = held.get(r, 0) + need
        return [c for c in chunks if c]

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
        back: list[torch.Tensor | None] = [None] * len(self.params)
        self.last_orthogonalized = 0
        for chunk in self.chunks:  # 2-4 one chunk at a time: whole matrices held under the budget
            self._orthogonalize(chunk, inputs, back)
        run_apply(opt, self.apply, [local(p) for p in self.params], back)  # 5. each matrix's LR, on device

    def _orthogonalize(self, chunk: list[int], inputs: list[torch.Tensor], back: list) -> None:
        """Stages 2-4 for the matrices ``chunk``: gather to owners, Newton-Schulz batched by shape, scatter back
        into ``back``."""
        opt = self.opt
        whole: dict[int, torch.Tensor] = {}  # 2. whole inputs on their owners
        for i in chunk:
            p, u = self.params[i], inputs[i]
            if is_dtensor(p):
                m = gather_whole(self._as_dtensor(u, p), self.split.ranks[self.owners[i]])
                if m is not None:
                    whole[i] = m
            elif self.owners[i] == self.rank or self.split.layout == "dtensor":
                whole[i] = u  # a plain matrix beside DTensors is replicated: every rank orthogonalizes its copy
        self.last_orthogonalized += sum(1 for i in whole if is_dtensor(self.params[i]) or self.split.layout != "dtensor")
        ortho: dict[int, torch.Tensor] = {}  # 3. Newton-Schulz on the owner, batched by shape and settings
        buckets: dict[tuple, list[int]] = {}
        for i, w in whole.items():
            g = opt.param_groups[self.group_index[i]]
            key = (tuple(w.shape), str(g["ns_coefficients"]), int(g["ns_steps"]), float(g["ns_eps"]))
            buckets.setdefault(key, []).append(i)
        for (_, _, steps, eps), members in buckets.items():
            g = opt.param_groups[self.group_index[members[0]]]
            out = newton_schulz(torch.stack([whole[i] for i in members]), g["ns_coefficients"], steps, eps=eps,
                                dtype=opt.ns_dtype)
            for j, i in enumerate(members):
                ortho[i] = out[j]
        for i in chunk:  # 4. results back to every rank's shard
            p = self.params[i]
            owner = self.split.ranks[self.owners[i]]
            if is_dtensor(p):
                o = scatter_whole(ortho.get(i), p, owner, inputs[i].dtype)
            elif self.split.layout == "dtensor":
                o = ortho[i]
            else:
                o = ortho[i] if i in ortho else torch.empty_like(inputs[i])
                o = o.contiguous()
                dist.broadcast(o, src=owner, group=self.split.group)
            back[i] = o.to(local(p).device)

    @staticmethod
    def _as_dtensor(u: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """The local Newton-Schulz input ``u`` as a DTensor in the layout of the parameter ``like``."""
        from torch.distributed.tensor import DTensor

        return DTensor.from_local(u, like.device_mesh, like.placements, run_check=False, shape=like.shape,
                                  stride=like.stride())
