"""LLRAdamW: AdamW where every layer's LR is group["lr"] x its LLR multiplier, in one fused step."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable

import torch
from torch import nn

from ..dispatch import get_op
from ..layers import Classifier
from ..policy import LLRConfig
from .base import LLROptimizer, clip_all_grads


@dataclass
class _Launch:
    """One call of the step op: tensors that share device, dtypes and (betas, eps, amsgrad, maximize)."""

    params: list[torch.Tensor]
    group_index: torch.Tensor  # (N,) long, CPU: param group of each tensor
    layer_index: torch.Tensor  # (N,) long, CPU: LLR layer of each tensor
    lrs: torch.Tensor  # (N,) per-tensor LR buffer on device, updated in place every step
    weight_decays: torch.Tensor  # (N,) per-tensor weight decay on device
    steps: torch.Tensor  # (N,) per-tensor step counters on device; state[p]["step"] are views of it
    options: dict[str, Any]


def _is_dtensor(t: object) -> bool:
    return callable(getattr(t, "to_local", None))


def _local(t: torch.Tensor) -> torch.Tensor:
    """This rank's shard of an FSDP2/DTensor tensor (elementwise steps act on shards); plain tensors as is."""
    return t.to_local() if _is_dtensor(t) else t


def validate_adamw_args(lr: float, betas: tuple[float, float], eps: float, weight_decay: float) -> None:
    if not lr >= 0.0:
        raise ValueError(f"lr must be >= 0, got {lr!r}")
    if not eps >= 0.0:
        raise ValueError(f"eps must be >= 0, got {eps!r}")
    if not (0.0 <= betas[0] < 1.0 and 0.0 <= betas[1] < 1.0):
        raise ValueError(f"betas must each lie in [0, 1), got {betas!r}")
    if not weight_decay >= 0.0:
        raise ValueError(f"weight_decay must be >= 0, got {weight_decay!r}")


class FusedAdamWPart:
    """The fused multi-LR AdamW step over a chosen set of param groups (LLRAdamW, and LLRMuon's AdamW part).

    Mixed into an ``LLROptimizer`` that sets ``state_dtype``, ``last_grad_norm``, ``_launches`` and
    ``_signature``; its groups carry lr, betas, eps, weight_decay, amsgrad, maximize.
    """

    # ----- the cached launch table ------------------------------------------------------------------
    def _state_for(self, p: torch.Tensor, amsgrad: bool) -> dict[str, torch.Tensor]:
        st = self.state[p]
        if "exp_avg" not in st:
            sdt = self.state_dtype or (torch.float64 if p.dtype == torch.float64 else torch.float32)
            st["step"] = torch.tensor(0.0, dtype=torch.float32)
            st["exp_avg"] = torch.zeros_like(p, dtype=sdt, memory_format=torch.preserve_format)
            st["exp_avg_sq"] = torch.zeros_like(p, dtype=sdt, memory_format=torch.preserve_format)
        if amsgrad and "max_exp_avg_sq" not in st:
            st["max_exp_avg_sq"] = torch.zeros_like(st["exp_avg_sq"])
        return st

    def _build_launches(self, active: list[tuple[int, torch.Tensor]]) -> None:
        """Group stepping tensors into launches and make the per-tensor buffers (only when the set changes)."""
        buckets: dict[tuple, list[tuple[int, torch.Tensor]]] = {}
        for gi, p in active:
            g = self.param_groups[gi]
            st = self._state_for(p, g["amsgrad"])
            key = (p.device, p.dtype, st["exp_avg"].dtype, tuple(g["betas"]), g["eps"], g["amsgrad"], g["maximize"])
            buckets.setdefault(key, []).append((gi, p))
        self._launches = []
        for (_, _, _, betas, eps, amsgrad, maximize), items in buckets.items():
            device = _local(items[0][1]).device
            backend, _ = get_op("adamw_step", self.backend, device)
            buf_dtype = torch.float64 if backend == "torch" else torch.float32  # torch path: host math in double, as torch
            params = [p for _, p in items]
            steps = torch.stack([self.state[p]["step"].to(torch.float32).reshape(()) for p in params]).to(device)
            for i, p in enumerate(params):
                self.state[p]["step"] = steps[i]
            self._launches.append(
                _Launch(
                    params=params,
                    group_index=torch.tensor([gi for gi, _ in items], dtype=torch.long),
                    layer_index=torch.tensor([self.layer_of(p) for p in params], dtype=torch.long),
                    lrs=torch.zeros(len(params), dtype=buf_dtype, device=device),
                    weight_decays=torch.zeros(len(params), dtype=buf_dtype, device=device),
                    steps=steps,
                    options=dict(beta1=betas[0], beta2=betas[1], eps=eps, amsgrad=amsgrad, maximize=maximize),
                )
            )

    def _on_state_loaded(self) -> None:
        self._signature = None  # step views must be rebuilt over the loaded state

    # ----- the step ---------------------------------------------------------------------------------
    def _adamw_step(self, multipliers: torch.Tensor, group_ids: Iterable[int], max_grad_norm: float | None) -> None:
        """Step the tensors of param groups ``group_ids`` with the fused op; clip their grads if asked."""
        active = []
        for gi in group_ids:
            g = self.param_groups[gi]
            for p in g["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError(f"{type(self).__name__} does not support sparse gradients; use dense embeddings")
                active.append((gi, p))
        signature = tuple((gi, id(p)) for gi, p in active)
        if signature != self._signature:
            self._build_launches(active)
            self._signature = signature
        if not active:
            return
        group_lr = torch.tensor([float(g["lr"]) for g in self.param_groups], dtype=torch.float64)
        group_wd = torch.tensor([float(g["weight_decay"]) for g in self.param_groups], dtype=torch.float64)
        sharded = any(_is_dtensor(p) for _, p in active)
        clip_here = max_grad_norm is not None and len(self._launches) == 1 and not sharded
        if max_grad_norm is not None and not clip_here:
            # several launches or sharded grads: the norm must span all of them (all ranks for DTensors)
            self.last_grad_norm = clip_all_grads([p for _, p in active], max_grad_norm)
        for launch in self._launches:
            launch.lrs.copy_(group_lr[launch.group_index] * multipliers[launch.layer_index], non_blocking=True)
            launch.weight_decays.copy_(group_wd[launch.group_index], non_blocking=True)
            _, op = get_op("adamw_step", self.backend, launch.steps.device)
            states = [self.state[p] for p in launch.params]
            norm = op(
                [_local(p) for p in launch.params],
                [_local(p.grad) for p in launch.params],
                [_local(st["exp_avg"]) for st in states],
                [_local(st["exp_avg_sq"]) for st in states],
                [_local(st["max_exp_avg_sq"]) for st in states] if launch.options["amsgrad"] else None,
                launch.lrs,
                launch.weight_decays,
                launch.steps,
                max_grad_norm=max_grad_norm if clip_here else None,
                **launch.options,
            )
            if clip_here:
                self.last_grad_norm = norm


class LLRAdamW(FusedAdamWPart, LLROptimizer):
    """AdamW with layerwise learning rates from PL_Alpha_Hill (LLR), stepped by one fused multi-LR op.

    params: an ``nn.Module`` (recommended: layer kinds come from module types and names), an iterable of
        (name, tensor) pairs, tensors, or param groups (pass ``model=`` so groups of plain tensors get names).
    lr, betas, eps, weight_decay, amsgrad, maximize: as ``torch.optim.AdamW``. Weight decay is decoupled and
        uses the layer's LR (p *= 1 - lr_layer * wd), as the public LLR code does through its param groups.
    s, interval, total_steps, grad_phase, active_until, ramp_steps, pin_embedding, pin_lm_head: the LLR
        policy (see ``llr_kernels.policy``). With s = 1 this is exactly AdamW.
    max_grad_norm: if set, clip the global gradient norm inside the step (no host sync on fast backends).
    state_dtype: dtype of exp_avg / exp_avg_sq; default float32 (float64 for float64 params).
    backend: "auto" | "triton" | "cpp" | "torch" (see ``llr_kernels.dispatch``).
    hill_method, hill_variant, min_eigs: passed to ``llr_kernels.spectral.hill_alpha``.
    """

    def __init__(
        self,
        params: Any,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        amsgrad: bool = False,
        maximize: bool = False,
        *,
        s: float = 3.0,
        interval: int = 500,
        total_steps: int | None = None,
        grad_phase: float = 0.05,
        active_until: float = 1.0,
        ramp_steps: int = 0,
        pin_embedding: bool = True,
        pin_lm_head: bool = False,
        max_grad_norm: float | None = None,
        state_dtype: torch.dtype | None = None,
        backend: str = "auto",
        model: nn.Module | None = None,
        classify: Classifier | None = None,
        hill_method: str = "auto",
        hill_variant: str = "paper",
        min_eigs: int = 50,
    ) -> None:
        validate_adamw_args(lr, betas, eps, weight_decay)
        if max_grad_norm is not None and not max_grad_norm > 0:
            raise ValueError(f"max_grad_norm must be None or > 0, got {max_grad_norm!r}")
        if state_dtype not in (None, torch.float32, torch.bfloat16, torch.float64):
            raise ValueError(f"state_dtype must be None, torch.float32 or torch.bfloat16, got {state_dtype!r}")
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay, amsgrad=amsgrad, maximize=maximize)
        config = LLRConfig(s, interval, total_steps, grad_phase, active_until, ramp_steps, pin_embedding, pin_lm_head)
        super().__init__(
            params, defaults, llr=config, model=model, classify=classify, backend=backend,
            hill_method=hill_method, hill_variant=hill_variant, min_eigs=min_eigs,
        )
        for g in self.param_groups:
            validate_adamw_args(g["lr"], g["betas"], g["eps"], g["weight_decay"])
        self.max_grad_norm = max_grad_norm
        self.state_dtype = state_dtype
        self.last_grad_norm: torch.Tensor | None = None
        self._launches: list[_Launch] = []
        self._signature: tuple | None = None

    def _step_params(self, multipliers: torch.Tensor) -> None:
        self._adamw_step(multipliers, range(len(self.param_groups)), self.max_grad_norm)

