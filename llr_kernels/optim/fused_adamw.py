"""The fused multi-LR AdamW step over a set of param groups: LLRAdamW's whole step and LLRMuon's AdamW part.

Tensors that share device, dtypes and (betas, eps, amsgrad, maximize) form one launch of the ``adamw_step`` op
(a torch.library custom op dispatched to Triton, the C++/CUDA extension or torch). Its per-tensor LR and weight
decay buffers are group value x layer multiplier, computed on device at every step from the multipliers the
optimizer's host step writes: no host sync, capturable in a CUDA graph.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable

import torch

from .._checks import check_betas, check_bool, check_real
from ..ops.custom_ops import adamw_step
from ..ops.dispatch import get_op
from ._dtensor import is_dtensor, local
from .clip import clip_all_grads
from .params import default_state_dtype, per_layer


@dataclass
class _Launch:
    """One call of the step op: tensors that share device, dtypes and (betas, eps, amsgrad, maximize)."""

    params: list[torch.Tensor]
    group_index: torch.Tensor  # (N,) long on device: param group of each tensor
    layer_index: torch.Tensor  # (N,) long on device: LLR layer of each tensor
    multipliers: torch.Tensor  # (L,) float64 on device: every layer's multiplier (LLROptimizer._multipliers_on)
    wd_multipliers: torch.Tensor  # (L,) float64 on device: every layer's weight-decay multiplier
    lrs: torch.Tensor  # (N,) per-tensor LR buffer on device, computed on device at every step
    weight_decays: torch.Tensor  # (N,) per-tensor weight decay on device
    steps: torch.Tensor  # (N,) per-tensor step counters on device; state[p]["step"] are views of it
    options: dict[str, Any]
    backend: str = "torch"  # the adamw_step implementation chosen for this launch (llr_kernels.ops.dispatch)
    sharded: bool = False  # DTensor params: local shards are taken at every step
    state_lists: tuple | None = None  # (exp_avgs, exp_avg_sqs, max_exp_avg_sqs or []), when not sharded
    filled: tuple | None = None  # eager mode: the host values lrs / weight_decays were last computed from


def validate_adamw_args(
    lr: Any, betas: Any, eps: Any, weight_decay: Any, amsgrad: Any = False, maximize: Any = False, *,
    where: str = "", names: dict[str, str] | None = None,
) -> None:
    """Check AdamW hyperparameters (TypeError / ValueError naming the argument); ``where`` prefixes the names
    (e.g. "param group 2: "), ``names`` renames them (LLRMuon's AdamW part: adamw_lr, adamw_betas, ...)."""
    n = {"lr": "lr", "betas": "betas", "eps": "eps", "weight_decay": "weight_decay", **(names or {})}
    check_real(where + n["lr"], lr, 0.0, hint=" (the base learning rate; each layer gets lr x its LLR multiplier)", tensor_ok=True)
    check_betas(where + n["betas"], betas)
    check_real(where + n["eps"], eps, 0.0, hint=" (added to the denominator; torch's default is 1e-8)")
    check_real(where + n["weight_decay"], weight_decay, 0.0, hint=" (decoupled: p *= 1 - lr_layer * weight_decay)")
    check_bool(where + "amsgrad", amsgrad)
    check_bool(where + "maximize", maximize)


def validate_step_options(max_grad_norm: Any, state_dtype: Any, params: list[torch.Tensor]) -> None:
    """max_grad_norm and state_dtype, shared by LLRAdamW and LLRMuon."""
    if max_grad_norm is not None:
        check_real("max_grad_norm", max_grad_norm, 0.0, lo_open=True, hint=" (or None: no clipping)")
    if state_dtype not in (None, torch.float32, torch.bfloat16):
        raise ValueError(f"state_dtype must be None (float32; float64 for float64 params), torch.float32 or torch.bfloat16, got {state_dtype!r}")
    if state_dtype is not None and any(p.dtype == torch.float64 for p in params):
        raise ValueError("state_dtype applies to fp32/bf16/fp16 params, and this optimizer has float64 params (their "
                         "state is float64); leave state_dtype=None or keep float64 params in another optimizer")


class FusedAdamWPart:
    """The fused multi-LR AdamW step over a chosen set of param groups (LLRAdamW, and LLRMuon's AdamW part).

    Mixed into an ``LLROptimizer`` that sets ``state_dtype``, ``last_grad_norm``, ``_launches`` and
    ``_signature``; its groups carry lr, betas, eps, weight_decay, amsgrad, maximize.
    """

    # ----- the cached launch table ------------------------------------------------------------------
    def _state_for(self, p: torch.Tensor, amsgrad: bool) -> dict[str, torch.Tensor]:
        st = self.state[p]
        if "exp_avg" not in st:
            sdt = default_state_dtype(self.state_dtype, p.dtype)
            st["step"] = torch.tensor(0.0, dtype=torch.float32)
            st["exp_avg"] = torch.zeros_like(p, dtype=sdt, memory_format=torch.preserve_format)
            st["exp_avg_sq"] = torch.zeros_like(p, dtype=sdt, memory_format=torch.preserve_format)
        if amsgrad and "max_exp_avg_sq" not in st:
            st["max_exp_avg_sq"] = torch.zeros_like(st["exp_avg_sq"])
        return st

    def _adamw_group_ids(self) -> list[int]:
        """The param groups this part steps (LLRMuon: its AdamW groups)."""
        return list(range(len(self.param_groups)))

    def _rebuild_plans(self) -> None:
        self._build_launches(self._active(self._adamw_group_ids()))

    def _active(self, group_ids: Iterable[int]) -> list[tuple[int, torch.Tensor]]:
        """(group, param) of every tensor with a grad in these groups."""
        active = []
        for gi in group_ids:
            for p in self.param_groups[gi]["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError(f"{type(self).__name__} does not support sparse gradients; use dense embeddings")
                active.append((gi, p))
        return active

    def _build_launches(self, active: list[tuple[int, torch.Tensor]]) -> None:
        """Group stepping tensors into launches and make the per-tensor buffers (when the set changes: host work)."""
        buckets: dict[tuple, list[tuple[int, torch.Tensor]]] = {}
        for gi, p in active:
            g = self.param_groups[gi]
            st = self._state_for(p, g["amsgrad"])
            key = (p.device, p.dtype, st["exp_avg"].dtype, tuple(g["betas"]), g["eps"], g["amsgrad"], g["maximize"])
            buckets.setdefault(key, []).append((gi, p))
        self._launches = []
        for (_, _, _, betas, eps, amsgrad, maximize), items in buckets.items():
            device = local(items[0][1]).device
            backend, _ = get_op("adamw_step", self.backend, device)
            buf_dtype = torch.float64 if backend == "torch" else torch.float32  # torch path: host math in double, as torch
            params = [p for _, p in items]
            states = [self.state[p] for p in params]
            steps = torch.stack([st["step"].to(torch.float32).reshape(()) for st in states]).to(device)
            for i, st in enumerate(states):
                st["step"] = steps[i]
            sharded = any(is_dtensor(p) for p in params)
            state_lists = None
            if not sharded:  # the state tensors live as long as the launch (a state load rebuilds it)
                state_lists = ([st["exp_avg"] for st in states], [st["exp_avg_sq"] for st in states],
                               [st["max_exp_avg_sq"] for st in states] if amsgrad else [])
            self._launches.append(
                _Launch(
                    params=params,
                    group_index=torch.tensor([gi for gi, _ in items], dtype=torch.long, device=device),
                    layer_index=torch.tensor([self.layer_of(p) for p in params], dtype=torch.long, device=device),
                    multipliers=self._multipliers_on(device),
                    wd_multipliers=self._wd_multipliers_on(device),
                    lrs=torch.zeros(len(params), dtype=buf_dtype, device=device),
                    weight_decays=torch.zeros(len(params), dtype=buf_dtype, device=device),
                    steps=steps,
                    options=dict(beta1=betas[0], beta2=betas[1], eps=eps, amsgrad=amsgrad, maximize=maximize),
                    backend=backend,
                    sharded=sharded,
                    state_lists=state_lists,
                )
            )
        self._adamw_params = [p for _, p in active]
        self._adamw_sharded = any(launch.sharded for launch in self._launches)

    def _on_state_loaded(self) -> None:
        self._signature = None  # step views must be rebuilt over the loaded state

    # ----- the step ---------------------------------------------------------------------------------
    def _fill_lr_buffers(self, launch: _Launch) -> None:
        """lrs = group lr x layer multiplier and weight_decays = group weight decay x layer wd multiplier (1 unless
        the policy sets it), computed on the launch's
        device (no host sync, no host-to-device copy when group LRs are tensors: capturable). In eager mode they
        are recomputed only when a group value or the multipliers changed."""
        values = self._group_lr_wd(launch.lrs.device, launch.filled)
        if values is None:
            return
        group_lr, group_wd, key = values
        launch.lrs.copy_(per_layer(group_lr, launch.group_index, launch.multipliers, launch.layer_index))
        launch.weight_decays.copy_(per_layer(group_wd, launch.group_index, launch.wd_multipliers, launch.layer_index))
        launch.filled = key

    def _adamw_step(self, max_grad_norm: float | None) -> None:
        """Step the tensors of the cached launches (built by ``_rebuild_plans``) with the fused op; clip their
        grads if asked. Per step this only gathers the grads and computes the LR buffers on device."""
        launches = self._launches
        if not launches:
            return
        clip_here = max_grad_norm is not None and len(launches) == 1 and not self._adamw_sharded
        if max_grad_norm is not None and not clip_here:
            # several launches or sharded grads: the norm must span all of them (all ranks for DTensors)
            self.last_grad_norm = clip_all_grads(self._adamw_params, max_grad_norm)
        for launch in launches:
            self._fill_lr_buffers(launch)
            if launch.sharded:
                states = [self.state[p] for p in launch.params]
                params = [local(p) for p in launch.params]
                grads = [local(p.grad) for p in launch.params]
                exp_avgs = [local(st["exp_avg"]) for st in states]
                exp_avg_sqs = [local(st["exp_avg_sq"]) for st in states]
                max_sqs = [local(st["max_exp_avg_sq"]) for st in states] if launch.options["amsgrad"] else []
            else:
                params = launch.params
                grads = [p.grad for p in params]
                exp_avgs, exp_avg_sqs, max_sqs = launch.state_lists
            o = launch.options
            norm = adamw_step(
                params, grads, exp_avgs, exp_avg_sqs, max_sqs, launch.lrs, launch.weight_decays, launch.steps,
                o["beta1"], o["beta2"], o["eps"], o["amsgrad"], o["maximize"], None, None,
                max_grad_norm if clip_here else None, self.capturable, launch.backend,
            )
            if clip_here:
                self.last_grad_norm = norm
