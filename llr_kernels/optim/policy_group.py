"""One layerwise policy over several optimizers: pipeline stages on different ranks, model parts on one rank.

Eq. 3 stretches the alphas of *all* layers over [1, s], and the outlier rule compares each alpha with all the
others. An optimizer that holds only one pipeline stage (or one model part of an interleaved schedule) would do
both over its own layers, and its multipliers would differ from those of one optimizer over the whole model
(on all-MiniLM-L6-v2 by up to 0.6 with 6 stages). Optimizers built with the same ``PolicyGroup`` share one policy:

    group = PolicyGroup(pp_group)                      # the ranks that hold the other stages (None: this rank only)
    opts = [LLRAdamW(part, lr=..., total_steps=T, policy_group=group) for part in model_parts]

At an LLR update the first of a rank's member optimizers to step measures the matrices of every member on its
rank (each through its own ``spectral_group``, so FSDP2 / DDP still split that work), all ranks exchange their
members' metric values, statuses, pins, previous targets and layer kinds, and every rank runs the policy on the
concatenation in the whole model's order; each member takes its slice and the others skip their own update at
that step. The multipliers are then exactly those of one optimizer over the whole model. Members keep their own
state (checkpoints are per optimizer, as before); the group holds none, so a resume needs nothing extra.

Order: members are concatenated by ``stages`` (this rank's members' stage indices, in the order they are built;
torchtitan's interleaved schedules put stages 0 and 2 on rank 0) or, without it, by rank and then build order.
Only policies that measure (LLR and its variants) use the group; the others' multipliers depend on each layer alone.
Every rank of the group must step its members at the same steps (as a pipeline schedule does).
"""
from __future__ import annotations

import time
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

import torch
import torch.distributed as dist

from ..spectral.rules import OK_STATUSES
from .spectral_update import finish_update, measure_layers

if TYPE_CHECKING:
    from .base import LLROptimizer


@dataclass
class _Layer:
    """What a policy reads of a layer (``llr_kernels.layers.Layer`` duck type): its name and kind."""

    name: str
    kind: str


class PolicyGroup:
    """The optimizers that share one layerwise policy (see the module docstring).

    process_group: the ranks that hold the model's other stages (torchtitan: the "pp" mesh's group); None for
        optimizers on this rank only (several model parts, no pipeline across ranks).
    stages: this rank's members' positions in the whole model (e.g. pipeline stage indices), in the order the
        optimizers are built; None: rank order, then build order. Give it on every rank or on none.
    """

    def __init__(self, process_group: Any = None, stages: Sequence[int] | None = None) -> None:
        if process_group is not None and not (dist.is_available() and isinstance(process_group, dist.ProcessGroup)):
            raise TypeError(f"process_group must be a torch.distributed.ProcessGroup or None, got {process_group!r}")
        if stages is not None:
            stages = [int(s) for s in stages]
            if len(set(stages)) != len(stages):
                raise ValueError(f"stages {stages} repeat a stage; give each model part on this rank its own index")
        self.process_group = process_group
        self.stages = stages
        self._members: list[weakref.ref] = []
        self._pending: dict[int, int] = {}  # id(member) -> step whose update another member already ran for it

    def bind(self, process_group: Any, stages: Sequence[int] | None = None) -> None:
        """Set the process group and stage indices after the members were built (torchtitan attaches the pipeline
        group once the trainer has built its optimizers), before training."""
        fresh = PolicyGroup(process_group, stages)
        if stages is not None and len(fresh.stages) != len(self.members()):
            raise ValueError(f"stages={list(stages)} names {len(fresh.stages)} parts but {len(self.members())} "
                             "optimizers on this rank joined the group")
        self.process_group, self.stages = fresh.process_group, fresh.stages

    # ----- membership ------------------------------------------------------------------------------
    def join(self, opt: "LLROptimizer") -> None:
        """Add an optimizer (its constructor calls this for ``policy_group=``)."""
        if self.stages is not None and len(self.members()) >= len(self.stages):
            raise ValueError(f"this PolicyGroup was given stages={self.stages} for {len(self.stages)} optimizers on "
                             "this rank; a further optimizer joined it. Give one stage index per model part")
        self._members.append(weakref.ref(opt))

    def members(self) -> list["LLROptimizer"]:
        """This rank's member optimizers that are alive, in build order."""
        alive = [(r, r()) for r in self._members]
        self._members = [r for r, o in alive if o is not None]
        return [o for _, o in alive if o is not None]

    def _key(self, j: int) -> tuple[int, int]:
        if self.stages is not None:
            return (self.stages[j], 0)
        rank = 0 if self.process_group is None else dist.get_rank(self.process_group)
        return (rank, j)

    # ----- the shared update ------------------------------------------------------------------------
    def update(self, opt: "LLROptimizer", t: int, source: str) -> torch.Tensor:
        """The LLR update before step t for ``opt`` and, on its first call at step t, for every member."""
        if self._pending.pop(id(opt), None) == t:  # measured with the first member to step at t
            return opt.policy.alphas.clone()
        members = self.members()
        if not any(m is opt for m in members):
            raise ValueError("this optimizer is not a member of the PolicyGroup it was given")
        # problems found here travel with the values, so that every rank raises, none waits in a collective
        problem = None
        if self.stages is not None and len(self.stages) != len(members):
            problem = (ValueError, f"stages={self.stages} names {len(self.stages)} model parts but {len(members)} "
                                   "optimizers on this rank are in the group; give one stage index per part")
        local = []
        for j, m in enumerate(members):
            start = time.perf_counter()
            values, status = measure_layers(m, source)
            local.append({"key": self._key(j) if problem is None else (-1, j), "problem": problem, "step": m.llr_step,
                          "explicit": self.stages is not None, "t": t, "source": source,
                          "policy": m.policy.name, "config": m.policy.config, "num_updates": m.policy.num_updates,
                          "values": values, "status": status, "pinned": m.policy.pinned.clone(),
                          "target": m.policy.target.clone(), "wd_target": m.policy.wd_target.clone(),
                          "names": list(m.policy.names), "kinds": list(m.policy.kinds),
                          "matrix": [l.is_matrix for l in m.layers], "seconds": time.perf_counter() - start})
        everyone = self._exchange(local)
        target, wd_target, outliers, values, usable = self._decide(everyone)
        offset, mine = 0, {id(e): j for j, e in enumerate(local)}
        for e in everyone:  # every rank walks the same order; it applies the slices of its own members
            n = len(e["status"])
            j = mine.get(id(e))
            if j is not None:
                m = members[j]
                sl = slice(offset, offset + n)
                out = m.policy.apply_targets(t, values[sl], source, target[sl],
                                             None if wd_target is None else wd_target[sl], outliers[sl])
                finish_update(m, list(e["status"]), out, source, time.perf_counter() - e["seconds"], usable)
                m._host_due = True  # the next step copies the new multipliers to the device
                if m is not opt:
                    self._pending[id(m)] = t
            offset += n
        return opt.policy.alphas.clone()

    def _exchange(self, local: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Every rank's member entries, ordered as the layers of the whole model (``stages``, else rank and build
        order); this rank's entries are the objects of ``local`` themselves."""
        if self.process_group is None or dist.get_world_size(self.process_group) == 1:
            everyone = list(local)
        else:
            gathered: list[Any] = [None] * dist.get_world_size(self.process_group)
            sendable = [{k: v for k, v in e.items() if k != "seconds"} for e in local]
            dist.all_gather_object(gathered, sendable, group=self.process_group)
            rank = dist.get_rank(self.process_group)
            everyone = [e for r, entries in enumerate(gathered) for e in (local if r == rank else entries)]
        for e in everyone:
            if e["problem"] is not None:
                raise e["problem"][0](e["problem"][1])
        steps = sorted({e["step"] for e in everyone})
        if len(steps) > 1:
            raise RuntimeError(f"the optimizers of one PolicyGroup are at different steps {steps}: step every member "
                               "once per training step (a policy group spans one model)")
        if len({e["explicit"] for e in everyone}) > 1:
            raise ValueError("PolicyGroup was given stages on some ranks and not on others; give them on every rank")
        keys = [e["key"] for e in everyone]
        if len(set(keys)) != len(keys):
            raise ValueError(f"two members of the PolicyGroup have the same stage ({sorted(keys)}); stage indices "
                             "must be unique across ranks")
        first = everyone[0]
        for e in everyone:
            for what in ("t", "source", "policy", "num_updates"):
                if e[what] != first[what]:
                    raise RuntimeError(f"members of one PolicyGroup disagree on {what}: {first[what]!r} vs {e[what]!r}; "
                                       "build every member with the same policy and step them together")
            if e["config"] != first["config"]:
                raise ValueError(f"members of one PolicyGroup have different policy configs:\n{first['config']}\n"
                                 f"{e['config']}\nbuild every member with the same policy arguments")
        return sorted(everyone, key=lambda e: e["key"])

    @staticmethod
    def _decide(everyone: list[dict[str, Any]]) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor,
                                                          torch.Tensor, int]:
        """The policy run once over the concatenation of every member's layers: (targets, weight-decay targets or
        None, outlier mask, metric values, layers with a usable value)."""
        first = everyone[0]
        # names qualified by member: a bias follows its own part's matrix even if two parts reuse a name
        layers = [_Layer(f"{k}:{n}", kind) for k, e in enumerate(everyone) for n, kind in zip(e["names"], e["kinds"])]
        whole = first["config"].build(layers)
        whole.pinned = torch.cat([e["pinned"] for e in everyone])
        whole.target = torch.cat([e["target"] for e in everyone])
        whole.wd_target = torch.cat([e["wd_target"] for e in everyone])
        whole.num_updates = first["num_updates"]
        values = torch.cat([e["values"] for e in everyone]).to(torch.float64)
        target, wd_target, outliers = whole.targets_from(values, first["source"])
        usable = sum(is_matrix and not bool(pin) and st in OK_STATUSES for e in everyone
                     for is_matrix, pin, st in zip(e["matrix"], e["pinned"], e["status"]))
        return target, wd_target, outliers, values, usable


def check_policy_group(policy_group: Any) -> Any:
    """``policy_group`` must be None or a ``PolicyGroup``; returns it."""
    if policy_group is not None and not isinstance(policy_group, PolicyGroup):
        raise TypeError(f"policy_group must be None or a llr_kernels.optim.policy_group.PolicyGroup (one policy over "
                        f"pipeline stages and model parts), got {type(policy_group).__name__}")
    return policy_group
