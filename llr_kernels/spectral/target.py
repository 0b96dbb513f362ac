"""``target_error``: more SLQ probes, or the exact path, until every alpha's error bound meets the target.

Each SLQ matrix's bound is TARGET_Z x max(jackknife stderr, modelled RMS) + bias + a steps term: |alpha from all
Lanczos steps - alpha from the first steps/2| on the same probes (the quadrature's resolution error, which probes
do not remove). Matrices above the target get the probe count the model says they need (powers of two, new probes
pooled with the old) while SLQ at that total still costs less than exact (or up to ``max_probes``); the rest, and
SLQ matrices whose status is not ok, go to exact (``fallback="exact"``) or are flagged. Measurements: docs/spectral.md.
"""
from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field

import torch

from .context import Call
from .cost import EXACT_REL_TOL, DeviceCost, exact_cost, lanczos_cost, slq_bias_model, slq_error_bound
from .exact import run_exact
from .rules import OK_STATUSES
from .slq import NodeRow, finish_lanczos, run_lanczos

TARGET_FALLBACKS = ("exact", "flag")


@dataclass
class Target:
    """The refinement's settings and its per-matrix results (the report's error_est, probes, to_exact, ...)."""

    target: float
    max_probes: int | None
    fallback: str
    costs: DeviceCost | None
    steps_err: torch.Tensor  # (nmat,) the half-steps term, updated by every Hill reduction of a refinement
    err: torch.Tensor = field(init=False)
    probes: list[int] = field(init=False)
    to_exact: list[int] = field(default_factory=list)
    fixed: tuple | None = None  # (alpha, stderr, status) of the fixed budget, before any refinement

    def __post_init__(self) -> None:
        self.err = torch.zeros(self.steps_err.shape[0], dtype=torch.float64)
        self.probes = [0] * self.steps_err.shape[0]


def refine(call: Call, tgt: Target, rows: list[NodeRow], device: torch.device) -> None:
    """Give the SLQ matrices of one device more probes until their bound is within the target; a matrix whose
    extra SLQ would cost more than exact (or pass max_probes), or whose status is not ok, goes to exact (or is
    flagged). Probes of later rounds are new draws of the same generator, pooled with the earlier ones; each round
    is one SLQ run per (n, extra probes) and one Hill reduction per probe count."""
    cur = {r.index: r for r in rows}
    pc = {i: call.probes for i in cur}  # probes pooled so far, per matrix
    todo = list(cur)
    while todo:
        grow: dict[tuple[int, int], list[int]] = defaultdict(list)  # (n, extra probes) -> indices
        hand: dict[int, list[int]] = defaultdict(list)
        for i in todo:
            n, p = cur[i].n, pc[i]
            tgt.probes[i] = p
            if call.status[i] not in OK_STATUSES:
                tgt.err[i] = float("inf")
                hand[n].append(i)
                continue
            a, n_eff = float(call.alpha[i]), call.ranks.get(i, n)  # a rank-deficient tail: its rank's eigenvalues
            fixed_part = slq_bias_model(a, n_eff) + float(tgt.steps_err[i])  # what more probes do not remove
            tgt.err[i] = slq_error_bound(a, n_eff, p, float(call.stderr[i]), float(tgt.steps_err[i]))
            if tgt.err[i] <= tgt.target:
                continue
            room = tgt.target - fixed_part  # what the statistical part may use; <= 0: probes cannot help
            stat = tgt.err[i] - fixed_part
            want = p * 2 ** max(1, math.ceil(math.log2((stat / room) ** 2))) if room > 0 else 0
            if room <= 0:
                ok = False
            elif tgt.max_probes is not None:
                want = min(want, tgt.max_probes // call.groups * call.groups)
                ok = want > p
            else:
                ok = lanczos_cost(n, want, call.steps, device, tgt.costs) < exact_cost(n, device, tgt.costs)
            if ok:
                grow[(n, want - p)].append(i)
            else:
                hand[n].append(i)
        if tgt.fallback == "exact":
            edt = call.dtype if call.dtype == torch.float64 else None
            for n, idx in hand.items():
                run_exact(call, idx, n, device, edt)
                for i in idx:
                    call.chosen[i], call.stderr[i], tgt.probes[i] = "exact", 0.0, 0
                    tgt.err[i] = EXACT_REL_TOL * float(call.alpha[i]) if call.status[i] in OK_STATUSES else 0.0
                    tgt.to_exact.append(i)
        more: dict[torch.device, list[NodeRow]] = defaultdict(list)
        for (n, extra), idx in grow.items():
            run_lanczos(call, idx, n, device, extra, more, half=True)
        for r in more[device]:  # pool the new probes with the old ones
            cur[r.index] = cur[r.index].pooled(r)
            pc[r.index] += r.nodes.shape[0]
        todo = [i for idx in grow.values() for i in idx]
        by_p: dict[int, list[int]] = defaultdict(list)
        for i in todo:
            by_p[pc[i]].append(i)
        for idx in by_p.values():
            finish_lanczos(call, [cur[i] for i in idx], device, tgt.steps_err)
