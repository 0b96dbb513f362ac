"""The LLR update of an optimizer: measure every layer's metric (alpha), hand the values to the policy, say which
layers could not be used. Under DDP and every DTensor layout each matrix is measured by one rank (``spectral_split``),
one memory-bounded chunk at a time (``budget``); optimizers of one ``PolicyGroup`` (pipeline stages, model parts)
share one policy run (``policy_group``)."""
from __future__ import annotations

import math
import time
import warnings
from typing import TYPE_CHECKING

import torch

from ..spectral import hill_alpha, measure
from ..spectral.cost import default_budget
from ..spectral.rules import (
    OK_STATUSES,
    STATUS_INACTIVE,
    STATUS_NO_GRAD,
    STATUS_OUTLIER,
    STATUS_VECTOR,
)
from ._dtensor import full, is_dtensor, local
from .budget import Chunker, update_bytes
from .placements import gather_whole
from .params import caller_stacklevel
from .spectral_split import Split, assign_owners, measure_cost, resolve_split, share_results

if TYPE_CHECKING:
    from .base import LLROptimizer

# Statuses of matrix layers whose alpha does not enter Eq. 3, and what each means for the user.
# |d alpha| against float64 Eq. 2 that every measured alpha meets (DESIGN.md's target): Lanczos adapts its budget
# per matrix or hands the matrix to the exact path (spectral/target.py); exact meets it by construction.
ALPHA_TARGET_ERROR = 0.02

STATUS_EXPLANATIONS: dict[str, str] = {
    "too_few_eigenvalues": "fewer than min_eigs={min_eigs} eigenvalues, too few for a tail estimate; their LR multiplier stays fixed",
    "non_finite": "inf or NaN entries in the {source} at an LLR update; they keep their previous multiplier",
    "zero_matrix": "an all-zero {source} at an LLR update; they keep their previous multiplier",
    "rank_deficient": "a numerically rank-deficient {source} with fewer than min_eigs={min_eigs} nonzero eigenvalues; they keep their previous multiplier",
    "ok_rank_deficient": "a rank-deficient {source} (e.g. fewer tokens per step than half the layer width): alpha is Eq. 2 on the nonzero eigenvalues with the rank-aware k, biased against the full-rank value (benchmarks/results/hill_rank_deficient_bias.md)",
    "flat_spectrum": "a flat spectrum (e.g. orthogonal init or Muon-like updates): no tail to fit; they keep their previous multiplier",
    "out_of_range": "alpha above the estimator's bound (hill_alpha alpha_max), not a tail estimate; they keep their previous multiplier",
    STATUS_OUTLIER: "alpha far from the other layers' (robust rule, policies.llr.robust_outliers; outlier_z=None turns it off); they keep their previous multiplier",
    STATUS_NO_GRAD: "no gradient at a gradient-phase LLR update; they keep their previous multiplier",
    STATUS_INACTIVE: "fewer than two layers have a usable alpha at this LLR update, so Eq. 3 has no range and no multiplier moves",
}


def update_layer_metrics(opt: "LLROptimizer", t: int | None = None) -> torch.Tensor:
    """Measure every layer's metric (alpha for LLR) now and set the policy's new multipliers (``opt.update_metrics``).

    Layers whose alpha is not a usable tail estimate (see ``STATUS_EXPLANATIONS``) keep their previous
    multiplier; each such cause is warned about once per optimizer, and ``layer_stats()`` names it. Under
    DDP or DTensor parameters the layers are measured by one rank each (``spectral_split``; ``last_split`` says how).
    With a ``policy_group`` the policy runs once over the layers of every optimizer in the group (``policy_group``).
    """
    if not opt.policy.measures:
        raise ValueError(f"policy {opt.policy.name!r} does not measure layers, so there are no alphas to update; "
                         "its multipliers follow from the layers and the step alone")
    t = opt.llr_step if t is None else t
    source = opt.policy.source(t)
    group = getattr(opt, "policy_group", None)
    if group is not None:  # one policy over several optimizers' layers (optim/policy_group.py)
        return group.update(opt, t, source)
    start = time.perf_counter()
    alphas, status = measure_layers(opt, source)
    outliers = opt.policy.update(t, alphas, source)
    finish_update(opt, status, outliers, source, start)
    return alphas


def measure_layers(opt: "LLROptimizer", source: str) -> tuple[torch.Tensor, list[str]]:
    """Every layer's metric (float64, NaN where not measured) and status, measured on ``source`` ("grad" or
    "weight"), split over ``spectral_group`` when there is one (each matrix measured once in the world)."""
    measured = opt.measured_layers()
    alphas = torch.full((len(opt.layers),), float("nan"), dtype=torch.float64)
    status = [STATUS_VECTOR if not l.is_matrix else STATUS_NO_GRAD for l in opt.layers]
    split, owners, stats = measure_share(opt, measured, source, alphas, status)
    if split is not None:
        rank = split.rank
        mine = [i for j, i in enumerate(measured) if owners[j] == rank]
        shared, shared_status = share_results(alphas, status, mine, split)
        for i in measured:
            alphas[i], status[i] = shared[i], shared_status[i]
        opt.last_split = {"world": split.world, "rank": rank, "layout": split.layout, "layers_measured": len(mine),
                          "layers": len(measured), **stats}
    return alphas, status


def finish_update(opt: "LLROptimizer", status: list[str], outliers: torch.Tensor, source: str, start: float,
                  usable: int | None = None) -> None:
    """Record the statuses of an update (outliers marked), warn about unusable layers, count its time.
    ``usable``: layers with a usable alpha over the whole policy (a policy group), default this optimizer's."""
    for i in torch.nonzero(outliers).flatten().tolist():
        status[i] = STATUS_OUTLIER
    opt.layer_status = status
    warn_statuses(opt, status, source, usable)
    opt.llr_update_seconds += time.perf_counter() - start


def measure_share(opt: "LLROptimizer", measured: list[int], source: str, alphas: torch.Tensor,
                   status: list[str]) -> tuple[Split | None, list[int] | None, dict]:
    """Measure this rank's share of the ``measured`` layers into ``alphas`` / ``status``, one chunk at a time: each
    matrix is gathered whole onto its owner only (any DTensor layout; ``placements.gather_whole``), chunks stay
    under the memory budget (``budget``) and are measured and freed before the next gather. Returns the split
    (None: this rank measured every layer), each measured layer's owner rank (None without a split) and what
    moved ("bytes_received", "bytes_held": the largest chunk)."""
    params = [opt.layers[i].param for i in measured]
    split = resolve_split(opt.spectral_group, opt._model_ref() if opt._model_ref else None, params)
    owners = None if split is None else assign_owners(
        [measure_cost(opt.layers[i].shape, opt.layers[i].stacked) for i in measured], split.world)
    me = 0 if split is None else split.rank
    device = local(params[0]).device if params else torch.device("cpu")
    chunk = Chunker(opt.spectral_memory_budget if opt.spectral_memory_budget is not None else default_budget(device))
    idx: list[int] = []
    mats: list[torch.Tensor] = []
    stacks: list[bool] = []
    received, held_bytes = 0, 0

    def flush() -> None:
        if mats:
            values, statuses = measure_matrices(opt, mats, stacks)
            alphas[idx] = values
            for i, st in zip(idx, statuses):
                status[i] = st
        idx.clear(), mats.clear(), stacks.clear(), chunk.reset()

    for j, i in enumerate(measured):
        src = opt._spectral_source(opt.layers[i], source)
        if src is None:
            continue
        if owners is not None and owners[j] != me and not is_dtensor(src):
            continue  # a replicated matrix: its owner measures its own copy
        shape, copied = tuple(src.shape), is_dtensor(src)
        need = update_bytes(shape, src.element_size(), copied, opt.layers[i].stacked)
        if (owners is None or owners[j] == me) and chunk.must_flush(shape, need):
            flush()  # before the gather: the budget bounds what is held at once
        if owners is None:
            m = full(src)
        elif is_dtensor(src):
            m = gather_whole(src, split.ranks[owners[j]])  # every rank takes part; the owner receives
        else:
            m = src
        if m is not None:
            received += m.numel() * m.element_size() if copied and split is not None else 0
            held_bytes = max(held_bytes, sum(x.numel() * x.element_size() for x in mats) + m.numel() * m.element_size())
            chunk.add(shape, need)
            idx.append(i)
            mats.append(m)
            stacks.append(opt.layers[i].stacked)
    flush()
    return split, owners, {"bytes_received": received, "bytes_held": held_bytes, "chunk_peak_estimate": chunk.peak}


def measure_matrices(opt: "LLROptimizer", mats: list[torch.Tensor],
                     stacked: list[bool] | None = None) -> tuple[torch.Tensor, list[str]]:
    """The policy's metric of each matrix (float64) and its status: PL_Alpha_Hill by the median fit through
    ``hill_alpha`` (every alpha within ALPHA_TARGET_ERROR of Eq. 2), else ``spectral.metrics.measure``
    (exact eigenvalues), or the Frobenius norm for "grad_norm". A ``stacked`` matrix (3-D: MoE experts) is
    measured slice by slice and gets ``fold_stack`` of its slices' results."""
    if stacked is not None and any(stacked) and opt.policy.metric != "grad_norm":
        slices = [list(m.unbind(0)) if st else [m] for m, st in zip(mats, stacked)]
        values, statuses = _measure(opt, [x for sl in slices for x in sl])
        out, out_status, k = [], [], 0
        for sl in slices:
            v, st = fold_stack(values[k:k + len(sl)], statuses[k:k + len(sl)])
            out.append(v), out_status.append(st)
            k += len(sl)
        return torch.tensor(out, dtype=torch.float64), out_status
    return _measure(opt, mats)


def _measure(opt: "LLROptimizer", mats: list[torch.Tensor]) -> tuple[torch.Tensor, list[str]]:
    metric, fit = opt.policy.metric, opt.policy.fit
    if metric == "alpha" and fit == "median":
        res = hill_alpha(mats, method=opt.hill_method, variant=opt.hill_variant, min_eigs=opt.min_eigs,
                         return_status=True, target_error=ALPHA_TARGET_ERROR)
        return res.alpha, list(res.status)
    if metric == "grad_norm":
        norms = torch.stack([torch.linalg.vector_norm(m.detach().to(torch.float64)).cpu() for m in mats])
        return norms, ["ok" if math.isfinite(float(v)) else "non_finite" for v in norms]
    return measure(mats, metric, fit=fit, min_eigs=opt.min_eigs, variant=opt.hill_variant)


def fold_stack(values: torch.Tensor, statuses: list[str]) -> tuple[float, str]:
    """One value and status for a stack of matrices that share one learning rate: the mean over the slices with a
    usable value (their first status: ok, or ok on the nonzero eigenvalues), else NaN and the first slice's."""
    use = [j for j, st in enumerate(statuses) if st in OK_STATUSES]  # these statuses carry a finite value
    if not use:
        return float("nan"), statuses[0]
    return float(values[use].mean()), statuses[use[0]]


def usable_layers(opt: "LLROptimizer", status: list[str]) -> int:
    """How many of the optimizer's mapped layers (matrices, not pinned) have a usable alpha."""
    return sum(l.is_matrix and not bool(opt.policy.pinned[i]) and status[i] in OK_STATUSES
               for i, l in enumerate(opt.layers))


def warn_statuses(opt: "LLROptimizer", status: list[str], source: str, usable: int | None = None) -> None:
    """One RuntimeWarning per cause (not per step) for layers whose alpha could not be used."""
    warned = opt.__dict__.setdefault("_warned_causes", set())
    by_cause: dict[str, list[str]] = {}
    for i, (layer, st) in enumerate(zip(opt.layers, status)):
        if st in STATUS_EXPLANATIONS and not bool(opt.policy.pinned[i]):
            by_cause.setdefault(st, []).append(layer.name)
    mapped = [i for i, l in enumerate(opt.layers) if l.is_matrix and not bool(opt.policy.pinned[i])]
    usable = usable_layers(opt, status) if usable is None else usable
    if mapped and usable < 2:
        by_cause.setdefault(STATUS_INACTIVE, [])
    for cause, names in by_cause.items():
        if cause in warned:
            continue
        warned.add(cause)
        shown = ", ".join(names[:4]) + (f" and {len(names) - 4} more" if len(names) > 4 else "")
        what = STATUS_EXPLANATIONS[cause].format(source=source, min_eigs=opt.min_eigs)
        head = f"LLR: {len(names)} layer(s) ({shown}): " if names else "LLR: "
        warnings.warn(head + what + " (warned once; see layer_stats()['status'])", RuntimeWarning,
                      stacklevel=caller_stacklevel())
