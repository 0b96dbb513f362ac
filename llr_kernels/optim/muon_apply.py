"""Muon's last stage for a set of matrices on one device: decoupled weight decay and the orthogonalized update,
p = p (1 - lr_i wd_i) - lr_i ratio_i O_i, through the dispatched ``muon_apply`` op. Each matrix's lr_i is its
group lr x its layer multiplier (wd_i likewise), computed on device from the multipliers the optimizer's host
step writes: no host sync. Shared by LLRMuon's single-process step and its split step (``muon_split``)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from ..ops.custom_ops import muon_apply
from ..ops.dispatch import get_op
from ..ops.muon.naive import adjust_lr_ratio
from .params import per_layer

if TYPE_CHECKING:
    from .base import LLROptimizer


@dataclass
class ApplyLaunch:
    """muon_apply over the Muon matrices of one device, with per-matrix decay / step-size buffers."""

    params: list[torch.Tensor]
    ortho_views: list[torch.Tensor]
    group_index: torch.Tensor  # (N,) long on device
    layer_index: torch.Tensor  # (N,) long on device
    ratio: torch.Tensor  # (N,) float64 on device: adjust_lr_ratio of each matrix
    multipliers: torch.Tensor  # (L,) float64 on device (LLROptimizer._multipliers_on)
    wd_multipliers: torch.Tensor  # (L,) float64 on device (LLROptimizer._wd_multipliers_on)
    decays: torch.Tensor  # (N,) 1 - lr_i * wd_i, computed on device every step
    step_sizes: torch.Tensor  # (N,) lr_i * ratio_i
    backend: str
    filled: tuple | None = None  # eager mode: the host values the buffers were last computed from


def make_apply_launch(opt: "LLROptimizer", params: list[torch.Tensor], group_ids: list[int], device: torch.device,
                      backend: str) -> ApplyLaunch:
    """The apply launch of ``params`` (their groups ``group_ids``) on ``device``, with ``backend`` chosen by dispatch.
    Muon's shape factor uses each layer's logical (out, in) shape: Hugging Face Conv1D weights are stored transposed."""
    chosen, _ = get_op("muon_apply", backend, device)
    buf_dtype = torch.float64 if chosen == "torch" else torch.float32
    layers = [opt.layers[opt.layer_of(p)] for p in params]
    ratios = [adjust_lr_ratio(opt.param_groups[gi]["adjust_lr_fn"], layer.logical_shape)
              for gi, layer in zip(group_ids, layers)]
    return ApplyLaunch(
        params=params,
        ortho_views=[],
        group_index=torch.tensor(group_ids, dtype=torch.long, device=device),
        layer_index=torch.tensor([opt.layer_of(p) for p in params], dtype=torch.long, device=device),
        ratio=torch.tensor(ratios, dtype=torch.float64, device=device),
        multipliers=opt._multipliers_on(device),
        wd_multipliers=opt._wd_multipliers_on(device),
        decays=torch.zeros(len(params), dtype=buf_dtype, device=device),
        step_sizes=torch.zeros(len(params), dtype=buf_dtype, device=device),
        backend=chosen,
    )


def fill_apply_buffers(opt: "LLROptimizer", a: ApplyLaunch) -> None:
    """decay_i = 1 - lr_i wd_i and step_i = lr_i ratio_i with lr_i = group lr x multiplier, on device (eager:
    only when a group value or the multipliers changed)."""
    values = opt._group_lr_wd(a.decays.device, a.filled)
    if values is None:
        return
    group_lr, group_wd, key = values
    lr = per_layer(group_lr, a.group_index, a.multipliers, a.layer_index)
    a.decays.copy_(1.0 - lr * per_layer(group_wd, a.group_index, a.wd_multipliers, a.layer_index))
    a.step_sizes.copy_(lr * a.ratio)
    a.filled = key


def run_apply(opt: "LLROptimizer", a: ApplyLaunch, params: list[torch.Tensor], ortho: list[torch.Tensor]) -> None:
    """Fill the buffers and apply ``ortho`` to ``params`` (the launch's tensors, or their local shards)."""
    fill_apply_buffers(opt, a)
    muon_apply(params, ortho, a.decays, a.step_sizes, opt.capturable, a.backend)
