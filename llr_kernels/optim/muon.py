"""LLRMuon: Muon for hidden matrices + fused AdamW for the rest, every layer's LR scaled by its LLR multiplier.

One step is a constant number of launches, independent of the number of layers:

1. ``muon_momentum`` (one launch): momentum / Nesterov for every Muon matrix, writing the Newton-Schulz
   input (bf16) straight into each shape bucket's batch buffer;
2. ``newton_schulz`` per shape bucket (3 batched GEMMs per iteration, into a fixed output buffer);
3. ``muon_apply`` (one launch): p = p * (1 - lr_i wd_i) - lr_i * adjust(shape_i) * O_i;
4. the fused multi-LR AdamW op (``adamw_step``, shared with LLRAdamW) for embedding, LM head, norms, biases.

Momentum buffers of a bucket live in one (B, m, n) tensor; ``state[p]["momentum_buffer"]`` is a view of it,
so the state_dict looks like torch.optim.Muon's.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .._checks import check_bool, check_choice, check_int, check_real
from ..dispatch import BACKENDS, get_op, has_impl
from ..layers import MATRIX_KINDS, Classifier, Layer
from ..ops.newton_schulz import newton_schulz, resolve_coefficients
from ..policy import LLRConfig
from .adamw import FusedAdamWPart, _is_dtensor, _Launch, validate_adamw_args, validate_step_options
from .base import LLROptimizer, _normalize_groups, check_backend, check_model_args, classify_named, clip_all_grads

ADJUST_LR_FNS = ("original", "match_rms_adamw", "none")
_ADAMW_NAMES = {"lr": "adamw_lr", "betas": "adamw_betas", "eps": "adamw_eps", "weight_decay": "adamw_weight_decay"}


def adjust_lr_ratio(adjust_lr_fn: str | None, shape: tuple[int, ...]) -> float:
    """Muon's LR factor for a matrix of ``shape`` (rows, cols), with torch.optim.Muon's names.

    "original" (default, Keller Jordan): sqrt(max(1, rows / cols)), so tall matrices keep the update's RMS.
    "match_rms_adamw" (Moonshot, arXiv 2502.16982): 0.2 * sqrt(max(rows, cols)), which makes the update RMS
    match AdamW's (~0.2), so Muon can reuse AdamW's LR and weight decay. "none": 1.
    """
    rows, cols = shape[0], shape[1]
    if adjust_lr_fn is None or adjust_lr_fn == "original":
        return math.sqrt(max(1.0, rows / cols))
    if adjust_lr_fn == "match_rms_adamw":
        return 0.2 * math.sqrt(max(rows, cols))
    if adjust_lr_fn == "none":
        return 1.0
    raise ValueError(f"adjust_lr_fn must be one of {ADJUST_LR_FNS} (or None = 'original'), got {adjust_lr_fn!r}")


def muon_eligible(layer: Layer) -> bool:
    """Default split: 2-D hidden matrices (attention, FFN, other Linear) go to Muon; the rest to AdamW."""
    return layer.kind in MATRIX_KINDS and layer.kind != "conv" and layer.param.dim() == 2


@dataclass
class _Bucket:
    """Muon matrices of one (device, dtype, shape, Newton-Schulz settings): orthogonalized as one batch."""

    members: list[int]  # indices into _MuonPlan.params
    updates: torch.Tensor  # (B, m, n) in ns dtype: Newton-Schulz input, written by muon_momentum
    ortho: torch.Tensor  # (B, m, n) in ns dtype: Newton-Schulz output, read by muon_apply
    coefficients: Any
    steps: int
    eps: float


@dataclass
class _MomentumLaunch:
    members: list[int]
    momentum: float
    nesterov: bool


@dataclass
class _MuonPlan:
    params: list[torch.Tensor]
    group_index: torch.Tensor  # (N,) long CPU
    layer_index: torch.Tensor  # (N,) long CPU
    ratio: torch.Tensor  # (N,) float64 CPU: adjust_lr_ratio of each matrix
    buffers: list[torch.Tensor]  # momentum buffer views
    update_views: list[torch.Tensor]
    ortho_views: list[torch.Tensor]
    buckets: list[_Bucket]
    momentum_launches: list[_MomentumLaunch]
    apply_members: dict[torch.device, list[int]]
    decays: dict[torch.device, torch.Tensor]  # per device: (N_dev,) decay buffers
    step_sizes: dict[torch.device, torch.Tensor]


class LLRMuon(FusedAdamWPart, LLROptimizer):
    """Muon with layerwise learning rates from PL_Alpha_Hill (LLR); AdamW for non-hidden parameters.

    params: an ``nn.Module`` (recommended), (name, tensor) pairs, tensors, or param groups. From a model or a
        flat list, two groups are made: Muon (2-D attention / FFN / Linear weights; lr, weight_decay) then
        AdamW (embedding, LM head, norms, biases, conv; adamw_lr, adamw_weight_decay). A user group may set
        ``use_muon``; a group without it is split by layer kind into a Muon and an AdamW group (its "lr" /
        "weight_decay" go to the Muon part, "adamw_lr" / "adamw_weight_decay" to the AdamW part).
        Schedulers scale every group's "lr", so one LambdaLR moves both base LRs together.
    lr: base LR of the Muon part; adamw_lr: base LR of the AdamW part (paper Table 4: 0.01 and 0.001).
        Each layer's LR is group lr x its LLR multiplier in [1, s].
    weight_decay, adamw_weight_decay: decoupled, with the layer's LR (p *= 1 - lr_layer * wd), applied
        before the update as in torch.optim.Muon; adamw_weight_decay defaults to weight_decay (the paper
        shares it).
    momentum, nesterov, ns_coefficients, ns_steps, ns_eps, adjust_lr_fn: as ``torch.optim.Muon``
        (momentum is an EMA: buf = lerp(buf, g, 1 - mu)); ns_coefficients: "quintic" (3.4445, -4.7750,
        2.0315), "polar_express", a triple or one triple per step; adjust_lr_fn: "original"
        (sqrt(max(1, rows/cols)), default), "match_rms_adamw" (0.2 sqrt(max(rows, cols))) or "none". Weight
        decay uses the unadjusted LR, as torch.optim.Muon. ns_dtype: Newton-Schulz compute dtype (bf16).
    adamw_betas, adamw_eps, amsgrad, maximize: the AdamW part (maximize also applies to Muon).
    s (default 2, the paper's Muon setting), interval, total_steps, grad_phase, active_until, ramp_steps,
        pin_embedding, pin_lm_head: the LLR policy (``llr_kernels.policy``); with s = 1 this is Muon + AdamW.
    grad_alpha_source: in the gradient phase, alphas of Muon layers come from the raw gradient ("grad",
        default) or from the momentum buffer ("momentum", falls back to the gradient before the first step).
        Default "grad": it is what the paper measures for AdamW too (so alphas do not depend on the optimizer),
        it exists at step 0, when the first (and most consequential) gradient-phase measurement is taken and
        the momentum is still zero, and the EMA of gradients mixes up to ~1/(1-mu) = 20 steps of spectra,
        biasing alpha toward the stale early gradients. The orthogonalized update is never used: its
        singular values are all ~1 by construction, so its alpha carries no information.
    max_grad_norm: clip the global norm of all gradients (Muon and AdamW parts together) before the step.
    state_dtype: momentum / Adam state dtype; default float32 (float64 for float64 params).
    backend: "auto" | "triton" | "cpp" | "torch" for the elementwise ops (``llr_kernels.dispatch``);
        muon_backend overrides it for the Muon ops only (e.g. "triton" Muon with a "torch" AdamW part).
    Every argument is checked here, not at the first step: a wrong type raises TypeError, a value out of range
    ValueError (an explicit backend that cannot run on the parameters' devices too), each naming the argument.
    FSDP2/DTensor parameters in a Muon group raise NotImplementedError (Newton-Schulz needs whole matrices);
    use LLRAdamW, or LLRMuon under DDP.
    """

    def __init__(
        self,
        params: Any,
        lr: float = 1e-2,
        adamw_lr: float = 1e-3,
        weight_decay: float = 0.1,
        momentum: float = 0.95,
        nesterov: bool = True,
        ns_coefficients: Any = "quintic",
        ns_steps: int = 5,
        ns_eps: float = 1e-7,
        adjust_lr_fn: str | None = "original",
        adamw_betas: tuple[float, float] = (0.9, 0.999),
        adamw_eps: float = 1e-8,
        adamw_weight_decay: float | None = None,
        amsgrad: bool = False,
        maximize: bool = False,
        *,
        s: float = 2.0,
        interval: int = 500,
        total_steps: int | None = None,
        grad_phase: float = 0.05,
        active_until: float = 1.0,
        ramp_steps: int = 0,
        pin_embedding: bool = True,
        pin_lm_head: bool = False,
        grad_alpha_source: str = "grad",
        max_grad_norm: float | None = None,
        state_dtype: torch.dtype | None = None,
        ns_dtype: torch.dtype = torch.bfloat16,
        backend: str = "auto",
        muon_backend: str | None = None,
        model: nn.Module | None = None,
        classify: Classifier | None = None,
        hill_method: str = "auto",
        hill_variant: str = "paper",
        min_eigs: int = 50,
    ) -> None:
        if adamw_weight_decay is None:
            adamw_weight_decay = weight_decay
        _validate_muon_args(lr, weight_decay, momentum, nesterov, ns_coefficients, ns_steps, ns_eps, adjust_lr_fn)
        validate_adamw_args(adamw_lr, adamw_betas, adamw_eps, adamw_weight_decay, amsgrad, maximize, names=_ADAMW_NAMES)
        check_choice("grad_alpha_source", grad_alpha_source, ("grad", "momentum"),
                     hint=" (what gradient-phase alphas of Muon layers are measured on)")
        if ns_dtype not in (torch.bfloat16, torch.float16, torch.float32, torch.float64):
            raise ValueError(f"ns_dtype must be a floating dtype (torch.bfloat16 recommended), got {ns_dtype!r}")
        if muon_backend is not None:
            check_choice("muon_backend", muon_backend, BACKENDS, hint=" or None (= backend)")
        check_model_args(model, classify)
        if isinstance(params, nn.Module) and model is None:
            model = params
        defaults = dict(
            lr=lr, weight_decay=weight_decay, momentum=momentum, nesterov=nesterov,
            ns_coefficients=ns_coefficients, ns_steps=ns_steps, ns_eps=ns_eps, adjust_lr_fn=adjust_lr_fn,
            betas=tuple(adamw_betas), eps=adamw_eps, amsgrad=amsgrad, maximize=maximize,
        )
        groups = _split_groups(params, model, classify, adamw_lr, adamw_weight_decay)
        config = LLRConfig(s, interval, total_steps, grad_phase, active_until, ramp_steps, pin_embedding, pin_lm_head)
        super().__init__(
            groups, defaults, llr=config, model=model, classify=classify, backend=backend,
            hill_method=hill_method, hill_variant=hill_variant, min_eigs=min_eigs,
        )
        muon_params, adamw_params = [], []
        for i, g in enumerate(self.param_groups):
            where = f"param group {i}: "
            if g["use_muon"]:
                _validate_muon_args(g["lr"], g["weight_decay"], g["momentum"], g["nesterov"], g["ns_coefficients"],
                                    g["ns_steps"], g["ns_eps"], g["adjust_lr_fn"], where=where)
                check_bool(where + "maximize", g["maximize"])
                for p in g["params"]:
                    name = self.layers[self.layer_of(p)].name
                    if p.dim() != 2:
                        raise ValueError(
                            f"Muon needs 2-D matrices but {name!r} has shape {tuple(p.shape)}; put it in a group with use_muon=False"
                        )
                    if _is_dtensor(p):
                        raise NotImplementedError(
                            f"LLRMuon does not support FSDP2/DTensor parameters yet ({name!r} is a DTensor): Newton-Schulz "
                            "needs whole matrices. Use LLRAdamW, or LLRMuon under DDP"
                        )
                muon_params += g["params"]
            else:
                validate_adamw_args(g["lr"], g["betas"], g["eps"], g["weight_decay"], g["amsgrad"], g["maximize"], where=where)
                adamw_params += g["params"]
        validate_step_options(max_grad_norm, state_dtype, muon_params + adamw_params)
        if muon_backend is None and backend not in ("auto", "torch") and muon_params and not has_impl("muon_apply", backend):
            raise ValueError(
                f"backend={backend!r} has no Muon kernels (muon_momentum, muon_apply); pass muon_backend='torch' or "
                f"'triton' (backend={backend!r} then steps the AdamW part only), or backend='auto'"
            )
        check_backend("backend", backend, ("adamw_step",), adamw_params)
        check_backend("muon_backend" if muon_backend is not None else "backend", muon_backend or backend,
                      ("muon_momentum", "muon_apply"), muon_params)
        self.grad_alpha_source = grad_alpha_source
        self.muon_backend = muon_backend
        self.max_grad_norm = max_grad_norm
        self.state_dtype = state_dtype
        self.ns_dtype = ns_dtype
        self.last_grad_norm: torch.Tensor | None = None
        self._launches: list[_Launch] = []  # AdamW part (FusedAdamWPart)
        self._signature: tuple | None = None
        self._muon_plan: _MuonPlan | None = None
        self._muon_signature: tuple | None = None

    # ----- groups and layers ------------------------------------------------------------------------
    def muon_group_ids(self) -> list[int]:
        return [i for i, g in enumerate(self.param_groups) if g["use_muon"]]

    def adamw_group_ids(self) -> list[int]:
        return [i for i, g in enumerate(self.param_groups) if not g["use_muon"]]

    def _spectral_matrix(self, layer: Layer, source: str) -> torch.Tensor | None:
        if source == "grad" and self.grad_alpha_source == "momentum":
            buf = self.state.get(layer.param, {}).get("momentum_buffer")
            if buf is not None:
                return buf
        return super()._spectral_matrix(layer, source)

    def layer_stats(self) -> list[dict[str, Any]]:
        """LLROptimizer.layer_stats plus "optimizer" ("muon" / "adamw") and "update_lr" (with Muon's shape factor)."""
        stats = super().layer_stats()
        group_of = {id(p): g for g in self.param_groups for p in g["params"]}
        for st, layer in zip(stats, self.layers):
            g = group_of.get(id(layer.param))
            muon = bool(g is not None and g["use_muon"])
            st["optimizer"] = "muon" if muon else "adamw"
            st["update_lr"] = st["lr"] * adjust_lr_ratio(g["adjust_lr_fn"], layer.logical_shape) if muon else st["lr"]
        return stats

    # ----- the Muon plan ----------------------------------------------------------------------------
    def _build_muon_plan(self, active: list[tuple[int, torch.Tensor]]) -> None:
        """Bucket the stepping Muon matrices by shape and allocate batch buffers (only when the set changes)."""
        params = [p for _, p in active]
        groups = [self.param_groups[gi] for gi, _ in active]
        buffers: list[torch.Tensor | None] = [None] * len(params)
        update_views: list[torch.Tensor | None] = [None] * len(params)
        ortho_views: list[torch.Tensor | None] = [None] * len(params)
        by_key: dict[tuple, list[int]] = {}
        for i, (p, g) in enumerate(zip(params, groups)):
            coeffs, _ = resolve_coefficients(g["ns_coefficients"], g["ns_steps"])
            key = (p.device, p.dtype, tuple(p.shape), coeffs, float(g["ns_eps"]))
            by_key.setdefault(key, []).append(i)
        buckets = []
        for (device, dtype, shape, _, _), members in by_key.items():
            sdt = self.state_dtype or (torch.float64 if dtype == torch.float64 else torch.float32)
            mom = torch.zeros((len(members), *shape), dtype=sdt, device=device)
            upd = torch.empty((len(members), *shape), dtype=self.ns_dtype, device=device)
            ortho = torch.empty_like(upd)
            for j, i in enumerate(members):
                st = self.state[params[i]]
                old = st.get("momentum_buffer")
                if old is not None:
                    mom[j].copy_(old)
                st["momentum_buffer"] = mom[j]
                buffers[i], update_views[i], ortho_views[i] = mom[j], upd[j], ortho[j]
            g = groups[members[0]]
            buckets.append(_Bucket(members, upd, ortho, g["ns_coefficients"], g["ns_steps"], float(g["ns_eps"])))
        launches: dict[tuple, list[int]] = {}
        apply_members: dict[torch.device, list[int]] = {}
        for i, (p, g) in enumerate(zip(params, groups)):
            launches.setdefault((p.device, float(g["momentum"]), bool(g["nesterov"])), []).append(i)
            apply_members.setdefault(p.device, []).append(i)
        decays, step_sizes = {}, {}
        for device, members in apply_members.items():
            backend, _ = get_op("muon_apply", self._elementwise_backend(device, members, params), device)
            buf_dtype = torch.float64 if backend == "torch" else torch.float32
            decays[device] = torch.zeros(len(members), dtype=buf_dtype, device=device)
            step_sizes[device] = torch.zeros(len(members), dtype=buf_dtype, device=device)
        self._muon_plan = _MuonPlan(
            params=params,
            group_index=torch.tensor([gi for gi, _ in active], dtype=torch.long),
            layer_index=torch.tensor([self.layer_of(p) for p in params], dtype=torch.long),
            ratio=torch.tensor(
                [adjust_lr_ratio(g["adjust_lr_fn"], self.layers[self.layer_of(p)].logical_shape) for p, g in zip(params, groups)],
                dtype=torch.float64,
            ),  # logical (out, in) shapes: Hugging Face Conv1D weights are stored transposed
            buffers=buffers,  # type: ignore[arg-type]
            update_views=update_views,  # type: ignore[arg-type]
            ortho_views=ortho_views,  # type: ignore[arg-type]
            buckets=buckets,
            momentum_launches=[_MomentumLaunch(m, mu, nest) for (_, mu, nest), m in launches.items()],
            apply_members=apply_members,
            decays=decays,
            step_sizes=step_sizes,
        )

    def _elementwise_backend(self, device: torch.device, members: list[int], params: list[torch.Tensor]) -> str:
        """The requested backend, except that non-contiguous params fall back to torch under "auto"."""
        backend = self.muon_backend or self.backend
        if backend == "auto" and not all(params[i].is_contiguous() for i in members):
            return "torch"
        return backend

    def _on_state_loaded(self) -> None:
        super()._on_state_loaded()
        self._muon_signature = None  # buffers are rebuilt over (and filled from) the loaded state

    # ----- the step ---------------------------------------------------------------------------------
    def _muon_step(self, multipliers: torch.Tensor, active: list[tuple[int, torch.Tensor]]) -> None:
        signature = tuple((gi, id(p)) for gi, p in active)
        if signature != self._muon_signature:
            self._build_muon_plan(active)
            self._muon_signature = signature
        plan = self._muon_plan
        if plan is None or not active:
            return
        grads = []
        for gi, p in active:
            g = p.grad
            if self.param_groups[gi]["maximize"]:
                g = -g
            grads.append(g if g.is_contiguous() else g.contiguous())
        # 1. momentum / Nesterov, writing the Newton-Schulz inputs into the bucket buffers
        for launch in plan.momentum_launches:
            device = plan.params[launch.members[0]].device
            _, op = get_op("muon_momentum", self._elementwise_backend(device, launch.members, plan.params), device)
            op(
                [grads[i] for i in launch.members],
                [plan.buffers[i] for i in launch.members],
                [plan.update_views[i] for i in launch.members],
                momentum=launch.momentum,
                nesterov=launch.nesterov,
            )
        # 2. Newton-Schulz, one batch per shape bucket
        for b in plan.buckets:
            newton_schulz(b.updates, b.coefficients, b.steps, eps=b.eps, dtype=self.ns_dtype, out=b.ortho, overwrite_input=True)
        # 3. decoupled weight decay + update with each matrix's LR
        group_lr = torch.tensor([float(g["lr"]) for g in self.param_groups], dtype=torch.float64)
        group_wd = torch.tensor([float(g["weight_decay"]) for g in self.param_groups], dtype=torch.float64)
        lr = group_lr[plan.group_index] * multipliers[plan.layer_index]
        decay = 1.0 - lr * group_wd[plan.group_index]
        step = lr * plan.ratio
        for device, members in plan.apply_members.items():
            idx = torch.tensor(members, dtype=torch.long)
            plan.decays[device].copy_(decay[idx], non_blocking=True)
            plan.step_sizes[device].copy_(step[idx], non_blocking=True)
            _, op = get_op("muon_apply", self._elementwise_backend(device, members, plan.params), device)
            op([plan.params[i] for i in members], [plan.ortho_views[i] for i in members], plan.decays[device], plan.step_sizes[device])

    def _step_params(self, multipliers: torch.Tensor) -> None:
        muon_ids = self.muon_group_ids()
        active = []
        for gi in muon_ids:
            for p in self.param_groups[gi]["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("LLRMuon does not support sparse gradients")
                active.append((gi, p))
        if self.max_grad_norm is not None:
            params = [p for g in self.param_groups for p in g["params"] if p.grad is not None]
            if params:
                self.last_grad_norm = clip_all_grads(params, self.max_grad_norm)
        self._muon_step(multipliers, active)
        self._adamw_step(multipliers, self.adamw_group_ids(), None)


def _validate_muon_args(lr: Any, weight_decay: Any, momentum: Any, nesterov: Any, ns_coefficients: Any, ns_steps: Any,
                        ns_eps: Any, adjust_lr_fn: Any, *, where: str = "") -> None:
    check_real(where + "lr", lr, 0.0, hint=" (the Muon part's base LR; each matrix gets lr x its LLR multiplier)", tensor_ok=True)
    check_real(where + "weight_decay", weight_decay, 0.0, hint=" (decoupled: p *= 1 - lr_layer * weight_decay)")
    check_real(where + "momentum", momentum, 0.0, 1.0, hi_open=True, hint=" (Muon's EMA momentum; default 0.95)")
    check_bool(where + "nesterov", nesterov)
    check_int(where + "ns_steps", ns_steps, 1, 99, hint=" (Newton-Schulz iterations; default 5)")
    check_real(where + "ns_eps", ns_eps, 0.0, lo_open=True, hint=" (floor of the Frobenius norm in Newton-Schulz; default 1e-7)")
    resolve_coefficients(ns_coefficients, ns_steps)
    if adjust_lr_fn is not None:
        check_choice(where + "adjust_lr_fn", adjust_lr_fn, ADJUST_LR_FNS, hint=" or None (= 'original')")


def _split_groups(params: Any, model: nn.Module | None, classify: Classifier | None, adamw_lr: float, adamw_wd: float) -> list[dict]:
    """Param groups with a "use_muon" flag each, holding (name, tensor) pairs so names survive."""
    raw_is_groups = not isinstance(params, (nn.Module, torch.Tensor))
    if raw_is_groups:
        params = list(params)
        raw_is_groups = bool(params) and isinstance(params[0], dict)
    groups, named = _normalize_groups(params, model)
    layers = classify_named(named, model if model is not None else (params if isinstance(params, nn.Module) else None), classify)
    layer_of = {id(l.param): l for l in layers}
    name_of = {}
    for n, p in named:
        name_of.setdefault(id(p), n)

    def pairs(ps: list[torch.Tensor]) -> list[tuple[str, torch.Tensor]]:
        return [(name_of[id(p)], p) for p in ps]

    out: list[dict] = []
    if not raw_is_groups:
        ps = groups[0]["params"]
        muon = [p for p in ps if muon_eligible(layer_of[id(p)])]
        rest = [p for p in ps if not muon_eligible(layer_of[id(p)])]
        if muon:
            out.append({"params": pairs(muon), "use_muon": True})
        if rest:
            out.append({"params": pairs(rest), "use_muon": False, "lr": adamw_lr, "weight_decay": adamw_wd})
        return out
    for g in groups:
        opts = {k: v for k, v in g.items() if k not in ("params", "adamw_lr", "adamw_weight_decay")}
        a_lr, a_wd = g.get("adamw_lr", adamw_lr), g.get("adamw_weight_decay", adamw_wd)
        use = g.get("use_muon")
        if use is True:
            out.append({**opts, "params": pairs(g["params"])})
        elif use is False:
            out.append({**opts, "lr": g.get("lr", a_lr), "weight_decay": g.get("weight_decay", a_wd), "params": pairs(g["params"])})
        elif use is None:
            muon = [p for p in g["params"] if muon_eligible(layer_of[id(p)])]
            rest = [p for p in g["params"] if not muon_eligible(layer_of[id(p)])]
            if muon:
                out.append({**opts, "use_muon": True, "params": pairs(muon)})
            if rest:
                adam_opts = {k: v for k, v in opts.items() if k not in ("lr", "weight_decay")}
                out.append({**adam_opts, "use_muon": False, "lr": a_lr, "weight_decay": a_wd, "params": pairs(rest)})
        else:
            raise ValueError(f"a param group's use_muon must be True, False or absent, got {use!r}")
    return out
